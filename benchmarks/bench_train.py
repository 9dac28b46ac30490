"""Training throughput and peak memory of the NORM distillation step: the official step against the fast path.

Each configuration runs in its own child process, so peak memory (CUDA max_memory_allocated, or peak RSS on CPU)
and warm-up state (cuDNN autotuning, torch.compile) never leak between them. One Markdown table row is printed per
configuration. Not part of the test suite; see benchmarks/README.md.

    python3 benchmarks/bench_train.py --steps 5 --warmup 2                 # CPU smoke run, about a minute
    python3 benchmarks/bench_train.py --configs reference,nosync,device_data,fast --compile   # on a GPU
"""
import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# data: "host" = float batches prepared on the CPU and copied every step (the DataLoader path, its augmentation
# done beforehand as workers would); "device" = helper/device_data.py. sync: loss.item() every step, as the
# official code does for its loss meter. amp and fused SGD apply on CUDA only; compile only with --compile.
CONFIGS = {
    "reference": dict(data="host", sync=True, channels_last=False, amp=False, fused=False, compile=False),
    "nosync": dict(data="host", sync=False, channels_last=False, amp=False, fused=False, compile=False),
    "device_data": dict(data="device", sync=False, channels_last=False, amp=False, fused=False, compile=False),
    "fast": dict(data="device", sync=False, channels_last=True, amp=True, fused=True, compile=True),
}


def parse_args(argv=None):
    """The benchmark's flags."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:K")
    p.add_argument("--pair", default="resnet32x4:resnet8x4", help="teacher:student names from models.model_dict")
    p.add_argument("--steps", type=int, default=100, help="timed steps (after the warm-up)")
    p.add_argument("--warmup", type=int, default=20, help="untimed steps first (cuDNN autotuning, compilation)")
    p.add_argument("--batch_size", type=int, default=64, help="images per step")
    p.add_argument("--configs", default="reference,fast", help=f"comma list of: {', '.join(CONFIGS)}")
    p.add_argument("--compile", action="store_true", help="compile student and teacher (as --compile) in 'fast'")
    p.add_argument("--n", type=int, default=8, help="NORM's N (-s/--co-sponge)")
    p.add_argument("--num_classes", type=int, default=100, help="classes of the synthetic CIFAR")
    p.add_argument("--n_data", type=int, default=50000, help="images in the synthetic in-memory training set")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure this configuration and print JSON
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        p.error("--steps must be at least 1 and --warmup at least 0")
    unknown = [c for c in args.configs.split(",") if c not in CONFIGS]
    if unknown:
        p.error(f"unknown --configs {', '.join(unknown)}; choose from {', '.join(CONFIGS)}")
    return args


class SyntheticCIFAR:
    """CIFAR-100's in-memory layout (uint8 N x 32 x 32 x 3, int targets) and its real train transform."""

    def __init__(self, n, num_classes, seed=0):
        import numpy as np
        from dataset.cifar import cifar_transforms

        rng = np.random.default_rng(seed)
        self.data = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
        self.targets = rng.integers(0, num_classes, size=n).tolist()
        self.transform = cifar_transforms(100, train=True)  # CIFAR-100's statistics whatever num_classes is

    def __len__(self):
        return len(self.data)


def host_batches(data, batch_size, count):
    """`count` CPU batches (images, targets, index) through the dataset's own PIL transform, cycled forever."""
    import torch
    from PIL import Image

    pool = []
    for b in range(count):
        index = torch.arange(b * batch_size, (b + 1) * batch_size) % len(data)
        images = torch.stack([data.transform(Image.fromarray(data.data[i])) for i in index.tolist()])
        pool.append((images, torch.tensor([data.targets[i] for i in index.tolist()]), index))
    while True:
        yield from pool


def device_batches(loader):
    """The device loader's batches over consecutive epochs."""
    epoch = 0
    while True:
        loader.sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def peak_memory_mib(device):
    """Peak CUDA memory allocated by tensors, or the process's peak resident set size on CPU, in MiB."""
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "CUDA max allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "peak RSS"  # Linux reports KiB


def device_name(device):
    """The GPU's name, or the CPU model and core count."""
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            model = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model} ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def measure(args, name):
    """Build the NORM step for `name`, run warm-up and timed steps; returns the result row as a dict."""
    import torch
    from distiller_zoo import METHODS
    from helper.device_data import device_loader_for
    from helper.runtime import choose_device, seed_everything, setup_runtime
    from models import model_dict

    cfg = dict(CONFIGS[name])
    cfg["compile"] = cfg["compile"] and args.compile
    cuda = choose_device(args.device).type == "cuda"
    amp = "bf16" if cfg["amp"] and cuda else "none"
    fused = cfg["fused"] and cuda
    runtime = setup_runtime(args.device, amp, cfg["channels_last"])
    seed_everything(0)

    teacher_name, student_name = args.pair.split(":")
    teacher = model_dict[teacher_name](num_classes=args.num_classes)
    student = model_dict[student_name](num_classes=args.num_classes)
    # The flags NORM.build reads (distiller_zoo/norm.py, base.Distiller.weights); None = the method's default weight.
    opt = argparse.Namespace(co_sponge=args.n, ft="residual", norm_schedule="official", epochs=240,
                             gamma=None, alpha=None, beta=None, ceta=None, kd_T=4.0)
    method = METHODS["NORM"].build(student, teacher, opt,
                                   {"n_data": args.n_data, "image_size": 32, "in_channels": 3,
                                    "schedule_kind": "cifar"})
    method.set_epoch(30)  # β1 = 1, the middle of the official schedule
    method = runtime.to_device(method)
    method.train()
    params = [p for p in method.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4, **({"fused": True} if fused else {}))
    if cfg["compile"]:
        from helper.trainer import compile_networks  # as the trainer's --compile: student and teacher, in place
        compile_networks(student, teacher)

    data = SyntheticCIFAR(args.n_data, args.num_classes)
    if cfg["data"] == "device":
        batches = device_batches(device_loader_for(data, args.batch_size, 0, runtime))
    else:
        batches = host_batches(data, args.batch_size, min(args.steps + args.warmup, 8))
    total = torch.zeros((), device=runtime.device)

    def step():
        nonlocal total
        images, targets, index = next(batches)
        if cfg["data"] == "host":  # the official per-batch copy to the GPU, from pageable memory
            images, targets, index = images.to(runtime.device), targets.to(runtime.device), index.to(runtime.device)
            if runtime.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
        with runtime.autocast():
            _, losses = method(images, targets, index=index)
        loss = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if cfg["sync"]:
            total += loss.item()  # the host sync of the official loss meter
        else:
            total += loss.detach().float()

    def synchronize():
        if cuda:
            torch.cuda.synchronize(runtime.device)

    for _ in range(args.warmup):
        step()
    synchronize()
    tic = time.perf_counter()
    for _ in range(args.steps):
        step()
    synchronize()
    seconds = time.perf_counter() - tic
    if not torch.isfinite(total):
        raise RuntimeError(f"non-finite loss in configuration {name}")
    memory, memory_kind = peak_memory_mib(runtime.device)
    return {"config": name, "device": device_name(runtime.device), "data": cfg["data"], "amp": amp,
            "channels_last": cfg["channels_last"], "compile": cfg["compile"], "fused_sgd": fused,
            "sync": cfg["sync"], "images_per_s": args.steps * args.batch_size / seconds,
            "ms_per_step": 1000 * seconds / args.steps, "peak_mib": memory, "memory_kind": memory_kind}


HEADER = ("| config | device | data | amp | channels_last | compile | fused SGD | sync/step | img/s | ms/step "
          "| peak memory |\n|---|---|---|---|---|---|---|---|---:|---:|---:|")


def row(r):
    """One Markdown table row."""
    yes = {True: "yes", False: "no"}
    return (f"| {r['config']} | {r['device']} | {r['data']} | {r['amp']} | {yes[r['channels_last']]} | "
            f"{yes[r['compile']]} | {yes[r['fused_sgd']]} | {yes[r['sync']]} | {r['images_per_s']:.0f} | "
            f"{r['ms_per_step']:.1f} | {r['peak_mib']:.0f} MiB ({r['memory_kind']}) |")


def main(argv=None):
    """Run each configuration in a child process and print the table."""
    args = parse_args(argv)
    if args.one:
        print(json.dumps(measure(args, args.one)), flush=True)
        return 0
    argv = sys.argv[1:] if argv is None else list(argv)
    teacher, student = args.pair.split(":")
    print(f"NORM {teacher} -> {student}, N={args.n}, {args.num_classes} classes, batch {args.batch_size}, "
          f"{args.steps} timed steps after {args.warmup} warm-up steps\n")
    print(HEADER, flush=True)
    failed = 0
    for name in args.configs.split(","):
        child = subprocess.run([sys.executable, os.path.abspath(__file__), *argv, "--one", name],
                               capture_output=True, text=True)
        lines = child.stdout.strip().splitlines()
        if child.returncode or not lines:
            failed += 1
            reason = (child.stderr.strip().splitlines() or ["no output"])[-1]
            print(f"| {name} | failed: {reason} |", flush=True)
            continue
        print(row(json.loads(lines[-1])), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
