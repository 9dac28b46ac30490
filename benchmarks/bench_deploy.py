"""CPU inference latency of the teacher, the NORM student with its FT and the deployed student (PyTorch, ONNX Runtime).

The models are built by name with random weights (latency does not depend on their values); the student gets a
NORM FT sized from the teacher, as in training, and is deployed by `helper.deploy` exactly as export_student.py
does. One Markdown table per pair is printed. Not part of the test suite; see benchmarks/README.md.

    python3 benchmarks/bench_deploy.py --pairs resnet32x4:resnet8x4,resnet56:resnet20
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402

from benchmarks.bench_train import device_name  # noqa: E402
from helper import deploy  # noqa: E402
from helper.argtypes import non_negative_int, positive_int  # noqa: E402
from models import imagenet_model_dict, model_dict  # noqa: E402
from models.norm import attach_feature_transform, matched_feature, probe_features  # noqa: E402


def parse_args(argv=None):
    """The benchmark's flags."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", default="resnet32x4:resnet8x4", help="comma list of teacher:student names")
    p.add_argument("--batch_sizes", default="1,64", help="comma list of batch sizes")
    p.add_argument("--repeats", type=positive_int, default=20, help="timed forward passes per measurement (median reported)")
    p.add_argument("--warmup", type=non_negative_int, default=3, help="untimed forward passes first")
    p.add_argument("--n", type=positive_int, default=8, help="NORM's N (-s/--co-sponge)")
    p.add_argument("--num_classes", type=positive_int, default=100, help="classes (1000 for ImageNet pairs)")
    p.add_argument("--image_size", type=positive_int, default=None, help="input size (default 32, ImageNet 224)")
    p.add_argument("--threads", type=positive_int, default=None, help="threads of PyTorch and ONNX Runtime (default torch's)")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        p.error("--repeats must be at least 1 and --warmup at least 0")
    try:
        args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
        args.pairs = [tuple(pair.split(":")) for pair in args.pairs.split(",")]
    except ValueError:
        p.error("--batch_sizes is a comma list of integers, --pairs of teacher:student")
    for pair in args.pairs:
        zoo = imagenet_model_dict if pair[-1] in imagenet_model_dict else model_dict
        if len(pair) != 2 or any(name not in zoo for name in pair):
            p.error(f"unknown pair {':'.join(pair)}; names come from models.model_dict or imagenet_model_dict")
    return args


def median_ms(run, images, repeats, warmup):
    """Median wall time of `run(images)` in milliseconds."""
    for _ in range(warmup):
        run(images)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(images)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def build_models(teacher_name, student_name, n, num_classes, image_size):
    """[(label, model)] of the teacher, the student with its FT and the deployed student (all in eval mode)."""
    zoo = imagenet_model_dict if student_name in imagenet_model_dict else model_dict
    teacher = zoo[teacher_name](num_classes=num_classes).eval()
    channels = matched_feature(probe_features(teacher, image_size)).shape[1]
    student = attach_feature_transform(zoo[student_name](num_classes=num_classes), channels, n).eval()
    deployed = deploy.deployed_student(student, zoo, student_name)
    kept = " + FT as 1x1 conv" if deployed.kind == "kept_ft" else ""
    return [(f"{teacher_name} (teacher)", teacher), (f"{student_name} with FT (as trained)", student),
            (f"{student_name}{kept} (deployed)", deployed.module)]


def bench_pair(args, teacher_name, student_name, folder):
    """The Markdown table of one pair."""
    size = args.image_size or (224 if student_name in imagenet_model_dict else 32)
    models = build_models(teacher_name, student_name, args.n, args.num_classes, size)
    shape = (1, 3, size, size)
    header = ["model", "params", "FLOPs"]
    header += [f"{engine} b={b} (ms)" for engine in ("PyTorch", "ORT") for b in args.batch_sizes]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (label, model), (_, _, params, flops) in zip(models, deploy.cost_rows(
            [(label, "", model) for label, model in models], shape)):
        path = os.path.join(folder, f"{len(os.listdir(folder))}.onnx")
        with open(path, "wb") as handle:
            handle.write(deploy.onnx_bytes(model, torch.randn(2, *shape[1:])))
        session = deploy.onnx_session(path, args.threads)
        cells = [label, deploy.si_number(params), deploy.si_number(flops)]
        engines = ((lambda x, m=model: m(x)), (lambda x, s=session: deploy.run_session(s, x)))
        for run in engines:
            for batch in args.batch_sizes:
                images = torch.randn(batch, *shape[1:])
                with torch.no_grad():
                    cells.append(f"{median_ms(run, images, args.repeats, args.warmup):.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    """Run every pair; print the machine, the load and one table per pair."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import onnxruntime

    load = os.getloadavg()[0]
    print(f"CPU: {device_name(torch.device('cpu'))}; torch {torch.__version__}, onnxruntime {onnxruntime.__version__}; "
          f"median of {args.repeats} passes after {args.warmup} warm-up; load average before {load:.2f}")
    with tempfile.TemporaryDirectory() as folder:
        for teacher_name, student_name in args.pairs:
            print(f"\n{teacher_name} -> {student_name} (N={args.n}, {args.num_classes} classes)\n")
            print(bench_pair(args, teacher_name, student_name, folder))
    print(f"\nload average after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
