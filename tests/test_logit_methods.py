"""DKD, DIST and logit standardization: each loss against its formula written out, gradients, per-pair defaults,
the methods on a real pair, one-epoch runs of the paper's pairs and the refusals."""
import argparse
import math

import pytest
import torch
import torch.nn.functional as F

import train_cifar_student
from distiller_zoo import METHODS
from distiller_zoo.dist import dist_loss
from distiller_zoo.dkd import dkd_loss
from distiller_zoo.logit_standard import ls_kd_loss, standardize
from models import model_dict
from tests.test_bad_input import fails
from tests.test_cifar_scripts import run_student

DATA = {"n_data": 16, "image_size": 32, "in_channels": 3, "schedule_kind": "cifar"}
PAPER_PAIRS = [("resnet32x4", "resnet8x4"), ("wrn_40_2", "wrn_16_2"), ("resnet56", "resnet20"), ("vgg13", "vgg8"),
               ("resnet32x4", "ShuffleV2")]


def options(**kw):
    base = dict(gamma=None, alpha=None, beta=None, ceta=None, kd_T=4.0, epochs=240, model_t="resnet20",
                model_s="resnet8", logit_standardize=None, ls_T=None, ls_weight=None, dkd_alpha=None, dkd_T=None,
                dkd_warmup=None, dist_tau=None, dist_inter=None, dist_intra=None)
    base.update(kw)
    return argparse.Namespace(**base)


# ------------------------------------------------------------------ the formulas, in plain Python
def softmax(row, temperature=1.0):
    exps = [math.exp(v / temperature) for v in row]
    return [e / sum(exps) for e in exps]


def kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)


def dkd_by_hand(z_s, z_t, y, alpha, beta, temperature):
    """TCKD on (p_target, 1 - p_target) and NCKD on the softmax over the other classes, T^2, batch mean."""
    tckd = nckd = 0.0
    for s, t, label in zip(z_s, z_t, y):
        p_s, p_t = softmax(s, temperature), softmax(t, temperature)
        tckd += kl([p_t[label], 1 - p_t[label]], [p_s[label], 1 - p_s[label]])
        others = [k for k in range(len(s)) if k != label]
        nckd += kl(softmax([t[k] for k in others], temperature), softmax([s[k] for k in others], temperature))
    scale = temperature ** 2 / len(y)
    return alpha * tckd * scale + beta * nckd * scale


def pearson(a, b):
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    cov = sum((x - ma) * (v - mb) for x, v in zip(a, b))
    return cov / (math.sqrt(sum((x - ma) ** 2 for x in a)) * math.sqrt(sum((v - mb) ** 2 for v in b)))


def dist_by_hand(z_s, z_t, tau, inter, intra):
    p_s = [softmax(row, tau) for row in z_s]
    p_t = [softmax(row, tau) for row in z_t]
    rows = sum(pearson(a, b) for a, b in zip(p_s, p_t)) / len(p_s)
    columns = [([row[c] for row in p_s], [row[c] for row in p_t]) for c in range(len(p_s[0]))]
    cols = sum(pearson(a, b) for a, b in columns) / len(columns)
    return inter * tau ** 2 * (1 - rows) + intra * tau ** 2 * (1 - cols)


def zscore(row):
    mean = sum(row) / len(row)
    std = math.sqrt(sum((v - mean) ** 2 for v in row) / (len(row) - 1))  # unbiased, as the reference
    return [(v - mean) / (std + 1e-7) for v in row]


Z_S = [[1.0, 2.0, 0.5, -1.0], [0.0, -1.0, 3.0, 0.2], [2.5, 0.1, -0.3, 1.0]]
Z_T = [[2.0, 0.0, 1.0, 0.5], [1.0, 1.0, 0.0, -2.0], [0.3, 3.0, -1.0, 0.0]]
Y = [1, 2, 0]


def tensors(dtype=torch.float64):
    return torch.tensor(Z_S, dtype=dtype), torch.tensor(Z_T, dtype=dtype), torch.tensor(Y)


# ------------------------------------------------------------------ golden values
@pytest.mark.parametrize("alpha,beta,temperature", [(1.0, 8.0, 4.0), (0.5, 2.0, 1.0), (12.0, 24.0, 2.0)])
def test_dkd_loss_equals_its_formula(alpha, beta, temperature):
    z_s, z_t, y = tensors()
    expected = dkd_by_hand(Z_S, Z_T, Y, alpha, beta, temperature)
    assert dkd_loss(z_s, z_t, y, alpha, beta, temperature).item() == pytest.approx(expected, rel=1e-9)
    z_s32, z_t32, _ = tensors(torch.float32)
    assert dkd_loss(z_s32, z_t32, y, alpha, beta, temperature).item() == pytest.approx(expected, rel=1e-5)


def test_dkd_with_standardized_logits_is_dkd_of_the_z_scores():
    z_s, z_t, y = tensors()
    expected = dkd_by_hand([zscore(r) for r in Z_S], [zscore(r) for r in Z_T], Y, 9.0, 18.0, 2.0)
    assert dkd_loss(z_s, z_t, y, 9.0, 18.0, 2.0, logit_stand=True).item() == pytest.approx(expected, rel=1e-7)


@pytest.mark.parametrize("tau,inter,intra", [(4.0, 1.0, 1.0), (1.0, 2.0, 0.5)])
def test_dist_loss_equals_its_formula(tau, inter, intra):
    z_s, z_t, _ = tensors()
    expected = dist_by_hand(Z_S, Z_T, tau, inter, intra)
    # the reference adds eps 1e-8 to the product of the norms: a relative change far below this tolerance here
    assert dist_loss(z_s, z_t, tau, inter, intra).item() == pytest.approx(expected, rel=1e-5)


def test_logit_standardized_kd_equals_its_formula():
    z_s, z_t, _ = tensors()
    s, q = [zscore(r) for r in Z_S], [zscore(r) for r in Z_T]
    expected = sum(kl(softmax(b, 2.0), softmax(a, 2.0)) for a, b in zip(s, q)) / len(s) * 4.0
    assert ls_kd_loss(z_s, z_t, 2.0).item() == pytest.approx(expected, rel=1e-7)
    z = torch.tensor([[1.0, 2.0, 3.0]])
    torch.testing.assert_close(standardize(z), torch.tensor([[-1.0, 0.0, 1.0]]) / (1 + 1e-7))  # std 1 (unbiased)


# ------------------------------------------------------------------ gradients
def test_gradients_match_finite_differences():
    torch.manual_seed(0)
    z_s = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    z_t = torch.randn(3, 5, dtype=torch.float64)
    y = torch.tensor([0, 3, 4])
    assert torch.autograd.gradcheck(lambda z: dkd_loss(z, z_t, y, 1.0, 8.0, 4.0), (z_s,))
    assert torch.autograd.gradcheck(lambda z: dkd_loss(z, z_t, y, 2.0, 3.0, 2.0, True), (z_s,))
    assert torch.autograd.gradcheck(lambda z: dist_loss(z, z_t, 4.0, 1.0, 1.0), (z_s,))
    assert torch.autograd.gradcheck(lambda z: dist_loss(z, z_t, 2.0, 1.0, 1.0, True), (z_s,))
    assert torch.autograd.gradcheck(lambda z: ls_kd_loss(z, z_t, 2.0), (z_s,))


def test_dkd_gradient_by_hand_at_temperature_one():
    # one sample, NCKD only: d/dz_k of KL(q_t || q_s) over the non-target classes is q_s,k - q_t,k (0 at the target)
    z_s = torch.tensor([[0.3, -1.0, 2.0, 0.5]], dtype=torch.float64, requires_grad=True)
    z_t = torch.tensor([[1.0, 0.0, 0.5, -0.5]], dtype=torch.float64)
    dkd_loss(z_s, z_t, torch.tensor([2]), 0.0, 1.0, 1.0).backward()
    q_s, q_t = softmax([0.3, -1.0, 0.5]), softmax([1.0, 0.0, -0.5])
    expected = [q_s[0] - q_t[0], q_s[1] - q_t[1], 0.0, q_s[2] - q_t[2]]
    torch.testing.assert_close(z_s.grad[0], torch.tensor(expected, dtype=torch.float64))


# ------------------------------------------------------------------ defaults, per pair
@pytest.mark.parametrize("model_t,model_s,beta", [("resnet32x4", "resnet8x4", 8.0), ("wrn_40_2", "wrn_16_2", 6.0),
                                                  ("resnet56", "resnet20", 2.0), ("vgg13", "vgg8", 6.0),
                                                  ("resnet32x4", "ShuffleV2", 8.0), ("resnet110", "resnet32", 2.0)])
def test_dkd_defaults_are_mdistillers_per_pair(model_t, model_s, beta):
    weights = METHODS["dkd"].weights(options(model_t=model_t, model_s=model_s))
    assert (weights["gamma"], weights["alpha"], weights["beta"], weights["logit_scale"]) == (1.0, 0.0, beta, 0.0)
    assert METHODS["dkd"].weights(options(model_t=model_t, model_s=model_s, beta=3.0))["beta"] == 3.0


@pytest.mark.parametrize("model_t,model_s,kd,dkd", [
    ("resnet32x4", "resnet8x4", (2.0, 9.0), (2.0, 9.0, 8.0)), ("wrn_40_2", "wrn_16_2", (2.0, 9.0), (2.0, 12.0, 2.0)),
    ("resnet56", "resnet20", (2.0, 9.0), (3.0, 18.0, 2.0)), ("vgg13", "vgg8", (3.0, 9.0), (2.0, 15.0, 2.0)),
    ("resnet32x4", "ShuffleV2", (2.0, 9.0), (2.0, 9.0, 8.0))])
def test_logit_standardization_defaults_are_the_references_per_pair(model_t, model_s, kd, dkd):
    opt = options(model_t=model_t, model_s=model_s, logit_standardize=True)
    weights = METHODS["kd"].weights(opt)
    assert (weights["gamma"], weights["alpha"], weights["ls_T"], weights["logit_standardize"]) == (0.1, kd[1], kd[0],
                                                                                                  True)
    method = METHODS["dkd"].build(model_dict["resnet8"](num_classes=10), model_dict["resnet8"](num_classes=10), opt,
                                  DATA)
    assert (method.ls_T, method.ls_weight, method.beta, method.dkd_alpha) == (*dkd, 1.0)
    given = options(model_t=model_t, model_s=model_s, logit_standardize=True, ls_T=5.0, ls_weight=1.5, alpha=0.7)
    assert (METHODS["kd"].weights(given)["ls_T"], METHODS["kd"].weights(given)["alpha"]) == (5.0, 0.7)


def test_dist_defaults_are_the_cifar_config():
    weights = METHODS["dist"].weights(options())
    assert (weights["gamma"], weights["alpha"], weights["beta"]) == (1.0, 0.0, 2.0)
    method = METHODS["dist"].build(model_dict["resnet8"](num_classes=10), model_dict["resnet8"](num_classes=10),
                                   options(), DATA)
    assert (method.tau, method.inter, method.intra) == (4.0, 1.0, 1.0)


# ------------------------------------------------------------------ the methods on a real pair
def _pair(seed=0):
    torch.manual_seed(seed)
    return model_dict["resnet20"](num_classes=10), model_dict["resnet8"](num_classes=10)


def test_dkd_method_is_ce_plus_warmed_up_dkd():
    teacher, student = _pair()
    method = METHODS["dkd"].build(student, teacher, options(model_t="resnet56", model_s="resnet20"), DATA)
    method.train()
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 3, 5, 9])
    for epoch, factor in ((1, 1 / 20), (10, 0.5), (20, 1.0), (200, 1.0)):
        method.set_epoch(epoch)
        logits, losses = method(x, y)
        with torch.no_grad():
            z_t = teacher(x)
        z_s = student(x)
        assert list(losses) == ["ce", "dkd"]
        torch.testing.assert_close(losses["ce"], F.cross_entropy(z_s, y))
        expected = dkd_by_hand(z_s.double().tolist(), z_t.double().tolist(), y.tolist(), 1.0, 2.0, 4.0)
        assert losses["dkd"].item() == pytest.approx(factor * expected, rel=1e-4)
        assert method.logged_scalars() == {"dkd_warmup": factor}
        torch.testing.assert_close(logits, z_s)
    student.zero_grad()
    losses["dkd"].backward()
    assert student.conv1.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())


def test_dist_and_standardized_kd_methods_on_a_real_pair():
    teacher, student = _pair(1)
    x, y = torch.randn(5, 3, 32, 32), torch.tensor([0, 3, 5, 9, 1])
    dist = METHODS["dist"].build(student, teacher, options(), DATA).train()
    _, losses = dist(x, y)
    with torch.no_grad():
        z_t = teacher(x)
    z_s = student(x)
    assert list(losses) == ["ce", "dist"]
    expected = dist_by_hand(z_s.double().tolist(), z_t.double().tolist(), 4.0, 1.0, 1.0)
    assert losses["dist"].item() == pytest.approx(2 * expected, rel=1e-4)

    kd = METHODS["kd"].build(student, teacher, options(logit_standardize=True), DATA).train()
    _, losses = kd(x, y)
    z_s = student(x)
    s, q = [zscore(r) for r in z_s.double().tolist()], [zscore(r) for r in z_t.double().tolist()]
    expected = sum(kl(softmax(b, 2.0), softmax(a, 2.0)) for a, b in zip(s, q)) / len(s) * 4.0
    torch.testing.assert_close(losses["ce"], 0.1 * F.cross_entropy(z_s, y))   # CE on the raw logits
    assert losses["kd"].item() == pytest.approx(9 * expected, rel=1e-4)


# ------------------------------------------------------------------ one epoch through the script, the paper's pairs
@pytest.mark.parametrize("model_t,model_s", PAPER_PAIRS, ids=[f"{t}->{s}" for t, s in PAPER_PAIRS])
@pytest.mark.parametrize("extra,terms,folder", [
    (["--distill", "DKD"], ["ce", "dkd"], "_dkd_r_1.0_a_0.0_b_{dkd}_c_0.0_"),
    (["--distill", "dist"], ["ce", "dist"], "_dist_r_1.0_a_0.0_b_2.0_c_0.0_"),
    (["--distill", "kd", "--logit_standardize"], ["ce", "kd"], "_kd_LS_r_0.1_a_9.0_b_0.0_c_0.0_"),
], ids=["dkd", "dist", "kd+LS"])
def test_paper_pairs_train_one_epoch(tiny_cifar, tmp_path, teacher_file, capsys, model_t, model_s, extra, terms,
                                     folder):
    summary = run_student(tiny_cifar, tmp_path, teacher_file(model_t), model_t, model_s, "--batch_size", "32",
                          "--no_inference_teacher", *extra)
    dkd_beta = {("wrn_40_2", "wrn_16_2"): 6.0, ("resnet56", "resnet20"): 2.0, ("vgg13", "vgg8"): 6.0}
    assert folder.format(dkd=dkd_beta.get((model_t, model_s), 8.0)) in summary["run"]
    step = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch 1 ["))
    assert [part for part in step.split("] ", 1)[1].split()[::2] if part != "lr"] == terms
    assert 0 <= summary["best_acc"] <= 100


def test_standardized_dkd_and_dist_train_one_epoch(tiny_cifar, tmp_path, teacher_file, capsys):
    summary = run_student(tiny_cifar, tmp_path, teacher_file("resnet56"), "resnet56", "resnet20", "--batch_size",
                          "32", "--no_inference_teacher", "--distill", "dkd", "--logit_standardize")
    assert "_dkd_LS_r_1.0_a_0.0_b_2.0_c_0.0_" in summary["run"]  # DKD+LS res56->res20: beta 2, T 3, w 18
    summary = run_student(tiny_cifar, tmp_path, teacher_file("resnet56"), "resnet56", "resnet20", "--batch_size",
                          "32", "--no_inference_teacher", "--distill", "dist", "--logit_standardize")
    assert "_dist_LS_r_1.0_a_0.0_b_9.0_c_0.0_" in summary["run"]


# ------------------------------------------------------------------ refusals
@pytest.mark.parametrize("argv,message", [
    (["--distill", "NORM", "--logit_standardize"], "--logit_standardize standardizes the logits of KD-style terms"),
    (["--distill", "hint", "--logit_standardize"], "--distill hint has none here"),
    (["--distill", "dkd", "-b", "1+2"], "-b 1.0+2.0 gives one weight per part of a combination, but --distill dkd "
                                        "has one part"),
    (["--distill", "kd", "--ls_T", "3"], "--ls_T sets --logit_standardize's temperature; add --logit_standardize"),
    (["--distill", "dkd", "--dkd_warmup", "-1"], "argument --dkd_warmup: invalid integer >= 0 value: '-1'"),
    (["--distill", "dist", "--dist_tau", "0"], "argument --dist_tau: invalid number > 0 value: '0'"),
])
def test_refusals_are_one_line(tiny_cifar, tmp_path, teacher_file, capsys, argv, message):
    err = fails(train_cifar_student.main, ["--path_t", teacher_file("resnet20"), "--data_root", tiny_cifar,
                                           "--save_root", str(tmp_path), "--model_s", "resnet8", *argv], capsys)
    assert message in err
    assert not (tmp_path / "student_model").exists()


def test_dkd_imagenet_defaults_are_mdistillers_imagenet_configs():
    for (model_t, model_s), beta in {("resnet34", "resnet18S"): 0.5, ("resnet50", "MobileNet"): 2.0}.items():
        opt = options(dataset="imagenet", model_t=model_t, model_s=model_s)
        assert METHODS["dkd"].weights(opt)["beta"] == beta
        method = METHODS["dkd"].build(model_dict["resnet8"](num_classes=10), model_dict["resnet8"](num_classes=10),
                                      opt, DATA)
        assert (method.dkd_T, method.warmup, method.dkd_alpha, method.warmup_factor()) == (1.0, 1, 1.0, 1.0)
    cifar = METHODS["dkd"].build(model_dict["resnet8"](num_classes=10), model_dict["resnet8"](num_classes=10),
                                 options(dataset="cifar100"), DATA)
    assert (cifar.dkd_T, cifar.warmup, cifar.beta) == (4.0, 20, 8.0)
