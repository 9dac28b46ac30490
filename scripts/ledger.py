"""A reproduction ledger on real data: a teacher, then methods x seeds through the real training scripts, one report.

python scripts/ledger.py --out ledger                      # the default grid: 15 methods x 3 seeds on Fashion-MNIST
python scripts/ledger.py --out ledger --methods NORM KD --seeds 0 --epochs 1 --train_subset 2000   # a smoke run

It writes the first --train_subset training and --test_subset test images of Fashion-MNIST (from --data_root or
Debian's /usr/share/datasets/fashion-mnist) as idx files in OUT/data, trains the teacher with
train_cifar_teacher.py, then every (method, seed) cell: vanilla (the student alone, train_cifar_teacher.py) and the
distillation methods (train_cifar_student.py, with the README's weights), each as a child process with its log in
OUT/logs/, its run under OUT/save (the --save_root) and one line per attempt in OUT/cells.jsonl.
It is resumable: a cell whose run is in OUT/save/results.jsonl is skipped, one interrupted mid-run continues with
--resume, and a cell that fails is recorded as failed and the ledger goes on (a rerun retries it). At the end it
writes OUT/report.md: mean ± sample std over seeds of the best and last top-1, the time per run, the per-method bar
chart and the training curves (OUT/results.png, OUT/curves.png, and their .svg).
"""
import datetime
import json
import os
import resource
import shlex
import signal
import subprocess
import sys
import time
from argparse import Namespace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from dataset.fashion_mnist import read_idx, write_idx  # noqa: E402
from helper.runs.files import append_line, write_text_atomic  # noqa: E402
from helper.cli.entry import ArgumentParser, run_cli  # noqa: E402
from helper.errors import UsageError  # noqa: E402
from helper.argtypes import non_negative_int, positive_int, seed_int  # noqa: E402
from scripts import demo, plot_results  # noqa: E402
from scripts.summarize_results import InputError, read_results, summarize  # noqa: E402

DATASET = "fashion_mnist"
# label: (script, the method's flags); the weights are the README's (RepDistiller's for the baselines)
METHODS = {
    "vanilla": ("train_cifar_teacher.py", []),
    "KD": ("train_cifar_student.py", ["--distill", "kd", "-r", "0.1", "-a", "0.9", "-b", "0"]),
    "NORM": ("train_cifar_student.py", ["--distill", "NORM", "-r", "1", "-a", "0", "-b", "1"]),
    "NORM+KD": ("train_cifar_student.py", ["--distill", "NORM", "-r", "1", "-a", "1", "-b", "1"]),
    "CRD": ("train_cifar_student.py", ["--distill", "crd", "-a", "0", "-b", "0.8"]),
    "NORM+CRD": ("train_cifar_student.py", ["--distill", "NORM_CRD", "-r", "1", "-a", "0", "-b", "1"]),
    "FitNet": ("train_cifar_student.py", ["--distill", "hint", "-a", "0", "-b", "100"]),
    # the rest of the field, each with its reference's defaults (which --distill NAME applies)
    "DKD": ("train_cifar_student.py", ["--distill", "dkd"]),
    "ReviewKD": ("train_cifar_student.py", ["--distill", "reviewkd"]),
    "OFD": ("train_cifar_student.py", ["--distill", "ofd"]),
    "SimKD": ("train_cifar_student.py", ["--distill", "simkd"]),
    "SRRL": ("train_cifar_student.py", ["--distill", "srrl"]),
    "SemCKD": ("train_cifar_student.py", ["--distill", "semckd"]),
    "DIST": ("train_cifar_student.py", ["--distill", "dist"]),
    "KD+LS": ("train_cifar_student.py", ["--distill", "kd", "--logit_standardize"]),
}
NORM_METHODS = ("NORM", "NORM+KD", "NORM+CRD")
INTERRUPTED = (128 + signal.SIGINT, 128 + signal.SIGTERM)  # a run stopped by a signal exits 128 + its number
CRD_METHODS = ("CRD", "NORM+CRD")
# the options that fix what a cell learns: a ledger folder holds one setting of them
GRID_KEYS = ("teacher", "student", "teacher_epochs", "epochs", "train_subset", "test_subset", "batch_size",
             "co_sponge", "nce_k", "teacher_seed", "source")


class LedgerStopped(Exception):
    """The ledger cannot go on (the teacher failed, or a signal stopped a run); the message says what to do."""

    def __init__(self, message, code=1):
        super().__init__(message)
        self.code = code


class Cell:
    """One run of the grid: the teacher (with its own seed) or a (method, seed) student."""

    def __init__(self, method, seed, teacher=False):
        self.method, self.seed, self.teacher = method, seed, teacher
        slug = "teacher" if teacher else method.lower().replace("+", "-")
        self.trial = f"ledger-{slug}-s{seed}"  # unique folder suffix: no trial ends with another's "_ledger-..."

    def __repr__(self):
        return "teacher" if self.teacher else f"{self.method} seed {self.seed}"


def parser():
    """The ledger's flags."""
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="ledger", help="the ledger folder (default ./ledger); rerun to continue it")
    p.add_argument("--data_root", default=None,
                   help="folder with the Fashion-MNIST idx files (default: Debian's /usr/share/datasets/fashion-mnist)")
    p.add_argument("--teacher", default="resnet14", help="teacher architecture (default resnet14)")
    p.add_argument("--student", default="resnet8", help="student architecture (default resnet8)")
    p.add_argument("--teacher_epochs", type=positive_int, default=10, help="teacher epochs (default 10)")
    p.add_argument("--epochs", type=positive_int, default=8, help="epochs of every student (default 8)")
    p.add_argument("--train_subset", type=non_negative_int, default=10000,
                   help="the first N training images (0: all 60000; default 10000)")
    p.add_argument("--test_subset", type=non_negative_int, default=5000,
                   help="the first N test images (0: all 10000; default 5000)")
    p.add_argument("--seeds", type=seed_int, nargs="+", default=[0, 1, 2], help="student seeds (default 0 1 2)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), metavar="METHOD",
                   help=f"methods (default all: {' '.join(METHODS)})")
    p.add_argument("--teacher_seed", type=seed_int, default=0)
    p.add_argument("--batch_size", type=positive_int, default=64)
    p.add_argument("-s", "--co-sponge", dest="co_sponge", type=positive_int, default=8, help="NORM's N (default 8)")
    p.add_argument("--nce_k", type=positive_int, default=4096,
                   help="CRD negatives per sample (RepDistiller: 16384, for 50000 images; default 4096 here)")
    p.add_argument("--num_workers", type=non_negative_int, default=0, help="loader processes per run (default 0)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    return p


def check_options(opt):
    """Refuse unknown methods and architectures before anything runs."""
    unknown = [m for m in opt.methods if m not in METHODS]
    if unknown:
        raise UsageError(f"unknown --methods {' '.join(unknown)}; choose from {' '.join(METHODS)}")
    opt.methods = list(dict.fromkeys(opt.methods))
    opt.seeds = list(dict.fromkeys(opt.seeds))
    demo.check_models(Namespace(teacher=opt.teacher, student=opt.student))


def write_subset(train, test, n_train, n_test, folder):
    """The first n_train training and n_test test images (0: all) with labels, as idx files in folder/fashion-mnist."""
    target = os.path.join(folder, "fashion-mnist")
    os.makedirs(target, exist_ok=True)
    for prefix, (images, labels), count in (("train", train, n_train), ("t10k", test, n_test)):
        for kind, source in (("images-idx3", images), ("labels-idx1", labels)):
            array = read_idx(source)
            write_idx(os.path.join(target, f"{prefix}-{kind}-ubyte.gz"), array[:count] if count else array)
    return folder


def grid_settings(opt, source):
    """The settings that fix what every cell learns (saved in OUT/ledger.json)."""
    return {key: getattr(opt, key, None) for key in GRID_KEYS[:-1]} | {"source": os.path.abspath(source)}


def check_ledger_folder(out, settings):
    """Save the grid's settings in a new ledger folder, or refuse one that holds another grid."""
    path = os.path.join(out, "ledger.json")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as handle:
            saved = json.load(handle)
        changed = [f"{k} (saved {saved.get(k)!r}, now {settings.get(k)!r})" for k in GRID_KEYS
                   if saved.get(k) != settings.get(k)]
        if changed:
            raise UsageError(f"{out} holds a ledger with other settings: {', '.join(changed)}; rerun with those, "
                             "or pass another --out")
        return
    os.makedirs(out, exist_ok=True)
    write_text_atomic(json.dumps(settings, indent=1) + "\n", path)


def finished_records(save_root):
    """{trial: its latest results.jsonl record} of the ledger's runs."""
    path = os.path.join(save_root, "results.jsonl")
    if not os.path.isfile(path):
        return {}
    try:
        return {r["trial"]: r for r in read_results(path)}
    except InputError as err:
        raise UsageError(f"{err}; fix or remove that line, then rerun") from None


def run_folder(save_root, cell, script):
    """The cell's run folder if it exists (found by its unique trial suffix), else None."""
    parent = os.path.join(save_root, "models" if script == "train_cifar_teacher.py" else "student_model")
    suffix = f"_trial_{cell.trial}" if script == "train_cifar_teacher.py" else f"_{cell.trial}"
    if not os.path.isdir(parent):
        return None
    matches = sorted(name for name in os.listdir(parent) if name.endswith(suffix))
    return os.path.join(parent, matches[0]) if matches else None


def cell_command(opt, cell, data_root, save_root, teacher_path=None):
    """The child process's argv for one cell (with --resume when an interrupted run of it is on disk)."""
    script, flags = ("train_cifar_teacher.py", []) if cell.teacher else METHODS[cell.method]
    model = opt.teacher if cell.teacher else opt.student
    epochs = opt.teacher_epochs if cell.teacher else opt.epochs
    argv = [sys.executable, os.path.join(ROOT, script)]
    if script == "train_cifar_teacher.py":
        argv += ["--model", model]
    else:
        argv += ["--path_t", teacher_path, "--model_t", opt.teacher, "--model_s", model, *flags]
        if cell.method in NORM_METHODS:
            argv += ["-s", str(opt.co_sponge)]
        if cell.method in CRD_METHODS:
            argv += ["--nce_k", str(opt.nce_k)]
    argv += ["--epochs", str(epochs), "--seed", str(cell.seed), "--trial", cell.trial, "--dataset", DATASET,
             "--data_root", data_root, "--save_root", save_root, "--batch_size", str(opt.batch_size),
             "--num_workers", str(opt.num_workers), "--lr_decay", "cos", "--device", opt.device,
             "--print_freq", "50"]
    folder = run_folder(save_root, cell, script)
    if folder and os.path.isfile(os.path.join(folder, f"{model}_last.pth")):
        argv.append("--resume")
    return argv


def children_cpu_seconds():
    """CPU seconds (user + system) used so far by this process's finished children."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_child(argv, log_path):
    """Run argv with its output in log_path; (exit status, wall seconds, CPU seconds).

    A signal to the ledger reaches the child, which saves a resumable checkpoint; then LedgerStopped.
    """
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    start, cpu = time.time(), children_cpu_seconds()
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"$ {shlex.join(argv)}\n")
        log.flush()
        child = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        received = []

        def forward(signum, _frame):
            received.append(signum)
            child.send_signal(signum)

        previous = signal.signal(signal.SIGTERM, forward)
        try:
            while True:
                try:
                    code = child.wait()
                    break
                except KeyboardInterrupt:  # Ctrl-C reached the child too: let it write its checkpoint
                    received.append(signal.SIGINT)
        finally:
            signal.signal(signal.SIGTERM, previous)
    signum = received[0] if received else code - 128 if code in INTERRUPTED else None
    if signum:  # the run saved a resumable checkpoint: the next ledger run continues it
        raise LedgerStopped(f"stopped by signal {signum}; rerun the same command to continue", 128 + signum)
    # CPU seconds (with the load average, in cells.jsonl): on a shared machine wall time alone misleads
    return code, time.time() - start, children_cpu_seconds() - cpu


def last_line(path):
    """The last non-empty line of a log (a failed run's one-line error)."""
    with open(path, encoding="utf-8", errors="replace") as handle:
        lines = [line.strip() for line in handle if line.strip()]
    return lines[-1] if lines else ""


def record_attempt(out, cell, status, code, seconds, cpu_seconds, log_path):
    """Append one line to OUT/cells.jsonl."""
    entry = {"cell": cell.trial, "method": "teacher" if cell.teacher else cell.method, "seed": cell.seed,
             "status": status, "returncode": code, "seconds": round(seconds, 1), "cpu_s": round(cpu_seconds, 1),
             "load": round(os.getloadavg()[0], 2), "log": os.path.relpath(log_path, out),
             "finished": datetime.datetime.now().isoformat(timespec="seconds")}
    if status == "failed":
        entry["error"] = last_line(log_path)
    append_line(os.path.join(out, "cells.jsonl"), json.dumps(entry))
    return entry


def read_attempts(out):
    """{trial: its latest cells.jsonl entry}."""
    path = os.path.join(out, "cells.jsonl")
    attempts = {}
    if os.path.isfile(path):
        with open(path, encoding="utf-8", errors="replace") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)
                    attempts[entry["cell"]] = entry
                except (ValueError, KeyError, TypeError):  # a hand-edited line; attempts only inform the log
                    print(f"ledger: line {number} of {path} is not an attempt record; skipped", file=sys.stderr)
    return attempts


def run_cell(opt, cell, out, data_root, save_root, teacher_path=None):
    """Run one cell unless its result is in results.jsonl; returns 'skipped', 'done' or 'failed'."""
    if cell.trial in finished_records(save_root):
        print(f"{cell}: done already, skipped", flush=True)
        return "skipped"
    argv = cell_command(opt, cell, data_root, save_root, teacher_path)
    log_path = os.path.join(out, "logs", f"{cell.trial}.log")
    print(f"{cell}: running{' (resuming)' if '--resume' in argv else ''}, log {log_path}", flush=True)
    code, seconds, cpu_seconds = run_child(argv, log_path)
    status = "done" if code == 0 and cell.trial in finished_records(save_root) else "failed"
    entry = record_attempt(out, cell, status, code, seconds, cpu_seconds, log_path)
    print(f"{cell}: {status} in {seconds:.0f} s" + (f" (exit status {code}: {entry['error']})"
                                                    if status == "failed" else ""), flush=True)
    return status


# ------------------------------------------------------------------------------------------------ the report


def _cell(mean, std):
    return "—" if mean is None else f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


def report_rows(opt, records, attempts):
    """summarize_results rows of the grid's student cells, each with its mean process time per run."""
    trials = {Cell(m, s).trial: m for m in opt.methods for s in opt.seeds}
    rows = summarize([r for t, r in records.items() if t in trials])
    for row in rows:
        seconds = [attempts[t]["seconds"] for t in row["trials"] if t in attempts and
                   attempts[t]["status"] == "done"]
        row["process_mean"] = sum(seconds) / len(seconds) if seconds else None
        row["ledger_method"] = trials[row["trials"][0]]
    order = {m: i for i, m in enumerate(METHODS)}
    return sorted(rows, key=lambda r: (order[r["ledger_method"]], r["settings"]))


def markdown_table(rows):
    """The ledger table: method, runs, best and last top-1 (mean ± std), time per run."""
    lines = ["| method | runs | best top-1 (%) | last top-1 (%) | time per run (s) | process time per run (s) |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        times = [("—" if t is None else f"{t:.0f}") for t in (r["time_mean"], r["process_mean"])]
        lines.append(f"| {r['ledger_method']} | {r['n']} | {_cell(r['best_mean'], r['best_std'])} | "
                     f"{_cell(r['last_mean'], r['last_std'])} | {times[0]} | {times[1]} |")
    return "\n".join(lines)


def write_report(opt, out, save_root, command):
    """OUT/report.md with the table and the plots; returns the report's path."""
    records = finished_records(save_root)
    attempts = read_attempts(out)
    rows = report_rows(opt, records, attempts)
    teacher = records.get(Cell(None, opt.teacher_seed, teacher=True).trial)
    cells = [Cell(m, s) for m in opt.methods for s in opt.seeds]
    failed = [c for c in cells if c.trial not in records and attempts.get(c.trial, {}).get("status") == "failed"]
    missing = [c for c in cells if c.trial not in records and c not in failed]
    total = sum(a["seconds"] for a in attempts.values() if a["status"] == "done")
    subset = lambda n, whole: f"the first {n}" if n else f"all {whole}"  # noqa: E731
    lines = [f"# Reproduction ledger: {opt.teacher} → {opt.student} on Fashion-MNIST", "",
             f"Command: `{command}`", "",
             f"Data: {subset(opt.train_subset, 60000)} training and {subset(opt.test_subset, 10000)} test images; "
             f"teacher {opt.teacher_epochs} epochs, students {opt.epochs} epochs, batch {opt.batch_size}, "
             f"cosine learning rate from 0.05, seeds {' '.join(map(str, opt.seeds))}; NORM N = {opt.co_sponge}, "
             f"CRD negatives {opt.nce_k}.", ""]
    if teacher:
        lines += [f"Teacher {opt.teacher}: best top-1 {teacher['best_acc']:.2f}%, last {teacher['last_acc']:.2f}% "
                  f"({teacher['wall_time_s']:.0f} s of training).", ""]
    if rows:
        lines += [markdown_table(rows), "",
                  "best: the best epoch's test top-1 (chosen on the test set, as the official code does); last: "
                  "the final epoch's; mean ± sample standard deviation (n − 1) over the seeds. Time per run: "
                  "training and validation as the run measured it (wall_time_s); process time: the whole child "
                  "process (start-up, data loading, the teacher's evaluation).", ""]
    loads = [a["load"] for a in attempts.values() if "load" in a]
    lines += [f"Time of all finished runs: {total / 60:.1f} min on {os.cpu_count()} CPUs (--device {opt.device})"
              + (f", load average {min(loads):.1f}–{max(loads):.1f} at the ends of the runs" if loads else "")
              + " (per run: `cells.jsonl`).", ""]
    if failed:
        lines += ["Failed cells (rerun the command to retry them):", ""]
        lines += [f"- {c}: {attempts[c.trial].get('error', '')} (log `{attempts[c.trial]['log']}`)" for c in failed]
        lines.append("")
    if missing:
        lines += [f"Not run yet: {', '.join(map(str, missing))}.", ""]
    if rows:
        try:
            plot_results.save_figure(plot_results.pairs_figure(rows), os.path.join(out, "results"))
            lines += ["![best top-1 per method](results.png)", ""]
            runs = [plot_results.read_curves(run) for row in rows for run in row["runs"] if run and os.path.isdir(run)]
            if runs:
                plot_results.save_figure(plot_results.curves_figure(runs), os.path.join(out, "curves"))
                lines += ["![training curves](curves.png)", ""]
        except UsageError as err:
            lines += [f"(no plot: {err})", ""]
    path = os.path.join(out, "report.md")
    write_text_atomic("\n".join(lines), path)
    return path


# ------------------------------------------------------------------------------------------------ main


def main(argv=None):
    """Run (or continue) the grid and write the report; returns the report's path."""
    argv = sys.argv[1:] if argv is None else list(argv)
    opt = parser().parse_args(argv)
    check_options(opt)
    out = os.path.abspath(opt.out)
    train, test = demo.locate_data(Namespace(data_root=opt.data_root, download=False))
    check_ledger_folder(out, grid_settings(opt, train[0]))
    data_root = write_subset(train, test, opt.train_subset, opt.test_subset, os.path.join(out, "data"))
    save_root = os.path.join(out, "save")
    command = shlex.join(["python", "scripts/ledger.py", *argv])
    try:
        teacher = Cell(None, opt.teacher_seed, teacher=True)
        if run_cell(opt, teacher, out, data_root, save_root) == "failed":
            raise LedgerStopped(f"the teacher failed ({read_attempts(out)[teacher.trial].get('error', '')}); see "
                                f"{os.path.join(out, 'logs', teacher.trial + '.log')}, fix it and rerun")
        teacher_run = finished_records(save_root)[teacher.trial]["run"]
        teacher_path = os.path.join(teacher_run, f"{opt.teacher}_last.pth")
        for method in opt.methods:
            for seed in opt.seeds:
                run_cell(opt, Cell(method, seed), out, data_root, save_root, teacher_path)
    except LedgerStopped as err:
        print(f"ledger.py: {err}", file=sys.stderr)
        write_report(opt, out, save_root, command)
        sys.exit(err.code)
    path = write_report(opt, out, save_root, command)
    print(f"report: {path}")
    return path


if __name__ == "__main__":
    run_cli(main)
