"""The teacher registry (scripts/teachers.json): its contents, the hash check, the accuracy warning, the fetchers."""
import hashlib
import json
import os
import re
import subprocess
import sys
import tarfile

import pytest

from helper.teachers import registry as reg
from scripts.summarize_results import PAPER

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CIFAR_TEACHERS = ["wrn_40_2", "resnet56", "resnet110", "resnet32x4", "vgg13", "ResNet50"]


def write_registry(path, *rows):
    """A registry file with the given rows (the other fields filled in)."""
    full = [{"fetch": True, "sources": ["file:///nowhere"], "top1": 70.0, **row} for row in rows]
    path.write_text(json.dumps({"notes": ["test"], "teachers": full}))
    return str(path)


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def test_the_registry_lists_every_fetched_teacher_with_published_numbers():
    rows = reg.load_registry(reg.REGISTRY_PATH)
    fetched = {(r["dataset"], r["name"]): r for r in rows if r["fetch"]}
    assert [n for d, n in fetched if d == "cifar100"] == CIFAR_TEACHERS
    assert {n: r["file"] for (d, n), r in fetched.items() if d == "imagenet"} == {
        "resnet18": "resnet18-5c106cde.pth", "resnet34": "resnet34-333f7ec4.pth", "resnet50": "resnet50-19c8e357.pth"}
    for name in CIFAR_TEACHERS:  # RepDistiller's teacher rows are the NORM README's "Teacher" rows too
        assert fetched[("cifar100", name)]["top1"] == PAPER[("cifar100", None, name, "vanilla")]
        assert fetched[("cifar100", name)]["sha256"] == ""  # none is published: never filled in from a download
    for row in rows:
        if row["dataset"] == "imagenet":
            # torchvision's names carry the first 8 hex digits of the file's SHA-256
            prefix = re.fullmatch(r"resnet\d+-([0-9a-f]{8})\.pth", row["file"]).group(1)
            assert row["sha256"].startswith(prefix) and len(row["sha256"]) in (8, 64)
            assert row["sources"] == [f"https://download.pytorch.org/models/{row['file']}"]
    # the re-serialised files of the same weights share the published accuracy
    by_name = {}
    for row in rows:
        by_name.setdefault((row["dataset"], row["name"]), set()).add(row["top1"])
    assert all(len(values) == 1 for values in by_name.values())


def test_digest_matching_and_malformed_registries(tmp_path):
    full = "ab" * 32
    assert reg.digest_matches(full, full) and reg.digest_matches(full[:8], full)
    assert not reg.digest_matches("", full) and not reg.digest_matches("ab" * 4 + "00", full)
    with pytest.raises(reg.RegistryError, match="sha256 must be"):
        reg.load_registry(write_registry(tmp_path / "r.json", {"name": "x", "dataset": "d", "file": "f",
                                                               "sha256": "abc"}))
    with pytest.raises(reg.RegistryError, match="no valid 'top1'"):
        reg.load_registry(write_registry(tmp_path / "r.json", {"name": "x", "dataset": "d", "file": "f",
                                                               "sha256": "", "top1": True}))
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(reg.RegistryError, match="not valid JSON"):
        reg.load_registry(str(tmp_path / "bad.json"))


def test_check_file_ok_mismatch_and_unknown(tmp_path):
    teacher = tmp_path / "t.pth"
    teacher.write_bytes(b"weights")
    rows = reg.load_registry(write_registry(
        tmp_path / "r.json", {"name": "a", "dataset": "cifar100", "file": "t.pth", "sha256": sha256(b"weights")},
        {"name": "b", "dataset": "cifar100", "file": "t.pth", "sha256": sha256(b"other")[:8]},
        {"name": "c", "dataset": "cifar100", "file": "t.pth", "sha256": ""}))
    assert reg.check_file(str(teacher), "cifar100", "a", rows)[0] == "ok"
    status, message = reg.check_file(str(teacher), "cifar100", "b", rows)
    assert status == "mismatch" and sha256(b"weights")[:16] in message and "\n" not in message
    assert reg.check_file(str(teacher), "cifar100", "c", rows)[0] == "unknown"
    with pytest.raises(reg.RegistryError, match="no imagenet teacher 'a'"):
        reg.check_file(str(teacher), "imagenet", "a", rows)


def test_accuracy_warning_only_for_a_registered_file_off_by_more_than_a_point(tmp_path, monkeypatch):
    teacher = tmp_path / "teacher.pth"
    teacher.write_bytes(b"published weights")
    digest = sha256(b"published weights")
    rows = reg.load_registry(write_registry(
        tmp_path / "r.json", {"name": "resnet18", "dataset": "imagenet", "file": "x.pth", "sha256": digest[:8],
                              "top1": 69.758},
        {"name": "resnet34", "dataset": "imagenet", "file": "y.pth", "sha256": "", "top1": 73.314}))
    warning = reg.teacher_accuracy_warning(str(teacher), "resnet18", "imagenet", 65.5, rows)
    assert warning.startswith("warning: ") and "\n" not in warning
    assert "69.76%" in warning and "65.50%" in warning and "-4.26 points" in warning
    assert reg.teacher_accuracy_warning(str(teacher), "resnet18", "imagenet", 68.9, rows) is None  # within 1 point
    assert reg.teacher_accuracy_warning(str(teacher), "resnet18", "imagenet", 70.7, rows) is None
    assert reg.teacher_accuracy_warning(str(teacher), "resnet18", "cifar100", 10.0, rows) is None  # other data
    other = tmp_path / "other.pth"
    other.write_bytes(b"someone's own teacher")
    assert reg.teacher_accuracy_warning(str(other), "resnet18", "imagenet", 10.0, rows) is None  # not registered
    monkeypatch.setattr(reg, "sha256_of", lambda path: pytest.fail("hashed a file with no published digest"))
    assert reg.teacher_accuracy_warning(str(teacher), "resnet34", "imagenet", 10.0, rows) is None
    monkeypatch.setenv("TEACHER_REGISTRY", str(tmp_path / "missing.json"))
    assert reg.teacher_accuracy_warning(str(teacher), "resnet18", "imagenet", 10.0) is None  # advice never fails


def sh(script, *args, env=None):
    full = {k: v for k, v in os.environ.items() if k not in ("DRY_RUN", "TEACHER_DIR", "BASE_URL", "ARCHIVE_URL")}
    full.update({"PYTHON": sys.executable, **(env or {})})
    return subprocess.run(["bash", os.path.join(ROOT, "scripts", script), *args], cwd=ROOT, env=full,
                          capture_output=True, text=True, timeout=120)


def test_imagenet_fetcher_keeps_a_file_with_the_registry_hash_and_deletes_another(tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "resnet18-5c106cde.pth").write_bytes(b"stand-in weights")
    env = {"TEACHER_DIR": str(tmp_path / "models"), "BASE_URL": f"file://{mirror}"}
    target = tmp_path / "models" / "resnet18_imagenet_vanilla" / "resnet18-5c106cde.pth"
    # the real registry: the stand-in is not torchvision's file
    out = sh("fetch_pretrained_imagenet_teacher.sh", "resnet18", env=env)
    assert out.returncode == 1
    deleted = [line for line in out.stderr.splitlines() if "published SHA-256" in line]
    assert len(deleted) == 1 and "5c106cde386e87d4" in deleted[0] and "deleted" in deleted[0]
    assert not list((tmp_path / "models").rglob("*.pth*"))
    # a registry that publishes the stand-in's hash: the same download is kept
    registry = write_registry(tmp_path / "r.json", {"name": "resnet18", "dataset": "imagenet",
                                                    "file": "resnet18-5c106cde.pth",
                                                    "sha256": sha256(b"stand-in weights")})
    out = sh("fetch_pretrained_imagenet_teacher.sh", "resnet18", env={**env, "TEACHER_REGISTRY": registry})
    assert out.returncode == 0, out.stderr
    assert target.read_bytes() == b"stand-in weights" and f"ok: {target}" in out.stderr


def test_cifar_fetcher_deletes_a_file_whose_hash_is_not_the_registry_one(tmp_path):
    # the hash is checked before the file is loaded, so a stand-in file is enough (and no torch starts)
    source = tmp_path / "src" / "cifar_teachers" / "resnet56_vanilla"
    source.mkdir(parents=True)
    (source / "ckpt_epoch_240.pth").write_bytes(b"stand-in teacher")
    with tarfile.open(tmp_path / "teachers.tar", "w") as tar:
        tar.add(tmp_path / "src" / "cifar_teachers", arcname="cifar_teachers")
    registry = write_registry(tmp_path / "r.json", {"name": "resnet56", "dataset": "cifar100",
                                                    "file": "ckpt_epoch_240.pth", "sha256": "0" * 64})
    out = sh("fetch_pretrained_teachers.sh", "resnet56",
             env={"TEACHER_DIR": str(tmp_path / "models"), "ORIGINAL_URL": "http://127.0.0.1:9",
                  "ARCHIVE_URL": f"file://{tmp_path}/teachers.tar", "TEACHER_REGISTRY": registry})
    assert out.returncode == 1
    wrong = [line for line in out.stderr.splitlines() if "not the published resnet56's" in line]
    assert len(wrong) == 1 and "0000000000000000..." in wrong[0]
    assert not (tmp_path / "models" / "resnet56_vanilla" / "ckpt_epoch_240.pth").exists()
    assert "could not fetch the teacher(s) resnet56" in out.stderr


def test_the_student_script_warns_when_a_registered_teacher_measures_off_its_published_top1(
        tiny_cifar, teacher_file, tmp_path, monkeypatch, capsys):
    import json

    import train_cifar_student
    from helper.teachers.registry import sha256_of

    teacher = teacher_file("resnet8")
    row = {"name": "resnet8", "dataset": "cifar100", "file": "ckpt_epoch_240.pth", "fetch": False, "sources": [],
           "sha256": sha256_of(teacher), "sha256_source": "this test", "top1": 99.0, "top1_source": "this test"}
    registry = tmp_path / "teachers.json"
    registry.write_text(json.dumps({"notes": [], "teachers": [row]}))
    monkeypatch.setenv("TEACHER_REGISTRY", str(registry))
    args = ["--path_t", teacher, "--model_t", "resnet8", "--model_s", "resnet8", "--data_root", tiny_cifar,
            "--epochs", "1", "--batch_size", "32", "--num_workers", "0", "--seed", "0"]
    train_cifar_student.main([*args, "--save_root", str(tmp_path / "a")])
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: teacher")]
    assert len(warnings) == 1 and "top-1 99.00%" in warnings[0] and "points" in warnings[0]
    row["top1"] = 0.0 + train_cifar_student.main([*args, "--save_root", str(tmp_path / "b")])["teacher_acc"]
    registry.write_text(json.dumps({"notes": [], "teachers": [row]}))
    capsys.readouterr()
    train_cifar_student.main([*args, "--save_root", str(tmp_path / "c")])
    assert "warning: teacher" not in capsys.readouterr().err  # measured as published: silent
