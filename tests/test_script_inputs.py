"""Inputs of evaluate_student.py, export_student.py and demo.py: refused up front in one line, or carried through."""
import os

import pytest
import torch

from helper.runs.checkpoint import load_checkpoint
from models import model_dict
from models.norm import attach_feature_transform
from scripts import demo, evaluate_student, export_student
from tests.datafakes import write_tiny_cifar
from tests.test_bad_input import fails

QUIET = ["--num_workers", "0", "--batch_size", "16"]


@pytest.fixture(scope="module")
def tiny_cifar10(tmp_path_factory):
    """A learnable CIFAR-10 with 20 train / 20 test images, in the real pickle layout."""
    root = tmp_path_factory.mktemp("tiny_cifar10_")
    write_tiny_cifar(str(root), num_classes=10, n_train=20, n_test=20, learnable=True, seed=1)
    return str(root)


@pytest.fixture(scope="module")
def student_file(tmp_path_factory):
    """Factory: a randomly initialised NORM student (N=2) saved with a run config naming its dataset."""
    folder = tmp_path_factory.mktemp("students")

    def make(name="resnet8", dataset="cifar10", logit_scale=1.0):
        classes = 100 if dataset == "cifar100" else 10
        torch.manual_seed(0)
        model = attach_feature_transform(model_dict[name](num_classes=classes), 16, 2)
        state = model.state_dict()
        state[model.classifier_name + ".weight"] = state[model.classifier_name + ".weight"] * logit_scale
        path = folder / f"{name}_{dataset}_{logit_scale:g}.pth"
        torch.save({"model": state, "best_acc": 1.0, "config": {"model_s": name, "co_sponge": 2, "ft": "residual",
                                                                "distill": "NORM", "dataset": dataset}}, path)
        return str(path)

    return make


# --- 1: a model of another dataset is refused ---------------------------------------------------------------------


def test_evaluate_refuses_a_checkpoint_of_another_dataset(capsys, student_file, tiny_cifar10):
    err = fails(evaluate_student.main, ["--path", student_file(dataset="cifar100"), "--dataset", "cifar10",
                                        "--data_root", tiny_cifar10, *QUIET], capsys)
    assert "predicts 100 classes but cifar10 has 10" in err and "trained on cifar100: pass --dataset cifar100" in err


def test_evaluate_refuses_an_unlabelled_checkpoint_of_another_dataset(capsys, teacher_file, tiny_cifar10):
    err = fails(evaluate_student.main, ["--path", teacher_file("resnet8"), "--model_s", "resnet8", "--dataset",
                                        "cifar10", "--data_root", tiny_cifar10, *QUIET], capsys)
    assert "predicts 100 classes but cifar10 has 10" in err and "pass the --dataset it was trained on" in err


# --- 2 and 6: the export keeps the dataset, into a folder it creates -------------------------------------------------


@pytest.mark.parametrize("name", ["resnet8", "MobileNetV2"])  # MobileNetV2: NORM's variant without two ReLUs
def test_exported_student_evaluates_like_its_source_without_flags(student_file, tiny_cifar10, tmp_path, name):
    source = student_file(name)
    out = tmp_path / "deploy" / "nested" / "student.pth"  # neither folder exists yet
    export_student.main(["--path", source, "--out", str(out)])
    config = load_checkpoint(str(out))["config"]
    assert config["dataset"] == "cifar10" and "image_size" not in config
    before = evaluate_student.main(["--path", source, "--data_root", tiny_cifar10, *QUIET])
    after = evaluate_student.main(["--path", str(out), "--data_root", tiny_cifar10, *QUIET])
    assert after["dataset"] == "cifar10"
    assert after["top1"] == pytest.approx(before["top1"]) and after["loss"] == pytest.approx(before["loss"], rel=1e-4)


def test_exported_config_copies_the_image_size():
    opt = export_student.parser().parse_args(["--path", "in.pth", "--out", "out.pth"])
    config = export_student.exported_config({"dataset": "imagenet", "image_size": 160, "lr": 0.1},
                                            {"model_s": "resnet18S"}, opt, False, imagenet=True)
    assert config == {"model": "resnet18S", "folded_from": "in.pth", "norm_variant": False, "dataset": "imagenet",
                      "image_size": 160}
    official = export_student.exported_config({}, {"model_s": "MobileNet"}, opt, False, imagenet=True)
    assert official["dataset"] == "imagenet" and "image_size" not in official


def test_export_out_in_an_uncreatable_folder(capsys, student_file, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    err = fails(export_student.main, ["--path", student_file(), "--out", str(blocker / "x.pth")], capsys)
    assert f"cannot create the folder {blocker}" in err and "--out" in err
    err = fails(export_student.main, ["--path", student_file(), "--out", str(tmp_path)], capsys)
    assert "is a folder; give a file name" in err


# --- 3: the check reports a relative difference --------------------------------------------------------------------


def test_export_reports_the_difference_relative_to_the_logits(capsys, student_file, tmp_path):
    # logits of about 1e6, as ImageNet students: float32 rounding alone differs by ~0.1 in absolute terms
    error = export_student.main(["--path", student_file(logit_scale=1e6), "--out", str(tmp_path / "x.pth")])
    assert 0 <= error < 1e-5
    assert "relative to its largest logit" in capsys.readouterr().out


# --- 4 and 5: flags --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("main,extra,needle", [
    (evaluate_student.main, ["-s", "0"], "-s/--co-sponge: invalid integer >= 1 value: '0'"),
    (evaluate_student.main, ["--batch_size", "0"], "--batch_size: invalid integer >= 1 value"),
    (evaluate_student.main, ["--num_workers", "-1"], "--num_workers: invalid integer >= 0 value"),
    (export_student.main, ["-s", "0", "--out", "never.pth"], "-s/--co-sponge: invalid integer >= 1 value"),
])
def test_bad_numbers_are_refused(capsys, student_file, main, extra, needle):
    assert needle in fails(main, ["--path", student_file(), *extra], capsys)
    assert not os.path.exists("never.pth")


def test_evaluate_workers_are_capped_by_the_cpus(monkeypatch, student_file, tiny_cifar10):
    seen = []
    real = evaluate_student.eval_loader

    def recording_loader(dataset, batch_size, runtime, num_workers):
        seen.append(num_workers)
        return real(dataset, batch_size, runtime, 0)

    monkeypatch.setattr(evaluate_student, "eval_loader", recording_loader)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    for extra in ([], ["--num_workers", "0"]):
        evaluate_student.main(["--path", student_file(), "--data_root", tiny_cifar10, *extra])
    assert seen == [1, 0]


def test_evaluate_download_flag_reaches_the_dataset(capsys, monkeypatch, student_file, tmp_path):
    err = fails(evaluate_student.main, ["--path", student_file(), "--data_root", str(tmp_path), *QUIET], capsys)
    assert "--download" in err  # the hint names a flag the evaluator has
    seen = []
    real = evaluate_student.build_dataset

    def recording_build(*args, download=False, **kwargs):
        seen.append(download)
        return real(*args, download=False, **kwargs)  # no network in tests

    monkeypatch.setattr(evaluate_student, "build_dataset", recording_build)
    fails(evaluate_student.main, ["--path", student_file(), "--data_root", str(tmp_path), "--download", *QUIET],
          capsys)
    assert seen == [True]


# --- 7: demo.py --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("extra,needle", [
    (["--teacher", "resnet9"], "unknown --teacher 'resnet9'; did you mean"),
    (["--student", "resnt8"], "unknown --student 'resnt8'; did you mean resnet8"),
    (["-s", "0"], "-s/--co-sponge: invalid integer >= 1 value"),
    (["--teacher_epochs", "0"], "--teacher_epochs: invalid integer >= 1 value"),
    (["--student_epochs", "-2"], "--student_epochs: invalid integer >= 1 value"),
    (["--subset", "-1"], "--subset: invalid integer >= 0 value"),
    (["--batch_size", "x"], "--batch_size: invalid integer >= 1 value"),
])
def test_demo_checks_its_flags_before_training(capsys, monkeypatch, tmp_path, extra, needle):
    def no_training(*args):
        raise AssertionError("the demo started training")

    monkeypatch.setattr(demo, "step", no_training)
    assert needle in fails(demo.main, ["--save_root", str(tmp_path), *extra], capsys)
    assert not os.listdir(tmp_path)


def test_demo_with_the_student_as_teacher_gives_each_step_its_own_run(tmp_path):
    from dataset.fashion_mnist import SYSTEM_DIR

    if not os.path.isdir(SYSTEM_DIR):
        pytest.skip(f"{SYSTEM_DIR} missing (apt-get install dataset-fashion-mnist)")
    result = demo.main(["--data_root", SYSTEM_DIR, "--subset", "200", "--teacher_epochs", "1", "--student_epochs",
                        "1", "--teacher", "resnet8", "-s", "2", "--save_root", str(tmp_path)])
    runs = [result[step]["run"] for step in ("teacher", "vanilla", "norm")]
    assert len(set(runs)) == 3 and all(os.path.isdir(run) for run in runs)
