"""A quick CPU demo of NORM on real images (Fashion-MNIST): teacher, vanilla student, NORM student, compared.

python scripts/demo.py                      # Debian's dataset-fashion-mnist, a subset, a few minutes on 2 cores
python scripts/demo.py --data_root ~/data   # idx files in ~/data, ~/data/fashion-mnist or ~/data/FashionMNIST/raw
python scripts/demo.py --download           # fetch Fashion-MNIST into ./data first (online)
python scripts/demo.py --subset 0 --teacher_epochs 10 --student_epochs 10   # all 60000 images: far slower

It trains a teacher with plain cross-entropy (train_cifar_teacher.py), the student architecture alone the same way
(the vanilla baseline), and the student distilled from the teacher with NORM (train_cifar_student.py --distill NORM
-r 1 -a 0 -b 1 -s 8), all with a cosine learning-rate schedule, then prints their top-1 test accuracy as a Markdown
table. The scripts run in this process through their main(argv); runs go to --save_root (default: a temporary
folder, deleted at the end). Short runs on a subset are noisy: the demo shows the pipeline, not the paper's gains.
"""
import os
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import train_cifar_student  # noqa: E402
import train_cifar_teacher  # noqa: E402
from dataset.fashion_mnist import FashionMNIST, find_idx_files, read_idx, search_dirs, write_idx  # noqa: E402
from helper.cli.entry import ArgumentParser, run_cli  # noqa: E402
from helper.errors import UsageError  # noqa: E402
from helper.teachers.loading import build_model  # noqa: E402
from helper.argtypes import non_negative_int, positive_int, seed_int  # noqa: E402
from models import model_dict  # noqa: E402


def parser():
    """The demo's flags."""
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data_root", default=None,
                   help="folder with the Fashion-MNIST idx files (default: Debian's /usr/share/datasets/fashion-mnist)")
    p.add_argument("--download", action="store_true", help="download Fashion-MNIST (into --data_root or ./data)")
    p.add_argument("--subset", type=non_negative_int, default=4000,
                   help="train on the first N training images and test on the first N/5 test images "
                        "(0: all 60000 / 10000); default 4000")
    p.add_argument("--teacher", default="resnet14", help="teacher architecture (default resnet14)")
    p.add_argument("--student", default="resnet8", help="student architecture (default resnet8)")
    p.add_argument("--teacher_epochs", type=positive_int, default=3, help="teacher epochs (default 3)")
    p.add_argument("--student_epochs", type=positive_int, default=2, help="epochs of each student (default 2)")
    p.add_argument("--batch_size", type=positive_int, default=64)
    p.add_argument("-s", "--co-sponge", dest="co_sponge", type=positive_int, default=8, help="NORM's N (default 8)")
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--num_workers", type=non_negative_int, default=0,
                   help="data-loading processes (default 0: in this one)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    p.add_argument("--save_root", default=None, help="keep the runs and results.jsonl here (default: temporary)")
    return p


def check_models(opt):
    """Refuse unknown --teacher/--student names before anything trains (naming the closest valid ones)."""
    for flag, name in (("--teacher", opt.teacher), ("--student", opt.student)):
        if name not in model_dict:
            build_model(model_dict, name, 10, flag)  # raises the one-line error


def locate_data(opt):
    """The folder holding both splits' idx files, downloading them first with --download."""
    root = opt.data_root
    if opt.download and (find_idx_files(root, True) is None or find_idx_files(root, False) is None):
        root = root or os.path.join(".", "data")
        print(f"downloading Fashion-MNIST into {root} ...", flush=True)
        for train in (True, False):
            FashionMNIST(root, train=train, download=True)
    train, test = find_idx_files(root, True), find_idx_files(root, False)
    if train is None or test is None:
        raise UsageError(f"Fashion-MNIST idx files not found in {', '.join(search_dirs(root))}; apt-get install "
                         "dataset-fashion-mnist, pass --data_root, or run once online with --download")
    return train, test


def write_subset(train, test, n, folder):
    """The first n training and n/5 test images (with labels) as idx files in folder/fashion-mnist/."""
    target = os.path.join(folder, "fashion-mnist")
    os.makedirs(target, exist_ok=True)
    for prefix, (images, labels), count in (("train", train, n), ("t10k", test, max(1, n // 5))):
        write_idx(os.path.join(target, f"{prefix}-images-idx3-ubyte.gz"), read_idx(images)[:count])
        write_idx(os.path.join(target, f"{prefix}-labels-idx1-ubyte.gz"), read_idx(labels)[:count])
    return folder


def step(title, function, argv):
    """Run one script's main(argv), saying what it is and how long it took."""
    print(f"\n=== {title} ===\n$ python {function.__module__}.py {' '.join(argv)}", flush=True)
    start = time.time()
    summary = function(argv)
    summary["demo_seconds"] = time.time() - start
    return summary


def table(rows):
    """Markdown table of (name, role, epochs, summary) rows."""
    lines = ["| model | role | epochs | best top-1 (%) | last top-1 (%) | time (s) |", "|---|---|---|---|---|---|"]
    for name, role, epochs, summary in rows:
        lines.append(f"| {name} | {role} | {epochs} | {summary['best_acc']:.2f} | {summary['last_acc']:.2f} | "
                     f"{summary['demo_seconds']:.0f} |")
    return "\n".join(lines)


def main(argv=None):
    """Teacher, vanilla student and NORM student on Fashion-MNIST; returns the three summaries."""
    opt = parser().parse_args(argv)
    check_models(opt)
    start = time.time()
    train, test = locate_data(opt)
    scratch = tempfile.mkdtemp(prefix="norm-demo-")
    try:
        if opt.subset:
            data_root = write_subset(train, test, opt.subset, os.path.join(scratch, "data"))
            print(f"data: the first {opt.subset} training and {max(1, opt.subset // 5)} test images of "
                  f"{os.path.dirname(train[0])} (idx copies in {data_root})")
        else:
            data_root = os.path.dirname(train[0])
            print(f"data: all of Fashion-MNIST in {data_root}")
        save_root = opt.save_root or os.path.join(scratch, "save")
        print(f"runs: {save_root}{'' if opt.save_root else ' (temporary)'}")
        # one trial per step: with --teacher equal to --student the first two runs would share a folder
        trial = time.strftime("demo_%Y%m%d_%H%M%S")
        common = ["--dataset", "fashion_mnist", "--data_root", data_root, "--save_root", save_root,
                  "--batch_size", str(opt.batch_size), "--num_workers", str(opt.num_workers), "--seed", str(opt.seed),
                  "--lr_decay", "cos", "--device", opt.device, "--print_freq", "50"]
        teacher = step(f"1/3 teacher {opt.teacher}: cross-entropy, {opt.teacher_epochs} epochs",
                       train_cifar_teacher.main,
                       ["--model", opt.teacher, "--epochs", str(opt.teacher_epochs), "--trial", f"{trial}_teacher",
                        *common])
        vanilla = step(f"2/3 vanilla student {opt.student}: cross-entropy alone, {opt.student_epochs} epochs",
                       train_cifar_teacher.main,
                       ["--model", opt.student, "--epochs", str(opt.student_epochs), "--trial", f"{trial}_vanilla",
                        *common])
        norm = step(f"3/3 NORM student {opt.student} from the teacher, {opt.student_epochs} epochs",
                    train_cifar_student.main,
                    ["--path_t", os.path.join(teacher["run"], f"{opt.teacher}_last.pth"), "--model_t", opt.teacher,
                     "--model_s", opt.student, "--distill", "NORM", "-r", "1", "-a", "0", "-b", "1",
                     "-s", str(opt.co_sponge), "--epochs", str(opt.student_epochs), "--trial", f"{trial}_norm",
                     *common])
        print(f"\nFashion-MNIST, {opt.subset or 60000} training / {max(1, opt.subset // 5) if opt.subset else 10000} "
              f"test images, {time.time() - start:.0f} s in all:\n")
        print(table([(opt.teacher, "teacher (CE)", opt.teacher_epochs, teacher),
                     (opt.student, "vanilla student (CE)", opt.student_epochs, vanilla),
                     (opt.student, f"NORM student (N={opt.co_sponge})", opt.student_epochs, norm)]))
        return {"teacher": teacher, "vanilla": vanilla, "norm": norm}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    run_cli(main)
