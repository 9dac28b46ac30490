"""Bad input: one line on stderr that says what to do, exit code 2, no traceback, nothing written lost."""
import os
import subprocess
import sys

import pytest
import torch

import train_cifar_student
import train_cifar_teacher
from helper.cli.entry import run_cli
from helper.errors import UsageError
from scripts import evaluate_student, export_student

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK = ["--epochs", "1", "--batch_size", "16", "--num_workers", "0", "--seed", "1"]


def fails(main, argv, capsys):
    """Run a script's entry point; return its single stderr line after checking exit code 2."""
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    return err


def test_unknown_teacher_model(capsys, tiny_cifar, tmp_path):
    err = fails(train_cifar_teacher.main, ["--model", "resnet9", "--data_root", tiny_cifar, "--save_root",
                                           str(tmp_path)], capsys)
    assert "unknown --model 'resnet9'" in err and "resnet8" in err
    assert not os.listdir(tmp_path)


def test_missing_data_offline(capsys, tmp_path):
    err = fails(train_cifar_teacher.main, ["--model", "resnet8", "--data_root", str(tmp_path / "nothing"),
                                           "--save_root", str(tmp_path / "save"), *QUICK], capsys)
    assert "nothing" in err and "--download" in err
    assert not (tmp_path / "save").exists()  # a refused command leaves no empty run folder behind


def test_unknown_device(capsys, tiny_cifar, tmp_path):
    err = fails(train_cifar_teacher.main, ["--model", "resnet8", "--data_root", tiny_cifar, "--save_root",
                                           str(tmp_path), "--device", "gpu", *QUICK], capsys)
    assert "unknown --device 'gpu'" in err and "cuda" in err


def test_unwritable_save_folder(capsys, tiny_cifar, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    err = fails(train_cifar_teacher.main, ["--model", "resnet8", "--data_root", tiny_cifar, "--save_root",
                                           str(blocker), *QUICK], capsys)
    assert "--save_root" in err
    assert blocker.read_text() == "not a folder"


def test_missing_path_t(capsys, tiny_cifar, tmp_path):
    err = fails(train_cifar_student.main, ["--model_t", "resnet8", "--model_s", "resnet8", "--data_root", tiny_cifar,
                                           "--save_root", str(tmp_path)], capsys)
    assert "--path_t" in err and "fetch_pretrained_teachers" in err


def test_teacher_of_another_architecture_names_the_right_one(capsys, tiny_cifar, tmp_path, teacher_file):
    path = teacher_file("resnet56")
    err = fails(train_cifar_student.main, ["--path_t", path, "--model_t", "resnet32x4", "--model_s", "resnet8",
                                           "--data_root", tiny_cifar, "--save_root", str(tmp_path), *QUICK], capsys)
    assert "does not fit --model_t resnet32x4" in err and "--model_t resnet56" in err


def test_teacher_architecture_is_read_from_the_checkpoint(tiny_cifar, tmp_path, teacher_file):
    summary = train_cifar_student.main(["--path_t", teacher_file("resnet8"), "--model_s", "resnet8", "-s", "1",
                                        "--data_root", tiny_cifar, "--save_root", str(tmp_path), *QUICK])
    assert summary["teacher"] == "resnet8"


@pytest.mark.parametrize("extra,needle", [
    (["-s", "0"], "-s/--co-sponge"),
    (["--distill", "NORMAL"], "unknown --distill 'NORMAL'"),
    (["--model_s", "resnet7"], "unknown --model_s 'resnet7'"),
    (["--ft", "none", "-s", "8"], "--ft none"),
])
def test_bad_student_flags(capsys, tiny_cifar, tmp_path, teacher_file, extra, needle):
    argv = ["--path_t", teacher_file("resnet8"), "--model_t", "resnet8", "--model_s", "resnet8", "--data_root",
            tiny_cifar, "--save_root", str(tmp_path), *QUICK, *extra]
    assert needle in fails(train_cifar_student.main, argv, capsys)


def test_method_that_cannot_serve_the_pair(capsys, tiny_cifar, tmp_path, teacher_file):
    err = fails(train_cifar_student.main, ["--path_t", teacher_file("resnet8x4"), "--model_s", "resnet8",
                                           "--distill", "fsp", "--data_root", tiny_cifar, "--save_root",
                                           str(tmp_path), *QUICK], capsys)
    assert "--distill fsp cannot distill resnet8x4 into resnet8" in err


def test_imagenet_script_missing_data_and_unknown_student(capsys, tmp_path):
    import train_imagenet_student

    teacher = tmp_path / "t.pth"
    teacher.write_bytes(b"")
    err = fails(train_imagenet_student.main, ["--path_t", str(teacher), "--model_t", "resnet34", "--data_root",
                                              str(tmp_path / "imagenet"), "--save_root", str(tmp_path)], capsys)
    assert "imagenet" in err and "--data_root" in err
    err = fails(train_imagenet_student.main, ["--model_t", "resnet34", "--save_root", str(tmp_path)], capsys)
    assert "fetch_pretrained_imagenet_teacher" in err


def test_corrupt_teacher_file(capsys, tiny_cifar, tmp_path):
    bad = tmp_path / "teacher.pth"
    bad.write_bytes(b"\x00not a checkpoint")
    err = fails(train_cifar_student.main, ["--path_t", str(bad), "--model_t", "resnet8", "--model_s", "resnet8",
                                           "--data_root", tiny_cifar, "--save_root", str(tmp_path / "s"), *QUICK],
                capsys)
    assert "cannot read checkpoint" in err and "corrupt" in err and "weights_only" not in err


def test_export_refuses_wrn_with_a_reason(capsys, tmp_path):
    from models import model_dict
    from models.norm import attach_feature_transform

    model = attach_feature_transform(model_dict["wrn_16_1"](num_classes=10), 64, 2)
    path = tmp_path / "wrn.pth"
    torch.save({"model": model.state_dict(), "config": {"model_s": "wrn_16_1", "co_sponge": 2, "ft": "residual",
                                                        "distill": "NORM"}}, path)
    err = fails(export_student.main, ["--path", str(path), "--out", str(tmp_path / "o.pth")], capsys)
    assert "cannot be folded" in err
    assert not (tmp_path / "o.pth").exists()


def test_evaluate_missing_checkpoint(capsys, tmp_path):
    err = fails(evaluate_student.main, ["--path", str(tmp_path / "none.pth")], capsys)
    assert "does not exist" in err


def test_real_entry_point_prints_one_line(tmp_path):
    out = subprocess.run([sys.executable, "train_cifar_student.py", "--model_s", "resnet8", "-s", "0"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1 and "-s/--co-sponge" in out.stderr


def test_an_official_flag_is_not_taken_as_a_prefix_of_ours(capsys, tmp_path):
    # the official `--init_epoch` (first epoch of the loop) is not our `--init_epochs` (AB/FT/FSP pre-training)
    err = fails(train_cifar_student.main, ["--path_t", str(tmp_path / "t.pth"), "--init_epoch", "5"], capsys)
    assert "unrecognized arguments: --init_epoch 5" in err
    assert train_cifar_teacher.parser().parse_args(["-t", "3"]).trial == "3"  # the official short form


def test_an_explicit_gpu_index_under_torchrun_is_refused(monkeypatch):
    from helper.errors import UsageError
    from helper.runtime.device import choose_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # only device objects are made, no CUDA call
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert choose_device("cuda", local_rank=1, world_size=2) == torch.device("cuda:1")
    assert choose_device("cuda:1", local_rank=0, world_size=1) == torch.device("cuda:1")
    with pytest.raises(UsageError, match="CUDA_VISIBLE_DEVICES"):
        choose_device("cuda:1", local_rank=0, world_size=2)
    # an index past the machine's GPUs is named as such, not left to fail inside CUDA
    with pytest.raises(UsageError, match=r"--device cuda:2: this machine has 2 CUDA devices \(cuda:0 to cuda:1\)"):
        choose_device("cuda:2", local_rank=0, world_size=1)
    with pytest.raises(UsageError, match=r"LOCAL_RANK 2 but this machine has 2 CUDA devices; pass --nproc_per_node 2"):
        choose_device("cuda", local_rank=2, world_size=3)


def test_teacher_architecture_is_read_from_the_weights_alone():
    from helper.teachers.loading import infer_teacher_name
    from models import imagenet_model_dict, model_dict

    # torchvision's resnet34 file fits resnet34 and the official student variant resnet34S: a teacher is resnet34
    with torch.device("meta"):
        state = imagenet_model_dict["resnet34"](num_classes=1000).state_dict()
    assert infer_teacher_name(imagenet_model_dict, state, "resnet34-333f7ec4.pth", 1000) == "resnet34"
    with torch.device("meta"):
        state = model_dict["wrn_40_2"](num_classes=100).state_dict()
    assert infer_teacher_name(model_dict, state, "t.pth", 100) == "wrn_40_2"
    # a CIFAR-100 teacher for a CIFAR-10 run: the message names the class counts and --dataset
    with pytest.raises(UsageError, match=r"t.pth is a wrn_40_2 with 100 classes, but the dataset has 10; pass the "
                                         r"--dataset it was trained on"):
        infer_teacher_name(model_dict, state, "t.pth", 10)
    with pytest.raises(UsageError, match="no architecture fits it; pass --model_t"):
        infer_teacher_name(model_dict, {"w": torch.ones(2, 2)}, "t.pth", 10)


@pytest.mark.parametrize("flag, hint", [("--resume_path", "with --resume"), ("--init_epoch", "use --resume"),
                                        ("--use_layer3", "last stage only")])
def test_official_flags_without_a_counterpart_say_what_to_use(capsys, tmp_path, flag, hint):
    argv = ["--path_t", str(tmp_path / "t.pth"), flag] + ([] if flag == "--use_layer3" else ["5"])
    err = fails(train_cifar_student.main, argv + ["--save_root", str(tmp_path / "s")], capsys)
    assert f"unrecognized arguments: {flag}" in err and hint in err, err
    assert os.listdir(tmp_path) == []
    if flag != "--use_layer3":  # the --flag=value spelling gets the same hint
        err = fails(train_cifar_student.main, ["--path_t", "t.pth", f"{flag}=5"], capsys)
        assert hint in err, err


def test_a_bare_b1_names_the_norm_weight_flag(capsys):
    err = fails(train_cifar_student.main, ["--path_t", "t.pth", "-b1"], capsys)
    assert "expected one argument" in err and "the NORM loss weight is written apart: -b 1" in err, err


@pytest.mark.parametrize("trial", ["a/b", "", " ", "x\\y"])
def test_a_trial_name_that_is_not_a_folder_name_is_refused(capsys, tmp_path, trial):
    err = fails(train_cifar_student.main, ["--path_t", "t.pth", "--trial", trial, "--save_root", str(tmp_path)],
                capsys)
    assert "argument -t/--trial" in err and "non-empty name without '/'" in err, err
    assert os.listdir(tmp_path) == []
    assert train_cifar_teacher.parser().parse_args(["--trial", "run-3.b"]).trial == "run-3.b"
