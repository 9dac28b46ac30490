"""What each distillation method costs: training images/s of every method against NORM's on one pair, in one run.

python benchmarks/bench_methods.py [--pair resnet32x4:resnet8x4] [--steps 8] [--rounds 3] [--methods NORM,dkd,...]

Every method is built as the student script builds it (its own defaults, through the same parser), on a fresh student
and the same teacher, and trained for `--steps` full steps (forward, loss, backward, SGD) per round on random
32x32 batches, fp32, the teacher module itself in eval mode. Rounds interleave the methods, so that a change in the
machine's speed falls on all of them; the ratio to NORM is the median over the rounds of each round's ratio. Speed is
a ratio on one machine, never an absolute: run it alone on a quiet machine.
"""
import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# label: the student script's flags that select it (its defaults otherwise)
METHOD_FLAGS = {
    "NORM": ["--distill", "NORM"], "NORM+KD": ["--distill", "NORM", "-a", "1"], "NORM+CRD": ["--distill", "NORM_CRD"],
    "KD": ["--distill", "kd"], "CRD": ["--distill", "crd"], "FitNet": ["--distill", "hint"],
    "DKD": ["--distill", "dkd"], "ReviewKD": ["--distill", "reviewkd"], "OFD": ["--distill", "ofd"],
    "SimKD": ["--distill", "simkd"], "SRRL": ["--distill", "srrl"], "SemCKD": ["--distill", "semckd"],
    "DIST": ["--distill", "dist"], "KD+LS": ["--distill", "kd", "--logit_standardize"],
    "NORM+DKD": ["--distill", "NORM+dkd"],
}


def parser():
    """The benchmark's options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pair", default="resnet32x4:resnet8x4", help="teacher:student names from models.model_dict")
    p.add_argument("--methods", default=",".join(METHOD_FLAGS), help=f"comma list of: {', '.join(METHOD_FLAGS)}")
    p.add_argument("--steps", type=int, default=8, help="timed steps per method and round")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per method first")
    p.add_argument("--batch_size", type=int, default=64, help="images per step")
    p.add_argument("--n_data", type=int, default=50000, help="training-set size the methods are sized for (CRD)")
    return p


def build(label, teacher_name, student_name, args):
    """The method `label` as train_cifar_student.py builds it, with an SGD optimizer over its trainable parameters."""
    import train_cifar_student
    from distiller_zoo import method_class
    from helper.cli.parser import student_parser
    from models import model_dict

    flags = [*METHOD_FLAGS[label], "--model_t", teacher_name, "--model_s", student_name,
             "--batch_size", str(args.batch_size)]
    opt = student_parser(train_cifar_student.CIFAR_PROFILE).parse_args(flags)
    cls = method_class(opt.distill)
    torch.manual_seed(0)
    teacher = model_dict[teacher_name](num_classes=100)
    student = model_dict[student_name](num_classes=100)
    data = {"n_data": args.n_data, "image_size": 32, "in_channels": 3, "schedule_kind": "cifar"}
    method = cls.build(student, teacher, opt, data)
    method.set_epoch(30)  # past every warm-up: each method computes all its terms
    method.train()
    params = [p for p in method.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1e-4, momentum=0.9, weight_decay=5e-4)
    return method, optimizer


def step(method, optimizer, batch):
    """One training step: forward with every loss term, backward, SGD."""
    images, targets, index = batch
    _, losses = method(images, targets, index=index)
    optimizer.zero_grad(set_to_none=True)
    sum(losses.values()).backward()
    optimizer.step()


def main(argv=None):
    """Build every method, time them in interleaved rounds, print one markdown row each."""
    args = parser().parse_args(argv)
    labels = [m for m in args.methods.split(",") if m]
    unknown = [m for m in labels if m not in METHOD_FLAGS]
    if unknown or "NORM" not in labels:
        sys.exit(f"error: --methods must name NORM and known methods ({', '.join(METHOD_FLAGS)}); got {unknown}")
    teacher_name, student_name = args.pair.split(":")
    generator = torch.Generator().manual_seed(0)
    batch = (torch.randn(args.batch_size, 3, 32, 32, generator=generator),
             torch.randint(0, 100, (args.batch_size,), generator=generator),
             torch.randint(0, args.n_data, (args.batch_size,), generator=generator))
    built = {label: build(label, teacher_name, student_name, args) for label in labels}
    for label, (method, optimizer) in built.items():
        for _ in range(args.warmup):
            step(method, optimizer, batch)
    seconds = {label: [] for label in labels}
    for _ in range(args.rounds):
        for label, (method, optimizer) in built.items():
            tic = time.perf_counter()
            for _ in range(args.steps):
                step(method, optimizer, batch)
            seconds[label].append(time.perf_counter() - tic)
    images = args.steps * args.batch_size
    print(f"{teacher_name} -> {student_name}, batch {args.batch_size}, fp32, {torch.get_num_threads()} threads, "
          f"{args.rounds} rounds x {args.steps} steps")
    print("| method | images/s | relative to NORM (median of the rounds) |")
    print("|---|---:|---:|")
    for label in labels:
        ratio = statistics.median(n / s for n, s in zip(seconds["NORM"], seconds[label]))
        print(f"| {label} | {images * args.rounds / sum(seconds[label]):.0f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
