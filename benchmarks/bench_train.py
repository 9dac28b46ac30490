"""Throughput, time split and peak memory of the NORM distillation step: the official step against the fast path.

Each configuration lives in its own child process, so peak memory (CUDA max_memory_allocated, or peak RSS on CPU)
and warm-up state (cuDNN autotuning, torch.compile) never leak between them. The children are built one after the
other, then timed in interleaved rounds (one round of each configuration in turn), so that a busy or drifting machine
hits every configuration alike; "vs reference" is the median of the per-round ratios. A separate pass with
synchronising timers then splits the step into teacher forward, student forward + loss, backward and optimizer
step, so that the throughput numbers are not perturbed by it. One Markdown table row is printed per configuration.
Not part of the test suite; see benchmarks/README.md.

    python3 benchmarks/bench_train.py --steps 20 --warmup 3                 # CPU, resnet32x4 -> resnet8x4
    python3 benchmarks/bench_train.py --configs reference,channels_last,inference_teacher,host_memory,fast
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# data: "host" = float batches prepared on the CPU and copied every step (the DataLoader path, its augmentation
# done beforehand as workers would); "device" = helper/loaders/device.py. sync: loss.item() every step, as the
# official code does for its loss meter. channels_last: the method's memory format (--channels_last). teacher:
# "original" = the teacher module under no_grad, "inference" = helper.teachers.inference.install_inference_teacher
# (BatchNorm folded, own memory format measured at start-up). keep_memory: helper/runtime/host_memory.py (freed host
# blocks are reused, not unmapped and faulted in again every step). huge_pages: fast with torch's
# THP_MEM_ALLOC_ENABLE=1 (blocks of 2 MiB and more are 2 MiB-aligned and madvise'd as transparent huge pages). amp and
# fused SGD apply on CUDA only.
CONFIGS = {
    "reference": dict(data="host", sync=True, channels_last=False, teacher="original", amp=False, fused=False,
                      compile=False, keep_memory=False),
    "nosync": dict(data="host", sync=False, channels_last=False, teacher="original", amp=False, fused=False,
                   compile=False, keep_memory=False),
    "device_data": dict(data="device", sync=False, channels_last=False, teacher="original", amp=False, fused=False,
                        compile=False, keep_memory=False),
    "channels_last": dict(data="device", sync=False, channels_last=True, teacher="original", amp=False, fused=False,
                          compile=False, keep_memory=False),
    "inference_teacher": dict(data="device", sync=False, channels_last=False, teacher="inference", amp=False,
                              fused=False, compile=False, keep_memory=False),
    "host_memory": dict(data="device", sync=False, channels_last=False, teacher="original", amp=False, fused=False,
                        compile=False, keep_memory=True),
    "fast": dict(data="device", sync=False, channels_last=True, teacher="inference", amp=True, fused=True,
                 compile=False, keep_memory=True),
    "huge_pages": dict(data="device", sync=False, channels_last=True, teacher="inference", amp=True, fused=True,
                       compile=False, keep_memory=True, huge_pages=True),
    "fast_compile": dict(data="device", sync=False, channels_last=True, teacher="inference", amp=True, fused=True,
                         compile=True, keep_memory=True),
}
PHASES = ("teacher", "student", "backward", "optimizer")


def parse_args(argv=None):
    """The benchmark's flags."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:K")
    p.add_argument("--pair", default="resnet32x4:resnet8x4", help="teacher:student names from models.model_dict")
    p.add_argument("--steps", type=int, default=100, help="timed steps per configuration, over all rounds")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds the timed steps are split into")
    p.add_argument("--warmup", type=int, default=20, help="untimed steps first (cuDNN autotuning, compilation)")
    p.add_argument("--breakdown_steps", type=int, default=5,
                   help="steps with synchronising timers that split the step into phases, spread over the rounds "
                        "(0: no split)")
    p.add_argument("--batch_size", type=int, default=64, help="images per step")
    p.add_argument("--profile", type=int, default=0,
                   help="after timing, this many steps per configuration under torch.profiler: its top operators")
    p.add_argument("--conv_time", type=int, default=0,
                   help="after timing, this many steps per configuration with every convolution call timed: how much "
                        "of the step is convolution, i.e. what no other change to the step can remove")
    p.add_argument("--configs", default="reference,fast", help=f"comma list of: {', '.join(CONFIGS)}")
    p.add_argument("--compile", action="store_true", help="compile student and teacher in 'fast' too (as fast_compile)")
    p.add_argument("--threads", type=int, default=None, help="torch threads per child (default: torch's own)")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="wall: elapsed time (the result); cpu: the child's CPU time, steadier on a shared machine "
                        "(with --threads 1: its work alone, whatever else runs)")
    p.add_argument("--n", type=int, default=8, help="NORM's N (-s/--co-sponge)")
    p.add_argument("--num_classes", type=int, default=100, help="classes of the synthetic CIFAR")
    p.add_argument("--n_data", type=int, default=50000, help="images in the synthetic in-memory training set")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: serve this configuration to the parent
    p.add_argument("--layout_cache", help=argparse.SUPPRESS)  # internal: the inference teacher's layout cache
    args = p.parse_args(argv)
    if (args.steps < 1 or args.warmup < 0 or args.rounds < 1 or args.breakdown_steps < 0 or args.batch_size < 1
            or args.conv_time < 0 or args.profile < 0):
        p.error("--steps, --rounds and --batch_size must be at least 1, --warmup, --breakdown_steps, --profile and "
                "--conv_time at least 0")
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
    from helper.runtime.device import device_model_name

    if device.type == "cuda":
        return device_model_name(device)
    model = device_model_name(device)
    return f"{model} ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


class PhaseClock:
    """Synchronising marks of `clock` (breakdown pass only); collects the teacher's spans for helper.training.timing."""

    def __init__(self, device, clock):
        self.device, self.clock, self.teacher_s = device, clock, 0.0

    def mark(self):
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return self.clock()

    def teacher(self, start, end):
        self.teacher_s += end - start


class Bench:
    """One configuration's NORM step, built once; `run(steps)` times steps, `breakdown(steps)` splits them."""

    def __init__(self, args, name):
        import torch
        from distiller_zoo import METHODS
        from helper.loaders.device import device_loader_for
        from helper.runtime.device import choose_device, seed_everything, setup_runtime
        from models import model_dict

        if args.threads:
            torch.set_num_threads(args.threads)
        self.clock = CLOCKS[args.clock]
        cfg = dict(CONFIGS[name])
        cfg["compile"] = cfg["compile"] or (args.compile and name == "fast")
        cuda = choose_device(args.device).type == "cuda"
        self.cfg, self.cuda, self.args, self.name = cfg, cuda, args, name
        self.amp = "bf16" if cfg["amp"] and cuda else "none"
        self.fused = cfg["fused"] and cuda
        # the training scripts' own switch (CPU only), set before any big allocation
        self.runtime = runtime = setup_runtime(args.device, self.amp, cfg["channels_last"],
                                               keep_host_memory=cfg["keep_memory"])
        cfg["keep_memory"] = runtime.host_memory_kept
        seed_everything(0)

        teacher_name, student_name = args.pair.split(":")
        teacher = model_dict[teacher_name](num_classes=args.num_classes)
        student = model_dict[student_name](num_classes=args.num_classes)
        # The flags NORM.build reads (distiller_zoo/norm.py, base.Distiller.weights); None = the method's default.
        opt = argparse.Namespace(co_sponge=args.n, ft="residual", norm_schedule="official", epochs=240,
                                 gamma=None, alpha=None, beta=None, ceta=None, kd_T=4.0)
        method = METHODS["NORM"].build(student, teacher, opt,
                                       {"n_data": args.n_data, "image_size": 32, "in_channels": 3,
                                        "schedule_kind": "cifar"})
        method.set_epoch(30)  # β1 = 1, the middle of the official schedule
        method = runtime.to_device(method)
        method.train()
        params = [p for p in method.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4,
                                         **({"fused": True} if self.fused else {}))
        tic = time.perf_counter()
        self.teacher_summary = "original"
        if cfg["teacher"] == "inference":
            example = torch.randn(args.batch_size, 3, 32, 32, device=runtime.device)
            from helper.teachers.inference import install_inference_teacher
            self.teacher_summary = install_inference_teacher(
                method, example, compile=cfg["compile"], autocast=runtime.autocast,
                cache_path=args.layout_cache).summary()
        if cfg["compile"]:
            from helper.runtime.device import compile_networks  # as the trainer's --compile, in place
            compile_networks(student, None if cfg["teacher"] == "inference" else teacher)
        self.setup_s = time.perf_counter() - tic
        self.method = method

        data = SyntheticCIFAR(args.n_data, args.num_classes)
        if cfg["data"] == "device":
            self.batches = device_batches(device_loader_for(data, args.batch_size, 0, runtime))
        else:
            self.batches = host_batches(data, args.batch_size, min(args.steps + args.warmup, 8))
        self.total = torch.zeros((), device=runtime.device)
        tic = time.perf_counter()
        for _ in range(args.warmup):
            self.step()
        self.synchronize()
        self.warmup_s = time.perf_counter() - tic

    def next_batch(self):
        import torch

        images, targets, index = next(self.batches)
        if self.cfg["data"] == "host":  # the official per-batch copy to the GPU, from pageable memory
            device = self.runtime.device
            images, targets, index = images.to(device), targets.to(device), index.to(device)
            if self.runtime.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
        return images, targets, index

    def step(self, clock=None, split=None):
        """One training step; with `clock`, adds its phases' seconds to `split`."""
        from helper.training.timing import timed_teacher

        images, targets, index = self.next_batch()
        start = clock.mark() if clock else None
        with timed_teacher(self.method, clock), self.runtime.autocast():
            _, losses = self.method(images, targets, index=index)
        loss = sum(losses.values())
        forward_end = clock.mark() if clock else None
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        backward_end = clock.mark() if clock else None
        self.optimizer.step()
        if self.cfg["sync"]:
            self.total += loss.item()  # the host sync of the official loss meter
        else:
            self.total += loss.detach().float()
        if clock:
            end = clock.mark()
            split["student"] += forward_end - start
            split["backward"] += backward_end - forward_end
            split["optimizer"] += end - backward_end

    def synchronize(self):
        import torch

        if self.cuda:
            torch.cuda.synchronize(self.runtime.device)

    def run(self, steps):
        """Seconds (of the chosen clock) for `steps` steps, synchronised before and after."""
        self.synchronize()
        tic = self.clock()
        for _ in range(steps):
            self.step()
        self.synchronize()
        return self.clock() - tic

    def breakdown(self, steps):
        """Seconds per step of each phase, from `steps` steps with synchronising timers."""
        split = dict.fromkeys(PHASES, 0.0)
        if steps:
            clock = PhaseClock(self.runtime.device, self.clock)
            for _ in range(steps):
                self.step(clock, split)
            split["teacher"] = clock.teacher_s
            split["student"] -= clock.teacher_s  # the teacher runs inside the method's forward
        return {k: v / max(steps, 1) for k, v in split.items()}

    def profile(self, steps, top=12):
        """The `top` operators by self time over `steps` steps under torch.profiler: [name, ms per step, calls]."""
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.cuda else [])
        with profile(activities=activities) as prof:
            for _ in range(steps):
                self.step()
            self.synchronize()

        def self_us(event):  # device time on CUDA (self_cuda_time_total before torch 2.4)
            if not self.cuda:
                return event.self_cpu_time_total
            return getattr(event, "self_device_time_total", None) or getattr(event, "self_cuda_time_total", 0)

        events = sorted(prof.key_averages(), key=self_us, reverse=True)[:top]
        return [[e.key, self_us(e) / 1000 / steps, round(e.count / steps, 1)] for e in events]

    def conv_time(self, steps):
        """Seconds per step spent in convolutions, and their calls per step, over `steps` real steps.

        Every aten.convolution and aten.convolution_backward call is timed where it runs (a dispatch mode around
        the step; synchronising around each call on CUDA), so its inputs come warm from the op before, as in the
        timed steps; the mode's cost on the other operators is not counted. None for a compiled configuration
        (its convolutions are not aten calls).
        """
        import torch
        from torch.utils._python_dispatch import TorchDispatchMode

        if self.cfg["compile"]:
            return None
        convolutions = (torch.ops.aten.convolution.default, torch.ops.aten.convolution_backward.default)
        spent = {"seconds": 0.0, "calls": 0}
        bench = self

        class ConvolutionTimer(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                if func not in convolutions:
                    return func(*args, **(kwargs or {}))
                bench.synchronize()
                tic = bench.clock()
                out = func(*args, **(kwargs or {}))
                bench.synchronize()
                spent["seconds"] += bench.clock() - tic
                spent["calls"] += 1
                return out

        with ConvolutionTimer():
            for _ in range(steps):
                self.step()
        return spent["seconds"] / steps, spent["calls"] / steps

    def report(self):
        """The configuration's description, set-up cost and peak memory."""
        import torch

        if not torch.isfinite(self.total):
            raise RuntimeError(f"non-finite loss in configuration {self.name}")
        memory, memory_kind = peak_memory_mib(self.runtime.device)
        cfg = self.cfg
        return {"config": self.name, "device": device_name(self.runtime.device), "data": cfg["data"],
                "amp": self.amp, "channels_last": cfg["channels_last"], "teacher": self.teacher_summary,
                "compile": cfg["compile"], "fused_sgd": self.fused, "sync": cfg["sync"],
                "keep_memory": cfg["keep_memory"], "huge_pages": bool(cfg.get("huge_pages")),
                "setup_s": self.setup_s, "warmup_s": self.warmup_s, "peak_mib": memory, "memory_kind": memory_kind}


def serve(args):
    """Child side: build the configuration, then answer the parent's commands on stdin, one JSON line each."""
    bench = Bench(args, args.one)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        command, _, value = line.strip().partition(" ")
        if command == "run":
            print(json.dumps({"seconds": bench.run(int(value))}), flush=True)
        elif command == "breakdown":
            print(json.dumps({"split": bench.breakdown(int(value))}), flush=True)
        elif command == "conv_time":
            print(json.dumps({"conv_time": bench.conv_time(int(value))}), flush=True)
        elif command == "profile":
            print(json.dumps({"profile": bench.profile(int(value))}), flush=True)
        elif command == "report":
            print(json.dumps(bench.report()), flush=True)
            return 0
    return 0


class Child:
    """A configuration's child process and its line protocol."""

    def __init__(self, name, argv, scratch):
        self.name = name
        # stderr to a file: a pipe nobody reads until the end would fill up (compile logs) and stall the child
        self.stderr = open(os.path.join(scratch, f"{name}.stderr"), "w+")
        env = dict(os.environ)
        env.pop("THP_MEM_ALLOC_ENABLE", None)
        if CONFIGS[name].get("huge_pages"):  # read once, at torch's first allocation: it must be set before start
            env["THP_MEM_ALLOC_ENABLE"] = "1"
        self.process = subprocess.Popen([sys.executable, os.path.abspath(__file__), *argv, "--one", name,
                                         "--layout_cache", os.path.join(scratch, "teacher_layout.json")],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, text=True,
                                        env=env)

    def ask(self, command=None):
        """Send `command` (if any) and return the next JSON line; RuntimeError with the child's last error line."""
        if command is not None:
            self.process.stdin.write(command + "\n")
            self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            self.process.wait()
            self.stderr.seek(0)
            reason = (self.stderr.read().strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(reason)
        return json.loads(line)

    def close(self):
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.stderr.close()


def split_steps(steps, rounds):
    """`steps` as `rounds` near-equal positive parts (fewer parts when there are fewer steps than rounds)."""
    rounds = min(rounds, steps)
    return [steps // rounds + (1 if i < steps % rounds else 0) for i in range(rounds)]


HEADER = ("| config | data | amp | channels_last | teacher | compile | fused SGD | sync/step | img/s | vs reference "
          "| ms/step | teacher ms | student fwd+loss ms | backward ms | optimizer ms | freed host memory "
          "| peak memory |\n"
          "|---|---|---|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|")


def row(r):
    """One Markdown table row."""
    yes = {True: "yes", False: "no"}
    ratio = f"{r['vs_reference']:.2f}x" if r.get("vs_reference") else "-"
    split = " | ".join(f"{1000 * r['split'][k]:.0f}" if r.get("split") else "-" for k in PHASES)
    memory = ("kept" if r["keep_memory"] else "returned") + (", huge pages" if r.get("huge_pages") else "")
    return (f"| {r['config']} | {r['data']} | {r['amp']} | {yes[r['channels_last']]} | {r['teacher']} | "
            f"{yes[r['compile']]} | {yes[r['fused_sgd']]} | {yes[r['sync']]} | {r['images_per_s']:.0f} | {ratio} | "
            f"{r['ms_per_step']:.1f} | {split} | {memory} | "
            f"{r['peak_mib']:.0f} MiB ({r['memory_kind']}) |")


def measure_all(args, argv):
    """Build every configuration's child (one at a time), time them in interleaved rounds; returns result dicts."""
    names = args.configs.split(",")
    parts = split_steps(args.steps, args.rounds)
    children, results, failed = {}, {}, {}
    with tempfile.TemporaryDirectory() as scratch:
        # the inference teacher's layout is measured afresh in this run (a cache in `scratch`, shared by the children)
        try:
            for name in names:  # built and warmed up one after the other: no two compete for the machine
                child = Child(name, argv, scratch)
                try:
                    child.ask()
                    children[name] = child
                except RuntimeError as err:
                    failed[name] = str(err)
                    child.close()
            times = {name: [] for name in children}
            splits = {name: dict.fromkeys(PHASES, 0.0) for name in children}
            # the breakdown steps are spread over the rounds too, each after the round's timed steps
            breakdown = split_steps(args.breakdown_steps, len(parts)) if args.breakdown_steps else []
            breakdown += [0] * (len(parts) - len(breakdown))
            for steps, timer_steps in zip(parts, breakdown):
                for name in list(children):
                    try:
                        times[name].append(children[name].ask(f"run {steps}")["seconds"])
                        if timer_steps:
                            split = children[name].ask(f"breakdown {timer_steps}")["split"]
                            for phase in PHASES:
                                splits[name][phase] += split[phase] * timer_steps / args.breakdown_steps
                    except RuntimeError as err:
                        failed[name] = str(err)
                        children.pop(name).close()
            for name, child in list(children.items()):
                try:
                    profiled = child.ask(f"profile {args.profile}")["profile"] if args.profile else None
                    convs = child.ask(f"conv_time {args.conv_time}")["conv_time"] if args.conv_time else None
                    result = child.ask("report")  # the child's last answer: it exits after it
                    result["profile"], result["conv_time"] = profiled, convs
                    # gone before the next child is profiled: a process tearing down (profiler threads, its heap)
                    # took a core and doubled the next profile's times
                    children.pop(name).close()
                except RuntimeError as err:
                    failed[name] = str(err)
                    continue
                result["split"] = splits[name] if args.breakdown_steps else None
                result["round_seconds"] = times[name]
                result["images_per_s"] = args.steps * args.batch_size / sum(times[name])
                result["ms_per_step"] = 1000 * sum(times[name]) / args.steps
                results[name] = result
        finally:
            for child in children.values():
                child.close()
    reference = results.get("reference")
    for result in results.values():
        if reference is not None:  # per-round ratios, paired in time: drift of the machine cancels
            ratios = [r / s for r, s in zip(reference["round_seconds"], result["round_seconds"])]
            result["vs_reference"] = statistics.median(ratios) if ratios else None
    return [results.get(name) or {"config": name, "failed": failed.get(name, "no result")} for name in names]


def main(argv=None):
    """Run each configuration in a child process and print the table."""
    args = parse_args(argv)
    if args.one:
        return serve(args)
    argv = sys.argv[1:] if argv is None else list(argv)
    teacher, student = args.pair.split(":")
    print(f"NORM {teacher} -> {student}, N={args.n}, {args.num_classes} classes, batch {args.batch_size}, "
          f"{args.steps} timed steps in {min(args.rounds, args.steps)} interleaved rounds after {args.warmup} warm-up "
          f"steps; phases from {args.breakdown_steps} more steps with synchronising timers, spread over the rounds",
          flush=True)
    results = measure_all(args, argv)
    devices = sorted({r["device"] for r in results if "device" in r})
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"device: {', '.join(devices) or '-'}; clock: {args.clock}; load average at the end: {load:.2f}\n")
    print(HEADER)
    for r in results:
        print(f"| {r['config']} | failed: {r['failed']} |" if "failed" in r else row(r))
    print()
    for r in results:
        if "failed" not in r:
            print(f"{r['config']}: set-up {r['setup_s']:.1f} s (inference teacher, compile), warm-up "
                  f"{r['warmup_s']:.1f} s; rounds {', '.join(f'{s:.2f}' for s in r['round_seconds'])} s")
    reference = next((r for r in results if r["config"] == "reference" and "failed" not in r), None)
    for r in results:
        if r.get("conv_time"):
            seconds, calls = r["conv_time"]
            bound = f"; a step of nothing else would be {reference['ms_per_step'] / (1000 * seconds):.2f}x the " \
                    "reference step" if reference else ""
            print(f"{r['config']}: convolutions {1000 * seconds:.1f} ms per step in {calls:g} calls "
                  f"({100 * 1000 * seconds / r['ms_per_step']:.0f}% of its step){bound}")
        elif args.conv_time and "failed" not in r:
            print(f"{r['config']}: convolution time not measured (compiled: its convolutions are not aten calls)")
    for r in results:
        if r.get("profile"):
            print(f"\n{r['config']}: top operators by self time (torch.profiler, {args.profile} steps)\n"
                  "| operator | ms/step | calls/step |\n|---|---:|---:|")
            for name, ms, calls in r["profile"]:
                print(f"| {name} | {ms:.1f} | {calls:g} |")
    return 1 if any("failed" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
