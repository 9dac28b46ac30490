"""The helper scripts in scripts/: dry runs print the paper's commands, fetchers work offline, the summary's numbers."""
import functools
import json
import os
import re
import shlex
import subprocess
import sys
import tarfile
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(ROOT, "scripts")
SHELL_SCRIPTS = ["common.sh", "demo.sh", "fetch_pretrained_imagenet_teacher.sh", "fetch_pretrained_teachers.sh",
                 "norm_table.sh", "table1.sh", "table2.sh", "table_field.sh", "train_cifar_teacher.sh", "train_imagenet_norm.sh",
                 "train_imagenet_resnet50_mobilenet.sh"]

TABLE1 = {("wrn_40_2", "wrn_16_2"): "1", ("wrn_40_2", "wrn_40_1"): "1", ("resnet56", "resnet20"): "1",
          ("resnet110", "resnet20"): "1", ("resnet110", "resnet32"): "0.25", ("resnet32x4", "resnet8x4"): "0.1",
          ("vgg13", "vgg8"): "1"}
TABLE2 = {("vgg13", "MobileNetV2"): "1", ("ResNet50", "MobileNetV2"): "1", ("ResNet50", "vgg8"): "1",
          ("resnet32x4", "ShuffleV1"): "1", ("resnet32x4", "ShuffleV2"): "1", ("wrn_40_2", "ShuffleV1"): "1"}
ENV_KEYS = ("TRIALS", "METHODS", "ONLY", "TEACHER_DIR", "KD_WEIGHT", "KEEP_GOING", "NPROC", "NNODES", "NODE_RANK",
            "MASTER_ADDR", "MASTER_PORT", "BATCH_SIZE", "TEACHERS", "TRIAL", "INSTALL", "DRY_RUN", "ORIGINAL_URL",
            "ARCHIVE_URL", "BASE_URL")


@pytest.fixture
def no_network(tmp_path):
    """A PATH whose curl and wget only record that they were called (and fail)."""
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    for tool in ("curl", "wget"):
        stub = bin_dir / tool
        stub.write_text(f"#!/bin/sh\necho {tool} >> {tmp_path}/network_calls\nexit 7\n")
        stub.chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "calls": tmp_path / "network_calls"}


@functools.lru_cache(maxsize=None)
def this_python_as_python3():
    """A folder whose `python3` is the interpreter running the tests (a venv's, even when it is not activated)."""
    folder = tempfile.mkdtemp(prefix="python3-")
    # A wrapper that execs the interpreter by its own path, not a symlink to it: a venv's interpreter finds its venv
    # (pyvenv.cfg) beside the path it is started by, so a symlink in another folder would start the bare base Python.
    shim = os.path.join(folder, "python3")
    with open(shim, "w") as handle:
        handle.write(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} \"$@\"\n")
    os.chmod(shim, 0o755)
    return folder


def sh(script, *args, env=None, timeout=60):
    """Run scripts/<script> with bash (their `python3` is this interpreter); returns the CompletedProcess (text)."""
    full_env = {k: v for k, v in os.environ.items() if k not in ENV_KEYS}
    full_env.update(env or {})
    full_env["PATH"] = f"{this_python_as_python3()}:{full_env.get('PATH', os.defpath)}"
    return subprocess.run(["bash", os.path.join(SCRIPTS, script), *args], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def flag(line, name):
    """The value after `name` in a printed command line."""
    words = line.split()
    return words[words.index(name) + 1]


@pytest.mark.parametrize("script", SHELL_SCRIPTS)
def test_shell_scripts_parse_and_are_strict(script):
    path = os.path.join(SCRIPTS, script)
    assert subprocess.run(["bash", "-n", path]).returncode == 0
    text = open(path).read()
    if script not in ("common.sh", "norm_table.sh"):  # those two are sourced, not run
        assert text.startswith("#!/usr/bin/env bash\n# ")  # a usage comment at the top
        assert "set -euo pipefail" in text and "usage:" in text


@pytest.mark.parametrize("script, pairs", [("table1.sh", TABLE1), ("table2.sh", TABLE2)])
def test_table_dry_run_prints_every_pair_method_and_trial(script, pairs):
    out = sh(script, "--dry-run", "--epochs", "1")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert all("train_cifar_student.py" in line for line in lines)
    assert len(lines) == len(pairs) * 3 * 3  # 63 for Table 1, 54 for Table 2
    seen = set()
    for line in lines:
        t, s = flag(line, "--model_t"), flag(line, "--model_s")
        assert flag(line, "--path_t") == f"save/models/{t}_vanilla/ckpt_epoch_240.pth"
        assert flag(line, "-r") == pairs[(t, s)]
        assert flag(line, "-b") == "1" and flag(line, "-s") == "8"
        assert line.endswith("--epochs 1")  # extra arguments pass through, last
        distill, alpha = flag(line, "--distill"), flag(line, "-a")
        method = {("NORM", "0"): "NORM", ("NORM", "1"): "NORM+KD", ("NORM_CRD", "0"): "NORM+CRD"}[(distill, alpha)]
        seen.add((t, s, method, flag(line, "--trial")))
    assert seen == {(t, s, m, trial) for (t, s) in pairs for m in ("NORM", "NORM+KD", "NORM+CRD")
                    for trial in ("1", "2", "3")}


def test_table_dry_run_via_env_and_filters():
    out = sh("table1.sh", env={"DRY_RUN": "1", "TRIALS": "7", "METHODS": "NORM+KD", "KD_WEIGHT": "0.5",
                               "ONLY": "resnet32x4:resnet8x4 vgg13:vgg8", "TEACHER_DIR": "/t"})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines == [
        "python3 train_cifar_student.py --path_t /t/resnet32x4_vanilla/ckpt_epoch_240.pth --model_t resnet32x4 "
        "--model_s resnet8x4 --distill NORM -r 0.1 -a 0.5 -b 1 -s 8 --trial 7",
        "python3 train_cifar_student.py --path_t /t/vgg13_vanilla/ckpt_epoch_240.pth --model_t vgg13 "
        "--model_s vgg8 --distill NORM -r 1 -a 0.5 -b 1 -s 8 --trial 7"]
    bad = sh("table2.sh", "--dry-run", env={"ONLY": "resnet32x4:resnet8x4"})
    assert bad.returncode == 1 and "no pair 'resnet32x4:resnet8x4'" in bad.stderr
    bad = sh("table1.sh", "--dry-run", env={"METHODS": "NORM+FOO"})
    assert bad.returncode == 1 and "unknown method" in bad.stderr


FIELD_PAIRS = {("resnet32x4", "resnet8x4"): "0.1", ("wrn_40_2", "wrn_16_2"): "1", ("resnet56", "resnet20"): "1",
               ("vgg13", "vgg8"): "1", ("resnet32x4", "ShuffleV2"): "1"}
FIELD_METHODS = {"NORM": ["--distill", "NORM", "-r", None, "-a", "0", "-b", "1", "-s", "8"],
                 "NORM+KD": ["--distill", "NORM", "-r", None, "-a", "1", "-b", "1", "-s", "8"],
                 "DKD": ["--distill", "dkd"], "ReviewKD": ["--distill", "reviewkd"], "OFD": ["--distill", "ofd"],
                 "SimKD": ["--distill", "simkd"], "SRRL": ["--distill", "srrl"], "SemCKD": ["--distill", "semckd"],
                 "DIST": ["--distill", "dist"], "KD+LS": ["--distill", "kd", "--logit_standardize"]}


def test_field_table_dry_run_runs_each_method_with_its_own_defaults():
    out = sh("table_field.sh", "--dry-run", "--epochs", "1")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 5 * 10 * 3
    seen = set()
    for line in lines:
        words = line.split()
        t, s, trial = flag(line, "--model_t"), flag(line, "--model_s"), flag(line, "--trial")
        method_words = words[words.index("--distill"):words.index("--trial")]
        (method,) = [m for m, expected in FIELD_METHODS.items()
                     if [w if e is not None else None for w, e in zip(method_words, expected)] == expected
                     and len(method_words) == len(expected)]
        if method.startswith("NORM"):
            assert flag(line, "-r") == FIELD_PAIRS[(t, s)]  # NORM's per-pair CE weight; the others their defaults
        assert words[-2:] == ["--epochs", "1"]
        seen.add((t, s, method, trial))
    assert seen == {(t, s, m, trial) for (t, s) in FIELD_PAIRS for m in FIELD_METHODS for trial in "123"}
    only = sh("table_field.sh", "--dry-run", env={"ONLY": "vgg13:vgg8", "METHODS": "DKD KD+LS", "TRIALS": "1"})
    assert only.stdout.splitlines() == [
        "python3 train_cifar_student.py --path_t save/models/vgg13_vanilla/ckpt_epoch_240.pth --model_t vgg13 "
        f"--model_s vgg8 {' '.join(FIELD_METHODS[m])} --trial 1" for m in ("DKD", "KD+LS")]


def test_table_without_teachers_stops_before_training(tmp_path):
    out = sh("table1.sh", env={"TEACHER_DIR": str(tmp_path), "ONLY": "resnet56:resnet20"})
    assert out.returncode == 1
    assert "fetch_pretrained_teachers.sh resnet56" in out.stderr and "train_cifar_teacher.sh" in out.stderr
    assert "===" not in out.stderr  # nothing was started


def test_train_cifar_teacher_dry_run():
    out = sh("train_cifar_teacher.sh", "--dry-run", "--epochs", "2")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [f"python3 train_cifar_teacher.py --model {name} --trial 0 --epochs 2"
                                       for name in ("wrn_40_2", "resnet56", "resnet110", "resnet32x4", "vgg13",
                                                    "ResNet50")]
    assert "save/models/resnet32x4_vanilla/ckpt_epoch_240.pth" in out.stderr  # where it would install it
    out = sh("train_cifar_teacher.sh", "--dry-run", env={"TEACHERS": "vgg13", "TRIAL": "4"})
    assert out.stdout == "python3 train_cifar_teacher.py --model vgg13 --trial 4\n"


def test_train_imagenet_norm_dry_run():
    out = sh("train_imagenet_norm.sh", "--dry-run", "--data_root", "/data/imagenet")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 3
    expected = {("resnet34", "resnet18S"): ("1", "resnet34-333f7ec4.pth"),
                ("resnet50", "MobileNet"): ("0.125", "resnet50-19c8e357.pth"),
                ("resnet50", "resnet50_4S"): ("1", "resnet50-19c8e357.pth")}
    for line in lines:
        assert line.startswith("torchrun --nproc_per_node=8 --standalone train_imagenet_student.py ")
        t, s = flag(line, "--model_t"), flag(line, "--model_s")
        r, file = expected.pop((t, s))
        assert flag(line, "-r") == r
        assert flag(line, "--path_t") == f"save/models/{t}_imagenet_vanilla/{file}"
        assert "--distill NORM -r" in line and "-a 0 -b 1 -s 8 --lr_decay cos --batch_size 256 --trial 1" in line
        assert line.endswith("--data_root /data/imagenet")
    assert not expected


def test_train_imagenet_norm_multi_node_and_batch():
    env = {"NPROC": "4", "NNODES": "2", "NODE_RANK": "1", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "1234",
           "ONLY": "resnet34:resnet18S"}
    out = sh("train_imagenet_norm.sh", "--dry-run", env=env)
    assert out.returncode == 0, out.stderr
    line, = out.stdout.splitlines()
    assert line.startswith("torchrun --nproc_per_node=4 --nnodes=2 --node_rank=1 --master_addr=10.0.0.1 "
                           "--master_port=1234 train_imagenet_student.py ")
    assert flag(line, "--batch_size") == "256"  # the global batch: 2 nodes x 4 x 32
    out = sh("train_imagenet_norm.sh", "--dry-run", env={"NPROC": "2", "ONLY": "resnet34:resnet18S"})
    assert flag(out.stdout, "--batch_size") == "256"
    out = sh("train_imagenet_norm.sh", "--dry-run", env={"NPROC": "3", "ONLY": "resnet34:resnet18S"})
    assert out.returncode == 1 and "does not divide over 3 processes" in out.stderr
    out = sh("train_imagenet_norm.sh", "--dry-run", env={"NNODES": "2"})
    assert out.returncode == 1 and "MASTER_ADDR" in out.stderr


def test_quick_demo_script_dry_run(no_network):
    out = sh("train_imagenet_resnet50_mobilenet.sh", "--dry-run", env={"PATH": no_network["PATH"]})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "https://download.pytorch.org/models/resnet50-19c8e357.pth" in lines[1]
    assert "resnet34" not in out.stdout and "resnet18" not in out.stdout
    assert lines[-1].startswith("torchrun --nproc_per_node=8 --standalone train_imagenet_student.py "
                                "--path_t save/models/resnet50_imagenet_vanilla/resnet50-19c8e357.pth "
                                "--model_t resnet50 --model_s MobileNet --distill NORM -r 0.125 -a 0 -b 1 -s 8 ")
    assert not no_network["calls"].exists()


def test_fetch_cifar_teachers_dry_run_prints_both_sources_without_network(no_network, tmp_path):
    out = sh("fetch_pretrained_teachers.sh", "--dry-run",
             env={"PATH": no_network["PATH"], "TEACHER_DIR": str(tmp_path / "models")})
    assert out.returncode == 0, out.stderr
    assert not no_network["calls"].exists()
    names = ["wrn_40_2", "resnet56", "resnet110", "resnet32x4", "vgg13", "ResNet50"]
    for name in names:
        url = f"http://shape2prog.csail.mit.edu/repo/{name}_vanilla/ckpt_epoch_240.pth"
        target = f"{tmp_path}/models/{name}_vanilla/ckpt_epoch_240.pth"
        assert any(url in line and "-C -" in line and f"{target}.part" in line for line in out.stdout.splitlines())
        assert f"mv {tmp_path}/models/.cifar_teachers_unpack/cifar_teachers/{name}_vanilla/ckpt_epoch_240.pth " \
               f"{target}" in out.stdout
        assert re.search(rf"load_model_file.* {name} {re.escape(target)}$", out.stdout, re.M)
    assert "https://github.com/megvii-research/mdistiller/releases/download/checkpoints/cifar_teachers.tar" \
        in out.stdout
    assert not (tmp_path / "models").exists()  # a dry run creates nothing
    bad = sh("fetch_pretrained_teachers.sh", "--dry-run", "resnet8")
    assert bad.returncode == 1 and "unknown teacher 'resnet8'" in bad.stderr


def test_fetch_cifar_teachers_offline_from_archive_then_reports_the_rest(tmp_path):
    import torch
    from models import model_dict

    source = tmp_path / "src" / "cifar_teachers" / "resnet56_vanilla"
    source.mkdir(parents=True)
    torch.save({"epoch": 240, "model": model_dict["resnet56"](num_classes=100).state_dict(), "accuracy": 72.3,
                "optimizer": {}}, source / "ckpt_epoch_240.pth")
    with tarfile.open(tmp_path / "teachers.tar", "w") as tar:
        tar.add(tmp_path / "src" / "cifar_teachers", arcname="cifar_teachers")
    env = {"TEACHER_DIR": str(tmp_path / "models"), "ORIGINAL_URL": "http://127.0.0.1:9",  # refused at once
           "ARCHIVE_URL": f"file://{tmp_path}/teachers.tar"}
    out = sh("fetch_pretrained_teachers.sh", "resnet56", "vgg13", env=env, timeout=120)
    assert out.returncode == 1
    assert "not reachable" in out.stderr
    assert f"ok: {tmp_path}/models/resnet56_vanilla/ckpt_epoch_240.pth" in out.stderr
    assert "could not fetch the teacher(s) vgg13" in out.stderr and "train_cifar_teacher.sh" in out.stderr
    assert not (tmp_path / "models" / "cifar_teachers.tar").exists()
    out = sh("fetch_pretrained_teachers.sh", "resnet56", env=env, timeout=120)  # present and valid: kept
    assert out.returncode == 0, out.stderr
    assert "already present" in out.stderr and "fetching" not in out.stderr


def test_fetch_imagenet_teacher_dry_run_and_hash_check(no_network, tmp_path):
    out = sh("fetch_pretrained_imagenet_teacher.sh", "--dry-run",
             env={"PATH": no_network["PATH"], "TEACHER_DIR": "save/models"})
    assert out.returncode == 0, out.stderr
    assert not no_network["calls"].exists()
    for name, file in (("resnet18", "resnet18-5c106cde.pth"), ("resnet34", "resnet34-333f7ec4.pth"),
                       ("resnet50", "resnet50-19c8e357.pth")):
        target = f"save/models/{name}_imagenet_vanilla/{file}"
        assert f"-C - -o {target}.part https://download.pytorch.org/models/{file}" in out.stdout
        assert f"sha256sum {target}.part" in out.stdout and f"mv {target}.part {target}" in out.stdout
    out = sh("fetch_pretrained_imagenet_teacher.sh", "--dry-run", "resnet34")
    assert "resnet34-333f7ec4.pth" in out.stdout and "resnet50" not in out.stdout and "resnet18" not in out.stdout
    # a file whose SHA-256 does not match its name is refused and deleted
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "resnet18-5c106cde.pth").write_bytes(b"not the weights")
    out = sh("fetch_pretrained_imagenet_teacher.sh", "resnet18",
             env={"TEACHER_DIR": str(tmp_path / "models"), "BASE_URL": f"file://{mirror}"})
    assert out.returncode == 1 and "SHA-256" in out.stderr
    assert not list((tmp_path / "models").rglob("*.pth*"))


# --- summarize_results.py -------------------------------------------------------------------------------------


def record(teacher, student, method, trial, best, last, dataset="cifar100", epochs=240, **config):
    tag = "_".join(f"{k}_{v}" for k, v in sorted(config.items()))  # real run folders name their settings too
    return {"run": f"save/student_model/{teacher}_{student}_{method}_{tag}_{epochs}_{trial}", "teacher": teacher,
            "student": student, "method": method, "dataset": dataset, "trial": str(trial), "teacher_acc": 79.4,
            "best_acc": best, "best_acc_top5": 90.0, "last_acc": last, "last_acc_top5": 90.0, "epochs": epochs,
            "wall_time_s": 1.0, "commit": None,
            "config": {"gamma": 0.1, "alpha": None, "beta": None, "co_sponge": 8, "ft": "residual", **config}}


@pytest.fixture
def results(tmp_path):
    rows = [record("resnet32x4", "resnet8x4", "NORM", 1, 75.0, 74.0, alpha=0.0),
            record("resnet32x4", "resnet8x4", "NORM", 2, 76.0, 75.0),  # alpha None: the default 0, plain NORM
            record("resnet32x4", "resnet8x4", "NORM", 3, 77.0, 78.0, alpha=0.0, beta=1.0),
            record("resnet32x4", "resnet8x4", "NORM", 1, 77.5, 77.0, alpha=1.0),
            record("resnet32x4", "resnet8x4", "NORM", 2, 78.5, 78.0, alpha=1.0),
            record("resnet32x4", "resnet8x4", "NORM_CRD", 1, 76.25, 76.0, alpha=0.0),
            record(None, "resnet8x4", "vanilla", 0, 72.5, 72.0, gamma=None, co_sponge=None, ft=None),
            record("resnet32x4", "resnet8x4", "kd", 1, 74.0, 73.0, gamma=0.1, alpha=0.9, beta=0.0)]
    path = tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")
    return path


def summarize(*args):
    return subprocess.run([sys.executable, os.path.join(SCRIPTS, "summarize_results.py"), *map(str, args)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_summary_groups_labels_and_statistics(results):
    out = summarize(results, "--json")
    assert out.returncode == 0, out.stderr
    rows = {r["method"]: r for r in json.loads(out.stdout)}
    assert set(rows) == {"vanilla", "NORM", "NORM+KD", "NORM+CRD", "kd"}
    norm = rows["NORM"]
    assert norm["n"] == 3 and norm["settings"] == "r=0.1 a=0 b=1 N=8"
    # best 75, 76, 77: mean 76, sample std sqrt((1 + 0 + 1) / 2) = 1
    assert norm["best_mean"] == pytest.approx(76.0) and norm["best_std"] == pytest.approx(1.0)
    # last 74, 75, 78: mean 75.6667, sample std sqrt((1.6667² + 0.6667² + 2.3333²) / 2) = sqrt(13/3) = 2.0817
    assert norm["last_mean"] == pytest.approx(227 / 3) and norm["last_std"] == pytest.approx((13 / 3) ** 0.5)
    kd = rows["NORM+KD"]  # 77.5, 78.5: mean 78, sample std sqrt(0.5) = 0.7071
    assert kd["n"] == 2 and kd["best_mean"] == pytest.approx(78.0) and kd["best_std"] == pytest.approx(0.5 ** 0.5)
    assert rows["NORM+CRD"]["n"] == 1 and rows["NORM+CRD"]["best_std"] is None
    assert (norm["paper"], kd["paper"], rows["NORM+CRD"]["paper"]) == (76.49, 76.98, 76.49)
    assert rows["vanilla"]["teacher"] is None and rows["vanilla"]["paper"] == 72.87
    assert rows["kd"]["paper"] is None and rows["kd"]["settings"] == "r=0.1 a=0.9 b=0"


def test_summary_puts_each_methods_published_number_beside_ours(tmp_path):
    rows = [record("resnet32x4", "resnet8x4", "dkd", 1, 76.0, 75.5, gamma=1.0, alpha=0.0, beta=8.0),
            record("vgg13", "vgg8", "kd", 1, 74.0, 73.0, gamma=0.1, alpha=9.0, logit_standardize=True),
            record("resnet56", "resnet20", "simkd", 1, 70.0, 70.0, gamma=0.0, alpha=0.0, beta=1.0),
            record("resnet32x4", "ShuffleV2", "reviewkd", 1, 77.0, 77.0, gamma=1.0, alpha=0.0, beta=8.0)]
    path = tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = summarize(path, "--json")
    assert out.returncode == 0, out.stderr
    paper = {(r["student"], r["method"]): r["paper"] for r in json.loads(out.stdout)}
    # DKD: mdistiller's README; KD+LS: the logit-standardization README; SimKD publishes nothing for resnet20
    assert paper == {("resnet8x4", "dkd"): 76.32, ("vgg8", "kd+LS"): 74.36, ("resnet20", "simkd"): None,
                     ("ShuffleV2", "reviewkd"): 77.78}


def test_summary_markdown_and_last_column(results):
    out = summarize(results)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("| dataset | teacher | student | method |") and "| best top-1 (%) | last" in lines[0]
    norm = next(line for line in lines if "| NORM |" in line)
    assert "| 3 | 76.00 ± 1.00 | 75.67 ± 2.08 | 76.49 | -0.49 |" in norm
    crd = next(line for line in lines if "| NORM+CRD |" in line)
    assert "| 1 | 76.25 | 76.00 | 76.49 | -0.24 |" in crd  # one trial: no ±
    kd = next(line for line in lines if "| kd |" in line)
    assert kd.endswith("| — | — |")
    assert "sample standard deviation" in out.stdout
    out = summarize(results, "--last")
    lines = out.stdout.splitlines()
    assert "| last top-1 (%) | best top-1 (%) |" in lines[0]
    norm = next(line for line in lines if "| NORM |" in line)
    assert "| 3 | 75.67 ± 2.08 | 76.00 ± 1.00 | 76.49 | -0.82 |" in norm


@pytest.mark.parametrize("bad_line, message", [
    ("{not json", "line 2: not valid JSON"),
    ("[1, 2]", "line 2: expected a JSON object"),
    ('{"teacher": "a", "student": "b", "method": "NORM", "dataset": "cifar100", "best_acc": 1.0}',
     "line 2: no 'last_acc'"),
    ('{"teacher": "a", "student": "b", "method": "NORM", "dataset": "cifar100", "best_acc": "x", "last_acc": 1}',
     "line 2: 'best_acc' is 'x'"),
])
def test_summary_rejects_malformed_lines_in_one_line(tmp_path, bad_line, message):
    path = tmp_path / "results.jsonl"
    path.write_text(json.dumps(record("vgg13", "vgg8", "NORM", 1, 70.0, 70.0)) + "\n" + bad_line + "\n")
    out = summarize(path)
    assert out.returncode == 2 and out.stdout == ""
    assert len(out.stderr.strip().splitlines()) == 1 and message in out.stderr


def test_summary_missing_file(tmp_path):
    out = summarize(tmp_path / "nothing.jsonl")
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    assert "does not exist" in out.stderr


# --- demo.py (not run here: it trains for minutes) ----------------------------------------------------------------


def test_demo_subset_writer_and_missing_data(tmp_path, monkeypatch):
    from dataset.fashion_mnist import find_idx_files, read_idx
    from helper.errors import UsageError
    from scripts import demo
    from tests.datafakes import write_tiny_fashion_mnist

    write_tiny_fashion_mnist(str(tmp_path / "full"), n_train=50, n_test=20)
    train, test = find_idx_files(str(tmp_path / "full"), True), find_idx_files(str(tmp_path / "full"), False)
    root = demo.write_subset(train, test, 30, str(tmp_path / "subset"))
    images, labels = find_idx_files(root, True)
    assert read_idx(images).shape == (30, 28, 28) and len(read_idx(labels)) == 30
    assert (read_idx(images) == read_idx(train[0])[:30]).all()
    assert read_idx(find_idx_files(root, False)[0]).shape == (6, 28, 28)
    monkeypatch.setattr("dataset.fashion_mnist.SYSTEM_DIR", str(tmp_path / "no-system-copy"))
    with pytest.raises(UsageError, match="Fashion-MNIST idx files not found"):
        demo.locate_data(demo.parser().parse_args(["--data_root", str(tmp_path / "empty")]))


def test_a_resumed_run_counts_once_with_its_latest_line(tmp_path):
    path = tmp_path / "results.jsonl"
    first = record("resnet32x4", "resnet8x4", "NORM", 1, 70.0, 70.0)
    again = dict(first, best_acc=72.0, last_acc=71.0)   # the same run folder, finished again after --resume
    other = record("resnet32x4", "resnet8x4", "NORM", 2, 74.0, 73.0)
    path.write_text("\n".join(json.dumps(r) for r in (first, again, other)) + "\n")
    (row,) = json.loads(summarize(path, "--json").stdout)
    assert row["n"] == 2 and row["best_mean"] == pytest.approx(73.0)


def test_summary_flag_errors_are_one_line():
    out = summarize("--bogus")
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    assert "unrecognized arguments: --bogus" in out.stderr and "Traceback" not in out.stderr
