"""End to end on CPU: the teacher and student scripts on tiny CIFAR-format data, evaluation and export."""
import json
import os

import pytest
import torch

import train_cifar_student
import train_cifar_teacher
from helper.runs.checkpoint import load_checkpoint
from models import model_dict
from scripts import evaluate_student, export_student

FAST = ["--epochs", "1", "--batch_size", "16", "--num_workers", "0", "--seed", "3", "--print_freq", "2"]


def run_student(tiny_cifar, save, teacher, model_t, model_s, *extra):
    argv = ["--path_t", teacher, "--model_t", model_t, "--model_s", model_s, "--data_root", tiny_cifar,
            "--save_root", str(save), *FAST, *extra]
    return train_cifar_student.main(argv)


def test_teacher_script_writes_repdistiller_checkpoints(tiny_cifar, tmp_path):
    summary = train_cifar_teacher.main(["--model", "resnet8", "--data_root", tiny_cifar, "--save_root",
                                        str(tmp_path), "--save_freq", "1", *FAST])
    run = tmp_path / "models" / "resnet8_cifar100_lr_0.05_decay_0.0005_trial_0"
    assert summary["run"] == str(run)
    for name in ("resnet8_best.pth", "resnet8_last.pth", "ckpt_epoch_1.pth", "config.json"):
        assert (run / name).is_file(), name
    best = load_checkpoint(str(run / "resnet8_best.pth"))
    assert {"epoch", "model", "best_acc", "optimizer"} <= set(best) and isinstance(best["best_acc"], float)
    periodic = load_checkpoint(str(run / "ckpt_epoch_1.pth"))
    assert {"epoch", "model", "accuracy", "optimizer"} <= set(periodic)
    assert isinstance(periodic["accuracy"], float) and periodic["epoch"] == 1
    model_dict["resnet8"](num_classes=100).load_state_dict(periodic["model"], strict=True)
    line = json.loads((tmp_path / "results.jsonl").read_text().splitlines()[-1])
    assert line["student"] == "resnet8" and line["epochs"] == 1 and 0 <= line["best_acc"] <= 100


@pytest.mark.parametrize("model_t,model_s,extra,terms", [
    ("resnet32x4", "resnet8x4", ["--distill", "NORM", "-r", "0.1", "-a", "0", "-b", "1.0", "-s", "8"],
     {"ce", "norm"}),
    ("resnet32x4", "resnet8x4", ["--distill", "NORM", "-a", "0.5", "-s", "2"], {"ce", "kd", "norm"}),
    ("resnet8x4", "resnet8x4", ["--distill", "NORM_CRD", "-s", "2", "--nce_k", "8"], {"ce", "norm", "crd"}),
    ("vgg13", "MobileNetV2", ["--distill", "NORM", "-s", "2"], {"ce", "norm"}),
])
def test_norm_students_train_checkpoint_and_evaluate(tiny_cifar, tmp_path, teacher_file, capsys, model_t, model_s,
                                                     extra, terms):
    teacher = teacher_file(model_t)
    teacher_before = load_checkpoint(teacher)["model"]
    summary = run_student(tiny_cifar, tmp_path, teacher, model_t, model_s, *extra)
    run = summary["run"]
    out = capsys.readouterr().out
    assert f"teacher {model_t} accuracy" in out
    logged = {part.split()[0] for line in out.splitlines() if line.startswith("epoch 1 [")
              for part in [line.split("] ", 1)[1]]}
    assert logged  # the loss terms appear by name
    first_line = next(line for line in out.splitlines() if line.startswith("epoch 1 ["))
    assert {t for t in terms if f" {t} " in f" {first_line.split('] ', 1)[1]}"} == terms

    best = load_checkpoint(os.path.join(run, f"{model_s}_best.pth"))
    assert isinstance(best["best_acc"], float)
    assert any(k.startswith("feature_transform.expand") for k in best["model"])
    # the teacher file is untouched
    for k, v in load_checkpoint(teacher)["model"].items():
        assert torch.equal(v, teacher_before[k])

    result = evaluate_student.main(["--path", os.path.join(run, f"{model_s}_best.pth"), "--data_root", tiny_cifar,
                                    "--num_workers", "0", "--json"])
    assert result["top1"] == pytest.approx(best["best_acc"])

    folded = tmp_path / "folded.pth"
    error = export_student.main(["--path", os.path.join(run, f"{model_s}_last.pth"), "--out", str(folded)])
    assert error < 1e-4
    plain = model_dict[model_s](num_classes=100)
    state = load_checkpoint(str(folded))["model"]
    assert not any(k.startswith("feature_transform") for k in state)
    plain.load_state_dict(state, strict=True)


BASELINES = ["kd", "hint", "attention", "similarity", "correlation", "vid", "rkd", "pkt", "abound", "factor", "fsp",
             "nst", "kdsvd", "crd"]


@pytest.mark.parametrize("distill", BASELINES)
def test_baselines_run_through_the_same_script(tiny_cifar, tmp_path, teacher_file, capsys, distill):
    extra = {"crd": ["--nce_k", "8"], "correlation": ["--feat_dim", "16"]}.get(distill, [])
    summary = run_student(tiny_cifar, tmp_path, teacher_file("resnet20"), "resnet20", "resnet8", "--distill",
                          distill, "--init_epochs", "1", *extra)
    assert summary["method"] == distill
    out = capsys.readouterr().out
    assert ("init epoch 1/1" in out) == (distill in ("abound", "factor", "fsp"))
    assert os.path.isfile(os.path.join(summary["run"], "resnet8_last.pth"))
