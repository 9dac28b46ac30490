"""Combinations of methods (`--distill A+B`): NORM_CRD is NORM+crd bit for bit, the shared and per-part weights,
term and module names, the run folder, one-epoch runs and the refusals."""
import argparse
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import train_cifar_student
from distiller_zoo import METHODS, Distiller, method_class, method_name
from distiller_zoo.compose import Combination, check_parts
from helper.runs.checkpoint import load_checkpoint
from helper.cli.student import run_name
from helper.errors import UsageError
from models import model_dict
from scripts import evaluate_student
from tests.test_bad_input import fails
from tests.test_cifar_scripts import run_student
from tests.test_logit_methods import dkd_by_hand

DATA = {"n_data": 16, "image_size": 32, "in_channels": 3, "schedule_kind": "cifar"}


def options(**kw):
    base = dict(gamma=None, alpha=None, beta=None, ceta=None, kd_T=4.0, co_sponge=2, ft="residual",
                norm_schedule="official", epochs=240, feat_dim=16, nce_k=4, nce_t=0.07, nce_m=0.5, mode="exact",
                crd_weight=2.5, model_t="resnet20", model_s="resnet8", logit_standardize=None, ls_T=None,
                ls_weight=None, dkd_alpha=None, dkd_T=None, dkd_warmup=None, dist_tau=None, dist_inter=None,
                dist_intra=None, distill=None, trial="0")
    base.update(kw)
    return argparse.Namespace(**base)


def _pair(seed):
    torch.manual_seed(seed)
    return model_dict["resnet20"](num_classes=10), model_dict["resnet8"](num_classes=10)


def _steps(method, steps=2):
    """Losses and gradients of `steps` training steps on fixed data (contrast indices fixed too)."""
    method.set_epoch(12)
    method.train()
    x, y = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(5)), torch.tensor([0, 3, 5, 9])
    index = torch.tensor([1, 2, 3, 4])
    contrast = torch.randint(0, 16, (4, 5), generator=torch.Generator().manual_seed(6))
    contrast[:, 0] = index
    record = []
    for _ in range(steps):
        _, losses = method(x, y, index=index, contrast_index=contrast)
        method.zero_grad()
        sum(losses.values()).backward()
        record.append(({k: v.detach() for k, v in losses.items()},
                       {n: p.grad.clone() for n, p in method.named_parameters() if p.grad is not None}))
    return record


# ------------------------------------------------------------------ NORM_CRD is NORM+crd
@pytest.mark.parametrize("alpha", [None, 0.7])
def test_norm_crd_is_norm_plus_crd_bit_for_bit(alpha):
    assert METHODS["NORM_CRD"].parts == (METHODS["NORM"], METHODS["crd"])
    teacher, student = _pair(0)
    official = METHODS["NORM_CRD"].build(student, teacher, options(alpha=alpha), DATA)
    teacher2, student2 = _pair(0)
    combined = method_class("NORM+crd").build(student2, teacher2, options(alpha=alpha, beta=(1.0, 2.5)), DATA)
    assert list(official.state_dict()) == list(combined.state_dict())
    assert [n for n, _ in official.named_parameters()] == [n for n, _ in combined.named_parameters()]
    assert any(k.startswith("crd.contrast.memory_s") for k in official.method_state_dict())
    for (losses_a, grads_a), (losses_b, grads_b) in zip(_steps(official), _steps(combined)):
        assert list(losses_a) == list(losses_b) == ["ce", *(["kd"] if alpha else []), "norm", "crd"]
        for name in losses_a:
            assert torch.equal(losses_a[name], losses_b[name]), name
        assert list(grads_a) == list(grads_b)
        for name in grads_a:
            assert torch.equal(grads_a[name], grads_b[name]), name
    assert official.logged_scalars() == combined.logged_scalars() == {"beta1": 0.5}


def test_norm_plus_kd_is_norm_with_kds_weight_bit_for_bit():
    teacher, student = _pair(4)
    norm = METHODS["NORM"].build(student, teacher, options(alpha=0.9), DATA)
    teacher2, student2 = _pair(4)
    combined = method_class("NORM+kd").build(student2, teacher2, options(), DATA)
    assert (combined.gamma, combined.alpha, combined.logit_scale) == (1.0, 0.9, 2.5)
    for (losses_a, grads_a), (losses_b, grads_b) in zip(_steps(norm), _steps(combined)):
        assert list(losses_a) == list(losses_b) == ["ce", "kd", "norm"]
        assert all(torch.equal(losses_a[k], losses_b[k]) for k in losses_a)
        assert all(torch.equal(grads_a[k], grads_b[k]) for k in grads_a)


def test_norm_crd_keeps_its_weights_and_folder_name():
    opt = options(distill="NORM_CRD", model_t="resnet32x4", model_s="resnet8x4")
    weights = METHODS["NORM_CRD"].weights(opt)
    assert (weights["gamma"], weights["alpha"], weights["beta"], weights["logit_scale"]) == (1.0, 0.0, 1.0, 2.5)
    assert run_name(opt, weights, "cifar100") == ("T_resnet32x4_S_resnet8x4_cifar100_NORM_CRD_r_1.0_a_0.0_b_1.0_c_2.5"
                                                  "_s_2_0")
    with pytest.raises(UsageError, match="NORM_CRD takes one -b"):
        METHODS["NORM_CRD"].weights(options(beta=(1.0, 2.0)))


# ------------------------------------------------------------------ names and weights
def test_names_are_matched_part_by_part_in_any_case():
    assert method_name("norm+DKD") == "NORM+dkd" and method_name("Dist + CRD") == "dist+crd"
    assert method_class("norm+DKD") is method_class("NORM+dkd")
    assert method_class("NORM+dkd").parts == (METHODS["NORM"], METHODS["dkd"])
    assert method_class("dkd+crd").needs_contrast and not method_class("NORM+dkd").needs_contrast
    assert method_name("NORM+nope") == "NORM+nope"
    with pytest.raises(KeyError, match="unknown --distill part 'nope'"):
        method_class("NORM+nope")


@pytest.mark.parametrize("name,given,expected", [
    # first part's CE weight and logit scale, the largest default KD weight, one beta per part
    ("NORM+dkd", {}, (1.0, 0.0, "1.0+8.0", 2.5)),
    ("NORM+dkd", {"beta": 2.0}, (1.0, 0.0, "2.0+8.0", 2.5)),
    ("NORM+dkd", {"beta": (2.0, 3.0), "gamma": 0.5, "ceta": 0.0}, (0.5, 0.0, "2.0+3.0", 0.0)),
    ("NORM+kd", {}, (1.0, 0.9, "1.0+0.0", 2.5)),
    ("kd+dkd", {}, (0.1, 0.9, "0.0+8.0", 0.0)),
    ("dkd+kd", {"alpha": 0.5}, (1.0, 0.5, "8.0+0.0", 0.0)),
    ("dist+crd", {}, (1.0, 0.0, "2.0+0.8", 0.0)),
])
def test_shared_and_per_part_weights(name, given, expected):
    opt = options(model_t="resnet32x4", model_s="resnet8x4", distill=name, **given)
    weights = method_class(name).weights(opt)
    assert (weights["gamma"], weights["alpha"], weights["beta"], weights["logit_scale"]) == expected
    folder = run_name(opt, weights, "cifar100")
    gamma, alpha, beta = expected[:3]
    assert folder.startswith(f"T_resnet32x4_S_resnet8x4_cifar100_{name}_r_{gamma}_a_{alpha}_b_{beta}_")
    opt.beta = weights["beta"]  # the resolved value, as config.json keeps it, resolves to itself
    assert method_class(name).weights(opt)["beta"] == expected[2]


def test_logit_standardize_in_a_combination():
    opt = options(model_t="resnet56", model_s="resnet20", logit_standardize=True, distill="NORM+kd")
    weights = method_class("NORM+kd").weights(opt)
    assert (weights["alpha"], weights["ls_T"], weights["logit_standardize"]) == (9.0, 2.0, True)
    assert method_class("NORM+dkd").weights(options(logit_standardize=True))["logit_standardize"]
    with pytest.raises(UsageError, match="--distill NORM\\+crd has none here"):
        method_class("NORM+crd").weights(options(logit_standardize=True))


def test_norm_plus_dkd_is_each_part_term_by_term():
    teacher, student = _pair(2)
    method = method_class("NORM+dkd").build(student, teacher, options(beta=(2.0, 3.0)), DATA)
    method.set_epoch(15)  # NORM's beta1 0.5; DKD's warm-up 15/20
    method.train()
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 3, 5, 9])
    logits, losses = method(x, y)
    with torch.no_grad():
        feat_t, z_t = teacher(x, is_feat=True)
    feat_s, z_s = student(x, is_feat=True)

    def ln(z):
        return 2.5 * (z - z.mean(1, keepdim=True)) / torch.sqrt(z.var(1, unbiased=False, keepdim=True) + 1e-7)

    assert list(losses) == ["ce", "norm", "dkd"]
    torch.testing.assert_close(losses["ce"], F.cross_entropy(ln(z_s), y))
    norm = 2 * ((feat_s[-2] - feat_t[-2].repeat(1, 2, 1, 1)) ** 2).mean()
    torch.testing.assert_close(losses["norm"], 2.0 * 0.5 * norm)
    dkd = dkd_by_hand(z_s.double().tolist(), z_t.double().tolist(), y.tolist(), 1.0, 3.0, 4.0)  # on raw logits
    assert losses["dkd"].item() == pytest.approx(15 / 20 * dkd, rel=1e-4)
    assert method.logged_scalars() == {"beta1": 0.5, "dkd_warmup": 0.75}
    torch.testing.assert_close(logits, z_s)


class _Part(Distiller):
    """A test part with one module `proj` and one term `x`."""

    def __init__(self, student, teacher, **weights):
        super().__init__(student, teacher, **weights)
        self.proj = nn.Linear(1, 1)

    @classmethod
    def build(cls, student, teacher, opt, data):
        return cls(student, teacher, **cls.weights(opt))

    def feature_losses(self, feat_s, feat_t, logits_s, logits_t, index, contrast_index):
        return {"x": self.beta * logits_s.sum() * 0}


def test_clashing_terms_and_modules_take_their_part_prefix():
    first = type("First", (_Part,), {"name": "first"})
    second = type("Second", (_Part,), {"name": "second"})
    pair = type("first+second", (Combination,), {"parts": (first, second), "name": "first+second"})
    teacher, student = _pair(3)
    method = pair.build(student, teacher, options(beta=(1.0, 2.0)), DATA)
    assert {n for n, _ in method.named_children()} == {"student", "teacher", "proj", "second_proj"}
    assert len(method.extra_modules()) == 2
    _, losses = method(torch.randn(2, 3, 32, 32), torch.tensor([0, 1]))
    assert list(losses) == ["ce", "x", "second_x"]


def test_parts_reading_different_features_are_refused():
    pre = type("Pre", (_Part,), {"name": "pre", "preact": True})
    with pytest.raises(UsageError, match="pre reads pre-activation features"):
        check_parts("pre+kd", [pre, METHODS["kd"]])
    check_parts("pre+other", [pre, type("Other", (_Part,), {"name": "other", "preact": True})])  # both: fine
    own = type("Own", (_Part,), {"name": "own", "teacher_forward": lambda self, images: None})
    with pytest.raises(UsageError, match="own runs the teacher its own way"):
        check_parts("own+kd", [own, METHODS["kd"]])


# ------------------------------------------------------------------ through the script
def test_norm_plus_dkd_trains_evaluates_and_names_its_folder(tiny_cifar, tmp_path, teacher_file, capsys):
    teacher = teacher_file("resnet32x4")
    summary = run_student(tiny_cifar, tmp_path, teacher, "resnet32x4", "resnet8x4", "--distill", "norm+DKD",
                          "--no_inference_teacher", "--batch_size", "32")
    run = summary["run"]
    assert os.path.basename(run) == "T_resnet32x4_S_resnet8x4_cifar100_NORM+dkd_r_1.0_a_0.0_b_1.0+8.0_c_2.5_s_8_0"
    assert summary["method"] == "NORM+dkd"
    step = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch 1 ["))
    assert step.split("] ", 1)[1].split()[::2] == ["ce", "norm", "dkd", "lr"]
    best = load_checkpoint(os.path.join(run, "resnet8x4_best.pth"))
    assert best["config"]["beta"] == "1.0+8.0" and best["config"]["distill"] == "NORM+dkd"
    result = evaluate_student.main(["--path", os.path.join(run, "resnet8x4_best.pth"), "--data_root", tiny_cifar,
                                    "--num_workers", "0", "--json"])
    assert result["top1"] == pytest.approx(best["best_acc"])
    # the defaults typed out are the same run: --resume accepts them
    again = run_student(tiny_cifar, tmp_path, teacher, "resnet32x4", "resnet8x4", "--distill", "NORM+dkd",
                        "--no_inference_teacher", "--batch_size", "32", "--resume", "-b", "1+8", "-c", "2.5")
    assert again["run"] == run


def test_dkd_plus_crd_trains_with_the_contrast_loader(tiny_cifar, tmp_path, teacher_file, capsys):
    summary = run_student(tiny_cifar, tmp_path, teacher_file("resnet56"), "resnet56", "resnet20", "--distill",
                          "dkd+crd", "--nce_k", "8", "--no_inference_teacher", "--batch_size", "32", "-b", "2+0.5")
    assert "_dkd+crd_r_1.0_a_0.0_b_2.0+0.5_c_0.0_" in summary["run"]
    step = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch 1 ["))
    assert step.split("] ", 1)[1].split()[::2] == ["ce", "dkd", "crd", "lr"]


@pytest.mark.parametrize("distill,extra,message", [
    ("dkd+DKD", [], "--distill dkd+dkd names dkd twice"),
    ("abound+kd", [], "abound has its own training step"),
    ("kd+fsp", [], "fsp has its own training step"),
    ("NORM_CRD+kd", [], "NORM_CRD is itself a combination"),
    ("NORM+dkd", ["-b", "1+2+3"], "-b 1.0+2.0+3.0 gives 3 weights, but --distill NORM+dkd has 2 parts"),
    ("NORM_CRD", ["-b", "1+2"], "NORM_CRD takes one -b"),
    ("NORM+nope", [], "unknown --distill part 'nope'"),
    ("NORM+crd", ["--logit_standardize"], "--distill NORM+crd has none here"),
    ("NORM+dkd", ["-b", "1+x"], "argument -b/--beta: invalid number >= 0 (or one per part, joined by '+') value"),
])
def test_combinations_that_cannot_work_are_refused_in_one_line(tiny_cifar, tmp_path, teacher_file, capsys, distill,
                                                                extra, message):
    err = fails(train_cifar_student.main, ["--path_t", teacher_file("resnet20"), "--data_root", tiny_cifar,
                                           "--save_root", str(tmp_path), "--model_s", "resnet8", "--distill",
                                           distill, *extra], capsys)
    assert message in err
    assert not (tmp_path / "student_model").exists()


def test_norm_plus_reviewkd_gives_each_part_the_teacher_features_it_reads():
    # NORM matches the teacher's post-activation map, ReviewKD its pre-activation maps: one teacher forward each
    teacher, student = _pair(4)
    method = method_class("NORM+reviewkd").build(student, teacher, options(reviewkd_warmup=20.0), DATA)
    method.set_epoch(11)  # NORM's beta1 0.5; ReviewKD's warm-up (11 - 1) / 20
    method.train()
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 3, 5, 9])
    _, losses = method(x, y)
    assert list(losses) == ["ce", "norm", "reviewkd"]
    with torch.no_grad():
        post, _ = teacher(x, is_feat=True)
        pre, _ = teacher(x, is_feat=True, preact=True)
    assert not torch.equal(post[-2], pre[-2])  # the two kinds differ, so a mix-up would show
    feat_s, z_s = student(x, is_feat=True)
    norm = 2 * ((feat_s[-2] - post[-2].repeat(1, 2, 1, 1)) ** 2).mean()
    torch.testing.assert_close(losses["norm"], 1.0 * 0.5 * norm)
    reviewkd = method.part_methods[1]
    expected = reviewkd.feature_losses(feat_s, pre, z_s, None, None, None)["reviewkd"]
    torch.testing.assert_close(losses["reviewkd"], expected)
    assert losses["reviewkd"] > 0


def test_norm_plus_reviewkd_trains_through_the_script_with_the_inference_teacher(tiny_cifar, tmp_path, teacher_file,
                                                                                  capsys):
    summary = run_student(tiny_cifar, tmp_path, teacher_file("resnet20"), "resnet20", "resnet8", "--distill",
                          "NORM+reviewkd", "-s", "2", "--batch_size", "32")
    assert summary["method"] == "NORM+reviewkd" and "_NORM+reviewkd_" in os.path.basename(summary["run"])
    first_line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch 1 ["))
    assert " norm " in first_line and " reviewkd " in first_line
