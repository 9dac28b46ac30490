"""What the per-epoch time split costs: the real training loop with and without its phase timers, side by side.

Both settings run `helper.training.engine.train_one_epoch` on the same NORM method and in-memory batches, alternating
several rounds so that drift of the machine hits both alike; it prints the median ms/step of each and their ratio.

    python3 benchmarks/bench_timing.py --pair resnet56:resnet20 --steps 10 --rounds 5
"""
import argparse
import os
import platform
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def parse_args(argv=None):
    """The benchmark's flags."""
    from helper.argtypes import positive_int

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:K")
    p.add_argument("--pair", default="resnet56:resnet20", help="teacher:student names from models.model_dict")
    p.add_argument("--steps", type=positive_int, default=10, help="steps per measured epoch")
    p.add_argument("--rounds", type=positive_int, default=5, help="alternating rounds of (timers on, timers off)")
    p.add_argument("--batch_size", type=positive_int, default=64, help="images per step")
    return p.parse_args(argv)


def main(argv=None):
    """Measure and print the comparison."""
    args = parse_args(argv)
    import torch

    from distiller_zoo import METHODS
    from helper.cli.parser import student_parser
    from helper.training.engine import train_one_epoch
    from helper.runtime.device import setup_runtime
    from models import model_dict
    from train_cifar_student import CIFAR_PROFILE

    runtime = setup_runtime(args.device)
    teacher_name, student_name = args.pair.split(":")
    torch.manual_seed(0)
    opt = student_parser(CIFAR_PROFILE).parse_args(["--distill", "NORM"])
    method = METHODS["NORM"].build(model_dict[student_name](num_classes=100), model_dict[teacher_name](num_classes=100),
                                   opt, {"n_data": 1000, "image_size": 32, "in_channels": 3, "schedule_kind": "cifar"})
    runtime.to_device(method)
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    batches = [(torch.randn(args.batch_size, 3, 32, 32), torch.randint(0, 100, (args.batch_size,)))
               for _ in range(args.steps)]

    def epoch(timing):
        if runtime.device.type == "cuda":
            torch.cuda.synchronize()
        tic = time.perf_counter()
        train_one_epoch(method, batches, optimizer, runtime, 1, print_freq=10 ** 9, progress=False, timing=timing)
        if runtime.device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - tic) / args.steps * 1000

    epoch(True)  # warm-up
    measured = {True: [], False: []}
    for _ in range(args.rounds):
        for timing in (True, False):
            measured[timing].append(epoch(timing))
    on, off = statistics.median(measured[True]), statistics.median(measured[False])
    device = torch.cuda.get_device_name(runtime.device) if runtime.device.type == "cuda" else platform.processor()
    print(f"{args.pair}, batch {args.batch_size}, {args.steps} steps x {args.rounds} rounds on {device or 'CPU'} "
          f"({torch.get_num_threads()} threads)")
    print("| phase timers | ms/step (median) |\n|---|---:|")
    print(f"| on | {on:.1f} |\n| off | {off:.1f} |")
    print(f"on / off = {on / off:.3f}")
    return on, off


if __name__ == "__main__":
    main()
