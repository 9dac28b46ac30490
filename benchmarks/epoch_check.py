"""End-to-end check of the fast path through the real scripts: CIFAR-100 epoch time and Fashion-MNIST accuracy.

1. epoch time: train_cifar_student.py (NORM, --pair, batch 64) on a synthetic CIFAR-100 written in the real pickle
   format (random images, so no accuracy is read off it) and a random teacher, once with the reference settings
   (fp32, the CPU DataLoader) and once with the fast path (--gpu_data --amp bf16 --channels_last --fused_sgd
   --compile); each epoch's training time (data loading included, validation not) is read from the run's history.
2. accuracy: a teacher trained on Fashion-MNIST, then the same NORM student with the reference settings and with
   the fast path, same seed; best and last top-1 of both.

Every run is a child process (its own CUDA context and compile cache). Writes epoch_check.md and epoch_check.json
into --out and prints the Markdown. Not part of the test suite's pass/fail.

    python benchmarks/epoch_check.py --out results/                  # on a GPU: about 5 minutes on one H100
"""
import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

REFERENCE = []
FAST = ["--gpu_data", "--amp", "bf16", "--channels_last", "--fused_sgd", "--compile"]


def parse_args(argv=None):
    """The check's flags; the defaults are the full-size check for one GPU."""
    from helper.argtypes import non_negative_int, positive_int

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder for the data, the runs and the report")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:K")
    p.add_argument("--pair", default="resnet32x4:resnet8x4", help="teacher:student of the epoch-time check")
    p.add_argument("--n_train", type=positive_int, default=50000, help="synthetic CIFAR-100 training images")
    p.add_argument("--n_test", type=positive_int, default=10000, help="synthetic CIFAR-100 test images")
    p.add_argument("--epochs", type=positive_int, default=2, help="epochs of the epoch-time runs (the last is timed)")
    p.add_argument("--fashion_root", default=None,
                   help="folder with the Fashion-MNIST idx files (default: the scripts' own search); '' skips part 2")
    p.add_argument("--fashion_pair", default="resnet20:resnet8", help="teacher:student of the accuracy check")
    p.add_argument("--fashion_epochs", type=positive_int, default=3, help="epochs of each accuracy run")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--fast_flags", default=" ".join(FAST), help=f"the fast path's flags (default: {' '.join(FAST)})")
    p.add_argument("--num_workers", type=non_negative_int, default=None,
                   help="loader workers of every run (default: the scripts' own, the official count capped by the CPUs)")
    p.add_argument("--in_process", action="store_true",
                   help="run the scripts inside this process (no isolation between runs: for quick CPU checks)")
    return p.parse_args(argv)


def run_script(script, args, log_path, in_process=False):
    """Run one training script as a child process (or in this one); its summary (the results.jsonl line it added)."""
    save_root = args[args.index("--save_root") + 1]
    results = os.path.join(save_root, "results.jsonl")
    before = os.path.getsize(results) if os.path.exists(results) else 0
    with open(log_path, "w") as log:
        if in_process:
            returncode = run_in_process(script, args, log)
        else:
            returncode = subprocess.run([sys.executable, os.path.join(ROOT, script), *args], cwd=ROOT, stdout=log,
                                        stderr=subprocess.STDOUT).returncode
    if returncode != 0:
        with open(log_path) as log:
            tail = "".join(log.readlines()[-15:])
        raise RuntimeError(f"{script} {' '.join(args)} failed with exit code {returncode}:\n{tail}")
    with open(results) as handle:
        handle.seek(before)
        return json.loads(handle.read().splitlines()[-1])


def run_in_process(script, args, log):
    """Call the script's main(args) with its output in `log`; its exit status."""
    import contextlib
    import importlib

    module = importlib.import_module(os.path.splitext(script)[0])
    with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        try:
            module.main(args)
        except SystemExit as stop:
            return stop.code or 0
        except Exception as err:  # noqa: BLE001 - reported like a child's failure
            print(f"{type(err).__name__}: {err}")
            return 1
    return 0


def epoch_times(summary, model_s):
    """Training seconds of each epoch, from the run's last checkpoint."""
    from helper.runs.checkpoint import load_checkpoint

    history = load_checkpoint(os.path.join(summary["run"], f"{model_s}_last.pth"))["history"]
    return [row["train_s"] for row in history]


def shared_flags(opt):
    """Flags every run gets, reference and fast alike."""
    return ["--num_workers", str(opt.num_workers)] if opt.num_workers is not None else []


def write_teacher(path, name, num_classes, seed):
    """A randomly initialised teacher in RepDistiller's checkpoint format."""
    import torch
    from helper.runs.checkpoint import save_atomic
    from models import model_dict

    torch.manual_seed(seed)
    save_atomic({"model": model_dict[name](num_classes=num_classes).state_dict(), "epoch": 0}, path)
    return path


def epoch_check(opt, fast):
    """Part 1: per-epoch training time of the reference and the fast settings on synthetic CIFAR-100."""
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from datafakes import write_tiny_cifar  # the tests' writer of the real CIFAR pickle format

    teacher, student = opt.pair.split(":")
    data = os.path.join(opt.out, "cifar")
    write_tiny_cifar(data, 100, n_train=opt.n_train, n_test=opt.n_test, seed=opt.seed)
    path_t = write_teacher(os.path.join(opt.out, "teacher.pth"), teacher, 100, opt.seed)
    rows = []
    for name, flags in (("reference", REFERENCE), ("fast", fast)):
        args = ["--path_t", path_t, "--model_t", teacher, "--model_s", student, "--distill", "NORM", "-r", "0.1",
                "-a", "0", "-b", "1", "-s", "8", "--data_root", data, "--save_root", os.path.join(opt.out, "save"),
                "--epochs", str(opt.epochs), "--seed", str(opt.seed), "--device", opt.device, "--print_freq", "1000",
                "--trial", f"epoch_{name}_{int(time.time())}", *flags, *shared_flags(opt)]
        summary = run_script("train_cifar_student.py", args, os.path.join(opt.out, f"epoch_{name}.log"),
                             opt.in_process)
        seconds = epoch_times(summary, student)
        rows.append({"config": name, "flags": " ".join(flags) or "(defaults)", "epoch_s": seconds,
                     "images_per_s": opt.n_train / seconds[-1]})
    rows[1]["speedup"] = rows[0]["epoch_s"][-1] / rows[1]["epoch_s"][-1]
    return rows


def accuracy_check(opt, fast):
    """Part 2: a Fashion-MNIST teacher, then the NORM student with the reference and with the fast settings."""
    teacher, student = opt.fashion_pair.split(":")
    save = os.path.join(opt.out, "save_fashion")
    common = ["--dataset", "fashion_mnist", "--save_root", save, "--seed", str(opt.seed), "--device", opt.device,
              "--epochs", str(opt.fashion_epochs), "--lr_decay", "cos", "--print_freq", "1000", *shared_flags(opt)]
    if opt.fashion_root:
        common += ["--data_root", opt.fashion_root]
    stamp = int(time.time())
    summary = run_script("train_cifar_teacher.py", ["--model", teacher, "--trial", f"t{stamp}", *common, *fast],
                         os.path.join(opt.out, "fashion_teacher.log"), opt.in_process)
    path_t = os.path.join(summary["run"], f"{teacher}_last.pth")
    rows = [{"config": "teacher", "model": teacher, "best": summary["best_acc"], "last": summary["last_acc"]}]
    for name, flags in (("reference", REFERENCE), ("fast", fast)):
        args = ["--path_t", path_t, "--model_t", teacher, "--model_s", student, "--distill", "NORM", "-r", "1",
                "-a", "0", "-b", "1", "-s", "8", "--trial", f"{name}{stamp}", *common, *flags]
        summary = run_script("train_cifar_student.py", args, os.path.join(opt.out, f"fashion_{name}.log"),
                             opt.in_process)
        rows.append({"config": name, "model": student, "best": summary["best_acc"], "last": summary["last_acc"]})
    return rows


def device_name(device):
    """The accelerator's or the CPU's name."""
    import torch
    from helper.runtime.device import choose_device

    dev = choose_device(device)
    return torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU ({os.cpu_count()} cores)"


def report(opt, device, epochs, accuracy):
    """The Markdown report."""
    lines = [f"Device: {device}; torch {__import__('torch').__version__}", "",
             f"NORM {opt.pair}, batch 64, N 8, synthetic CIFAR-100 ({opt.n_train} images), training time per epoch "
             "(data loading included):", "",
             "| config | flags | " + " | ".join(f"epoch {i + 1} (s)" for i in range(opt.epochs))
             + " | img/s (last epoch) | speedup |", "|---|---|" + "---:|" * (opt.epochs + 2)]
    for row in epochs:
        times = " | ".join(f"{s:.1f}" for s in row["epoch_s"])
        speedup = f"{row['speedup']:.2f}x" if "speedup" in row else "1.00x"
        lines.append(f"| {row['config']} | `{row['flags']}` | {times} | {row['images_per_s']:.0f} | {speedup} |")
    if accuracy:
        lines += ["", f"Fashion-MNIST, {opt.fashion_epochs} epochs each, cosine lr, seed {opt.seed}: top-1 (%)", "",
                  "| run | model | best | last |", "|---|---|---:|---:|"]
        lines += [f"| {r['config']} | {r['model']} | {r['best']:.2f} | {r['last']:.2f} |" for r in accuracy]
    return "\n".join(lines) + "\n"


def write_report(opt, device, epochs, accuracy):
    """Write epoch_check.md and epoch_check.json into --out; returns the Markdown."""
    text = report(opt, device, epochs, accuracy)
    with open(os.path.join(opt.out, "epoch_check.md"), "w") as handle:
        handle.write(text)
    with open(os.path.join(opt.out, "epoch_check.json"), "w") as handle:
        json.dump({"device": device, "epochs": epochs, "accuracy": accuracy}, handle, indent=2)
    return text


def main(argv=None):
    """Run both parts, writing the report after each (a failure in part 2 keeps part 1's numbers)."""
    opt = parse_args(argv)
    os.makedirs(opt.out, exist_ok=True)
    fast = opt.fast_flags.split()
    device = device_name(opt.device)
    epochs = epoch_check(opt, fast)
    text = write_report(opt, device, epochs, [])
    if opt.fashion_root != "":
        text = write_report(opt, device, epochs, accuracy_check(opt, fast))
    print(text)


if __name__ == "__main__":
    main()
