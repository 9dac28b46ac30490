"""The official NORM/RepDistiller command lines: inert flags accepted, --num_cls checked, --distill in any case,
an empty --lr_decay_epochs refused. Nothing here trains: the parsers are built and run without data or models."""
import os
import subprocess
import sys

import pytest

import train_cifar_student
import train_cifar_teacher
import train_imagenet_student
from distiller_zoo import METHODS, method_class, register
from helper.cli.parser import student_parser
from helper.cli.student import run_name
from helper.errors import UsageError
from tests.test_bad_input import ROOT, fails

# The official README's command (its script is train_student.py; ours is train_cifar_student.py)
OFFICIAL = ["--path_t", "./save/models/resnet32x4_vanilla/ckpt_epoch_240.pth", "--distill", "norm", "--model_s",
            "resnet8x4", "-r", "0.1", "-a", "0", "-b", "1", "-s", "8", "--trial", "1"]
INERT = ["-b1", "0.3", "--kd-warm-up", "20.0", "--marginal_relu", "--tb_freq", "500", "--num_cls", "100"]
INERT_DESTS = {"beta1", "kd_warm_up", "marginal_relu", "tb_freq", "num_cls"}


def cifar(argv):
    return student_parser(train_cifar_student.CIFAR_PROFILE).parse_args(argv)


def test_the_official_readme_command_parses_to_the_official_values():
    opt = cifar(OFFICIAL)
    assert opt.path_t == "./save/models/resnet32x4_vanilla/ckpt_epoch_240.pth"
    assert (opt.distill, opt.model_s, opt.trial, opt.co_sponge) == ("NORM", "resnet8x4", "1", 8)
    assert (opt.gamma, opt.alpha, opt.beta) == (0.1, 0.0, 1.0)


def test_inert_flags_change_no_other_value():
    plain, official = vars(cifar(OFFICIAL)), vars(cifar(OFFICIAL + INERT))
    assert {k: v for k, v in official.items() if k not in INERT_DESTS} == plain
    assert (official["beta1"], official["kd_warm_up"], official["marginal_relu"], official["tb_freq"],
            official["num_cls"]) == (0.3, 20.0, True, 500, 100)
    # left out, they leave no trace in opt: config.json and the resume comparison stay as before
    assert not INERT_DESTS & set(plain)


def test_b1_is_beta1_and_b_stays_the_norm_weight():
    opt = cifar(["-b1", "2"])  # not "-b 1" plus a stray "2"
    assert opt.beta1 == 2.0 and opt.beta is None
    opt = cifar(["-b", "1"])
    assert opt.beta == 1.0 and not hasattr(opt, "beta1")
    opt = cifar(["-b", "0.5", "-b1", "2", "-b10"])  # "-b10" is still -b 10 (the last -b wins)
    assert (opt.beta, opt.beta1) == (10.0, 2.0)
    opt = cifar(["--beta1=0.1"])
    assert opt.beta1 == 0.1 and opt.beta is None


def test_imagenet_script_takes_the_inert_flags(capsys):
    parser = student_parser(train_imagenet_student.IMAGENET_PROFILE)
    opt = parser.parse_args(["-b1", "2", "--kd-warm-up", "5", "--marginal_relu", "--tb_freq", "10", "-b", "1"])
    assert (opt.beta1, opt.kd_warm_up, opt.marginal_relu, opt.tb_freq, opt.beta) == (2.0, 5.0, True, 10, 1.0)
    # the official ImageNet script forced --num_cls to 1000; here it is accepted and the class folders decide
    assert parser.parse_args(["--num_cls", "1000"]).num_cls == 1000


def test_teacher_takes_tb_freq_and_num_cls_and_range_checks_tb_freq(capsys, tmp_path):
    opt = train_cifar_teacher.parser().parse_args(["--tb_freq", "500", "--num_cls", "100", "--model", "resnet8"])
    assert (opt.tb_freq, opt.num_cls, opt.model) == (500, 100, "resnet8")
    err = fails(train_cifar_teacher.main, ["--tb_freq", "0", "--save_root", str(tmp_path)], capsys)
    assert "argument --tb_freq: invalid integer >= 1 value: '0'" in err
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("dataset,classes", [("cifar100", 100), ("cifar10", 10), ("fashion_mnist", 10)])
def test_num_cls_equal_to_the_dataset_is_accepted_and_other_values_refused(dataset, classes):
    count = train_cifar_student.CIFAR_PROFILE.num_classes
    assert count(cifar(["--dataset", dataset, "--num_cls", str(classes)])) == classes
    assert count(cifar(["--dataset", dataset])) == classes
    with pytest.raises(UsageError, match=f"--num_cls 7 disagrees with --dataset {dataset}, which has {classes} "
                                         f"classes; pass --num_cls {classes}"):
        count(cifar(["--dataset", dataset, "--num_cls", "7"]))


def test_num_cls_mismatch_in_the_teacher_script(capsys, tmp_path):
    err = fails(train_cifar_teacher.main, ["--dataset", "cifar10", "--num_cls", "100", "--model", "resnet8",
                                           "--save_root", str(tmp_path)], capsys)
    assert err == ("error: --num_cls 100 disagrees with --dataset cifar10, which has 10 classes; pass --num_cls 10 "
                   "or leave it out")
    assert not os.listdir(tmp_path)


def test_num_cls_mismatch_in_the_real_student_script(tmp_path):
    teacher = tmp_path / "t.pth"
    teacher.write_bytes(b"")  # never read: the class count is checked before the teacher is loaded
    save = tmp_path / "save"
    out = subprocess.run([sys.executable, "train_cifar_student.py", *OFFICIAL[2:], "--path_t", str(teacher),
                          "--num_cls", "10", "--save_root", str(save)], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "error: --num_cls 10 disagrees with --dataset cifar100, which has 100 classes; pass --num_cls 100 or leave "
        "it out"]
    assert not save.exists() and out.stdout == ""


@pytest.mark.parametrize("typed,registered", [("norm", "NORM"), ("kd", "kd"), ("KD", "kd"),
                                               ("NORM_crd", "NORM_CRD"), ("Crd", "crd")])
def test_distill_is_case_insensitive_and_keeps_the_registered_name(typed, registered):
    opt = cifar(["--distill", typed])
    assert opt.distill == registered and method_class(typed) is METHODS[registered]
    canonical = cifar(["--distill", registered])
    weights = method_class(registered).weights(canonical)
    assert run_name(opt, weights, "cifar100") == run_name(canonical, weights, "cifar100")  # same run folder


def test_unknown_distill_keeps_its_error(capsys):
    err = fails(train_cifar_student.main, ["--distill", "normal"], capsys)
    assert err.startswith("error: unknown --distill 'normal'; choose one of NORM, NORM_CRD, abound")


def test_method_names_differing_only_in_case_cannot_be_registered():
    before = dict(METHODS)
    with pytest.raises(ValueError, match="'nOrM' differs from the registered 'NORM' only in letter case"):
        register("nOrM")(type("Clash", (), {}))
    assert METHODS == before


@pytest.mark.parametrize("main", [train_cifar_student.main, train_cifar_teacher.main], ids=["student", "teacher"])
@pytest.mark.parametrize("empty", ["", ",", " , "])
def test_empty_lr_decay_epochs_is_refused(capsys, tmp_path, main, empty):
    err = fails(main, ["--lr_decay_epochs", empty, "--save_root", str(tmp_path)], capsys)
    assert err.endswith("error: argument --lr_decay_epochs: give at least one epoch, e.g. 150,180,210 (see --help)")
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("text,epochs", [("150,180,210", [150, 180, 210]), ("30,", [30]), ("5", [5])])
def test_valid_lr_decay_epochs_still_parse(text, epochs):
    assert cifar(["--lr_decay_epochs", text]).lr_decay_epochs == epochs
    assert train_cifar_teacher.parser().parse_args(["--lr_decay_epochs", text]).lr_decay_epochs == epochs
    assert cifar([]).lr_decay_epochs == [150, 180, 210]  # the default list is not passed through the type


def test_inert_flags_are_labelled_in_help():
    text = " ".join(student_parser(train_cifar_student.CIFAR_PROFILE).format_help().split())
    assert "-b1 BETA1, --beta1 BETA1 inert: the official code overwrites it every epoch" in text
    assert "--kd-warm-up KD_WARM_UP inert:" in text and "--marginal_relu inert: a no-op" in text
    assert "--tb_freq TB_FREQ accepted for compatibility" in text


def test_a_resume_may_add_or_drop_the_inert_flags(tiny_cifar, tmp_path, capsys):
    # a finished one-epoch run, resumed with inert flags added: the same run, not a refused change of options
    import train_cifar_teacher

    base = ["--model", "resnet8", "--data_root", tiny_cifar, "--save_root", str(tmp_path), "--epochs", "1",
            "--batch_size", "16", "--num_workers", "0", "--seed", "1"]
    first = train_cifar_teacher.main(base)
    again = train_cifar_teacher.main(base + ["--resume", "--tb_freq", "500", "--num_cls", "100"])
    assert again["run"] == first["run"] and again["best_acc"] == first["best_acc"]
    assert "already finished its 1 epochs" in capsys.readouterr().out


def test_teacher_takes_the_official_logit_scale_as_inert():
    import train_cifar_teacher

    with_c = vars(train_cifar_teacher.parser().parse_args(["--model", "resnet8", "-c", "2.5"]))
    without = vars(train_cifar_teacher.parser().parse_args(["--model", "resnet8"]))
    assert with_c.pop("ceta") == 2.5 and with_c == without
