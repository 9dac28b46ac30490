"""RepDistiller's baselines: each loss against hand arithmetic, and each method trained a few steps on a real pair."""
import argparse
import math

import pytest
import torch
from torch import nn

from distiller_zoo import METHODS
from distiller_zoo.abound import ab_loss
from distiller_zoo.attention import at_loss
from distiller_zoo.correlation import correlation_loss
from distiller_zoo.factor import factor_loss
from distiller_zoo.fsp import fsp_loss
from distiller_zoo.hint import ConvReg, hint_loss
from distiller_zoo.kdsvd import kdsvd_loss
from distiller_zoo.nst import nst_loss
from distiller_zoo.pkt import pkt_loss
from distiller_zoo.rkd import rkd_loss
from distiller_zoo.similarity import similarity_loss
from distiller_zoo.vid import VIDRegressor
from models import model_dict

DATA = {"n_data": 20, "image_size": 32, "in_channels": 3, "schedule_kind": "cifar"}


def make_opt(**overrides):
    opt = dict(gamma=None, alpha=None, beta=None, ceta=None, kd_T=4.0, epochs=2, hint_layer=2, feat_dim=16,
               init_epochs=30, learning_rate=0.05, model_s="resnet8")
    opt.update(overrides)
    return argparse.Namespace(**opt)


def t(values, shape):
    return torch.tensor(values, dtype=torch.float32).view(*shape)


# ------------------------------------------------------------------ the losses by hand
def test_hint_loss_is_mean_squared_error():
    assert hint_loss(t([1.0, 2.0], (1, 2, 1, 1)), t([0.0, 4.0], (1, 2, 1, 1))).item() == pytest.approx((1 + 4) / 2)


def test_at_loss_by_hand():
    f_s = t([1.0, 0.0, 1.0, 2.0], (1, 2, 1, 2))  # channel means of squares: [1, 2] -> [1, 2] / sqrt(5)
    f_t = t([2.0, 0.0], (1, 1, 1, 2))            # [4, 0] -> [1, 0]
    expected = ((1 / math.sqrt(5) - 1) ** 2 + (2 / math.sqrt(5)) ** 2) / 2
    assert at_loss(f_s, f_t).item() == pytest.approx(expected)


def test_at_loss_average_pools_the_larger_map_before_squaring():
    a = [[1.0, 2.0], [3.0, 4.0]]
    f_t = torch.zeros(1, 1, 4, 4)
    for i in range(2):
        for j in range(2):
            f_t[0, 0, 2 * i:2 * i + 2, 2 * j + 1] = 2 * a[i][j]  # each 2x2 block [[0, 2a], [0, 2a]] averages to a
    f_s = torch.ones(1, 1, 2, 2)                                 # attention 1/2 everywhere
    expected = sum((0.5 - k * k / math.sqrt(1 + 16 + 81 + 256)) ** 2 for k in (1, 2, 3, 4)) / 4
    assert at_loss(f_s, f_t).item() == pytest.approx(expected)
    assert at_loss(f_t, f_s).item() == pytest.approx(expected)


def test_similarity_loss_by_hand():
    f_s = t([1.0, 0.0, 0.0, 1.0], (2, 2, 1, 1))  # Gram I, rows already unit
    f_t = t([1.0, 0.0, 1.0, 0.0], (2, 2, 1, 1))  # Gram all ones -> rows [1, 1] / sqrt(2)
    # ||G_t - G_s||^2 = 2 * ((1/sqrt2 - 1)^2 + 1/2), divided by B^2 = 4
    expected = 2 * ((1 / math.sqrt(2) - 1) ** 2 + 0.5) / 4
    assert similarity_loss(f_s, f_t).item() == pytest.approx(expected)
    assert expected == pytest.approx(1 - math.sqrt(2) / 2)


def test_correlation_loss_by_hand():
    e_s = t([1.0, -2.0, 3.0, 0.0, -1.0, 1.0], (3, 2))
    e_t = torch.zeros(3, 2)
    # |delta| rows [1,2], [3,0], [1,1]: consecutive dot products 3 and 3
    assert correlation_loss(e_s, e_t).item() == pytest.approx((1 * 3 + 2 * 0 + 3 * 1 + 0 * 1) / 2)


def test_vid_regressor_by_hand():
    reg = VIDRegressor(1, 1, 1)
    with torch.no_grad():
        for conv in reg.mean:
            if isinstance(conv, nn.Conv2d):
                conv.weight.fill_(1.0)
    assert reg.variance().item() == pytest.approx(5.0, rel=1e-6)   # the initial variance
    f_s = torch.full((1, 1, 2, 2), 2.0)                              # pooled to 1x1: 2; identity regressor
    f_t = torch.zeros(1, 1, 1, 1)
    assert reg(f_s, f_t).item() == pytest.approx(0.5 * ((2 - 0) ** 2 / 5 + math.log(5)), rel=1e-5)


def _smooth_l1(x):
    return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5


def test_rkd_loss_by_hand():
    teacher = t([0.0, 0.0, 1.0, 0.0, 0.0, 1.0], (3, 2))   # right isosceles triangle
    student = t([0.0, 0.0, 2.0, 0.0, 0.0, 1.0], (3, 2))
    # distances: teacher d01 = d02 = 1, d12 = sqrt2; student d01 = 2, d02 = 1, d12 = sqrt5 (each twice, diagonal 0)
    mean_t = (1 + 1 + math.sqrt(2)) / 3
    mean_s = (2 + 1 + math.sqrt(5)) / 3
    diffs = [2 / mean_s - 1 / mean_t, 1 / mean_s - 1 / mean_t, math.sqrt(5) / mean_s - math.sqrt(2) / mean_t]
    loss_d = 2 * sum(_smooth_l1(d) for d in diffs) / 9
    # angles: per vertex, two entries of 1 (same direction, equal in both) and two cross cosines
    cos_t = [0.0, 1 / math.sqrt(2), 1 / math.sqrt(2)]
    cos_s = [0.0, 2 / math.sqrt(5), 1 / math.sqrt(5)]
    loss_a = 2 * sum(_smooth_l1(s - q) for s, q in zip(cos_s, cos_t)) / 27
    assert rkd_loss(student, teacher).item() == pytest.approx(25 * loss_d + 50 * loss_a, rel=1e-5)
    assert rkd_loss(3 * teacher + 1, teacher).item() == pytest.approx(0.0, abs=1e-6)  # similarity invariant


def test_pkt_loss_by_hand():
    f_s = t([1.0, 0.0, 0.0, 1.0], (2, 2))  # cosines I -> (c+1)/2 rows [1, .5] -> [2/3, 1/3]
    f_t = t([1.0, 0.0, 1.0, 0.0], (2, 2))  # cosines all 1 -> rows [.5, .5]
    row = 0.5 * math.log(0.5 / (2 / 3)) + 0.5 * math.log(0.5 / (1 / 3))
    assert pkt_loss(f_s, f_t).item() == pytest.approx(2 * row / 4, abs=1e-6)


def test_ab_loss_by_hand():
    s0 = t([-2.0, -0.5, 0.5, 2.0], (1, 4, 1, 1))
    t0 = t([-1.0, -1.0, 1.0, 1.0], (1, 4, 1, 1))
    # -2 (t<=0): not above -m -> 0; -0.5 (t<=0): (−0.5+1)^2; 0.5 (t>0): (0.5−1)^2; 2 (t>0): above m -> 0
    layer0 = 0.25 + 0.25
    s1 = t([0.0, 0.0], (1, 2, 1, 1))
    t1 = t([1.0, 0.0], (1, 2, 1, 1))
    layer1 = (0 - 1) ** 2 + (0 + 1) ** 2
    # weights 2^(i-n+1) with n = 2: 1/2, 1; batch 1; times 3/1000
    assert ab_loss([s0, s1], [t0, t1]).item() == pytest.approx((0.5 * layer0 + 1 * layer1) * 3 / 1000)


def test_factor_loss_by_hand():
    f_s = t([1.0, 1.0], (1, 1, 1, 2))  # [1, 1] / sqrt2
    f_t = t([2.0, 0.0], (1, 1, 1, 2))  # [1, 0]
    expected = (abs(1 / math.sqrt(2) - 1) + 1 / math.sqrt(2)) / 2
    assert factor_loss(f_s, f_t).item() == pytest.approx(expected)
    assert expected == pytest.approx(0.5)


def test_fsp_loss_by_hand():
    t0 = t([1.0, 2.0], (1, 1, 1, 2))
    t1 = t([1.0, 0.0, 0.0, 3.0], (1, 2, 1, 2))
    s0 = t([1.0, 1.0], (1, 1, 1, 2))
    s1 = torch.ones(1, 2, 1, 2)
    # teacher G[c1, c0] = mean(t1[c1] * t0): (1*1 + 0*2)/2 = 0.5, (0*1 + 3*2)/2 = 3; student: 1, 1
    assert fsp_loss([s0, s1], [t0, t1]).item() == pytest.approx(((0.5 - 1) ** 2 + (3 - 1) ** 2) / 2)


def test_fsp_pools_the_larger_map():
    bottom = t([1.0, 2.0, 3.0, 4.0], (1, 1, 2, 2))  # average 2.5
    top = t([2.0], (1, 1, 1, 1))
    zero = [torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 1, 1)]
    assert fsp_loss([bottom, top], zero).item() == pytest.approx((2.5 * 2) ** 2)


def test_nst_loss_by_hand():
    f_s = t([1.0, 0.0, 0.0, 1.0], (1, 2, 1, 2))  # channels e1, e2
    f_t = t([1.0, 1.0], (1, 1, 1, 2))            # (1, 1) / sqrt2
    # k(t,t) = 1; k(s,s) = [[1,0],[0,1]] -> mean 1/2; k(s,t) = (1/sqrt2)^2 = 1/2 each
    assert nst_loss(f_s, f_t).item() == pytest.approx(1 + 0.5 - 2 * 0.5)


def test_kdsvd_loss_by_hand():
    # one position, two channels: the top right singular vector is the channel vector itself (up to sign)
    teacher = [t([3.0, 4.0], (1, 2, 1, 1)), t([3.0, 4.0], (1, 2, 1, 1))]   # v = ±(0.6, 0.8) at both layers
    student = [t([1.0, 0.0], (1, 2, 1, 1)), t([0.0, 1.0], (1, 2, 1, 1))]   # aligned: ±(1, 0), ±(0, 1)
    # student relations exp(-(v2_c - v1_c')^2 / 8): [[e^-1/8, 1], [1, e^-1/8]]; teacher [[1, e^-.04/8], [.., 1]]
    expected = 2 * (math.exp(-1 / 8) - 1) ** 2 + 2 * (1 - math.exp(-0.04 / 8)) ** 2
    assert kdsvd_loss(student, teacher).item() == pytest.approx(expected, rel=1e-5)
    assert kdsvd_loss(teacher, teacher).item() == pytest.approx(0.0, abs=1e-7)


def test_kdsvd_picks_the_best_aligned_of_the_student_vectors():
    teacher = [t([3.0, 4.0], (1, 2, 1, 1))] * 2
    # student map with positions (3, 0) and (0, 1): top singular vector e1, second e2; the teacher's
    # (0.6, 0.8) is closer to e2, so e2 is the aligned vector at both layers and the relations are
    # [[1, e^-1/8], [e^-1/8, 1]] (against the teacher's [[1, e^-.005], [e^-.005, 1]])
    student_map = torch.tensor([[3.0, 0.0], [0.0, 1.0]]).t().reshape(1, 2, 1, 2)
    expected = 2 * (math.exp(-1 / 8) - math.exp(-0.04 / 8)) ** 2
    assert kdsvd_loss([student_map, student_map], teacher).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("s_shape,t_shape,conv", [
    ((1, 4, 8, 8), (1, 6, 4, 4), nn.Conv2d),           # H_s = 2 H_t: stride-2 conv
    ((1, 4, 4, 4), (1, 6, 8, 8), nn.ConvTranspose2d),  # 2 H_s = H_t: transposed conv
    ((1, 4, 6, 6), (1, 6, 4, 4), nn.Conv2d),           # H_s > H_t: unpadded 3x3 conv
    ((1, 4, 4, 4), (1, 6, 4, 4), nn.Conv2d),           # equal: 1x1 conv
])
def test_convreg_reaches_the_teacher_shape(s_shape, t_shape, conv):
    reg = ConvReg(s_shape, t_shape)
    assert type(reg.conv) is conv
    out = reg(torch.randn(2, *s_shape[1:]))
    assert out.shape == (2, *t_shape[1:]) and (out >= 0).all()
    assert (ConvReg(s_shape, t_shape, relu=False)(torch.randn(2, *s_shape[1:])) < 0).any()


def test_convreg_rejects_a_much_smaller_student_map():
    with pytest.raises(ValueError, match="cannot be regressed"):
        ConvReg((1, 4, 2, 2), (1, 6, 8, 8))


# ------------------------------------------------------------------ weights and flags
SCRIPT_WEIGHTS = {"hint": 100, "attention": 1000, "similarity": 3000, "correlation": 0.02, "vid": 1, "rkd": 1,
                  "pkt": 30000, "abound": 1, "factor": 200, "fsp": 50, "nst": 50, "kdsvd": 1}


@pytest.mark.parametrize("name", sorted(SCRIPT_WEIGHTS))
def test_defaults_are_repdistillers_script_weights(name):
    cls = METHODS[name]
    assert cls.defaults == {"gamma": 1.0, "alpha": 0.0, "beta": SCRIPT_WEIGHTS[name]}
    assert cls.default_logit_scale == 0
    assert cls.has_init_stage == (name in ("abound", "factor", "fsp"))
    assert cls.preact == (name == "abound")
    assert cls.__doc__ and cls.__module__.endswith("." + name)


def test_flags_and_their_defaults():
    parser = argparse.ArgumentParser()
    for name in SCRIPT_WEIGHTS:
        METHODS[name].add_arguments(parser)
    opt = parser.parse_args([])
    assert (opt.hint_layer, opt.init_epochs, opt.feat_dim) == (2, 30, 128)


def test_feature_losses_are_weighted_by_beta():
    dummy = nn.Linear(1, 1)
    f_s = t([1.0, 0.0, 0.0, 1.0], (2, 2, 1, 1))
    f_t = t([1.0, 0.0, 1.0, 0.0], (2, 2, 1, 1))
    method = METHODS["similarity"](nn.Linear(1, 1), dummy, **METHODS["similarity"].weights(make_opt()))
    losses = method.feature_losses([f_s, f_s, None], [f_t, f_t, None], None, None, None, None)
    assert losses["similarity"].item() == pytest.approx(3000 * (1 - math.sqrt(2) / 2))


# ------------------------------------------------------------------ methods on real pairs
PAIRS = {"hint": ("resnet8x4", "resnet8"), "attention": ("resnet8x4", "resnet8"),
         "similarity": ("resnet8x4", "resnet8"), "correlation": ("resnet8x4", "resnet8"),
         "vid": ("resnet8x4", "resnet8"), "rkd": ("resnet8x4", "resnet8"), "pkt": ("resnet8x4", "resnet8"),
         "abound": ("resnet8x4", "resnet8"), "factor": ("resnet8x4", "resnet8"), "fsp": ("resnet20", "resnet8"),
         "nst": ("resnet8x4", "resnet8"), "kdsvd": ("resnet20", "resnet8")}
MAIN_MODULES = {"hint": ["regressor"], "correlation": ["embed_s", "embed_t"], "vid": ["regressors"],
                "factor": ["translator"]}  # the method's own modules trained in the main stage
INIT_ONLY_MODULES = {"abound": ["connectors"], "factor": ["paraphraser"]}  # trained in the init stage only


def _teacher_snapshot(teacher):
    return {k: v.detach().clone() for k, v in teacher.state_dict().items()}


def _grads_present(module):
    """Every parameter has a finite gradient, not all of them zero (a conv bias before a BN gets ~0)."""
    grads = [p.grad for p in module.parameters()]
    return (bool(grads) and all(g is not None and torch.isfinite(g).all() for g in grads)
            and sum(g.abs().sum() for g in grads) > 0)


def _step(method, optimizer, images, targets):
    optimizer.zero_grad(set_to_none=True)
    logits, losses = method(images, targets, index=torch.arange(len(targets)))
    assert logits.shape == (len(targets), 10)
    assert all(torch.isfinite(v) for v in losses.values()), losses
    sum(losses.values()).backward()
    optimizer.step()
    return losses


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_method_trains_and_leaves_the_teacher_untouched(name):
    torch.manual_seed(0)
    t_name, s_name = PAIRS[name]
    teacher = model_dict[t_name](num_classes=10)
    student = model_dict[s_name](num_classes=10)
    teacher.train()  # whatever mode it arrives in, the method must keep it in eval mode
    before = _teacher_snapshot(teacher)
    method = METHODS[name].build(student, teacher, make_opt(), DATA)
    main_optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    images, targets = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    method.train()
    assert not teacher.training

    if method.has_init_stage:
        method.set_stage("init")
        method.train()
        init_params = method.init_stage_parameters()
        init_optimizer = torch.optim.SGD(init_params, lr=method.init_learning_rate(make_opt()), momentum=0.9)
        assert all(p.requires_grad for p in init_params)
        assert not teacher.training and not student.training
        for _ in range(2):
            losses = _step(method, init_optimizer, images, targets)
            assert list(losses) == ["init"]
        init_ids = {id(p) for p in init_params}
        with_grad = {id(p) for p in method.parameters() if p.grad is not None}
        assert with_grad and with_grad <= init_ids  # only the init modules receive gradients
        for module in method.init_modules():
            assert module.training
        for module_name in INIT_ONLY_MODULES.get(name, []):
            assert _grads_present(getattr(method, module_name)), module_name
        if name != "factor":
            assert _grads_present(student.get_feat_modules())
        method.zero_grad(set_to_none=True)
        method.set_stage("main")
        method.train()
        assert student.training and not teacher.training

    student_before = {k: v.detach().clone() for k, v in student.state_dict().items()}
    for _ in range(2):
        losses = _step(method, main_optimizer, images, targets)
    assert "ce" in losses and not teacher.training
    feature_terms = [k for k in losses if k != "ce"]
    if name in ("abound", "fsp"):
        assert feature_terms == []  # RepDistiller's main stage: loss_kd = 0
    else:
        assert feature_terms == [name]
        student.zero_grad(set_to_none=True)
        _, losses = method(images, targets)
        losses[name].backward()  # the feature term alone reaches the student's stem
        assert student.conv1.weight.grad is not None and student.conv1.weight.grad.abs().sum() > 0
    assert any(not torch.equal(v, student_before[k]) for k, v in student.state_dict().items())

    for module_name in MAIN_MODULES.get(name, []):
        assert _grads_present(getattr(method, module_name)), module_name
    for module_name in INIT_ONLY_MODULES.get(name, []):  # frozen in the main stage
        assert all(p.grad is None for p in getattr(method, module_name).parameters()), module_name

    after = teacher.state_dict()
    assert before.keys() == after.keys()
    for key, value in before.items():
        assert torch.equal(value, after[key]), key
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())


def test_init_stage_modes_and_parameters():
    torch.manual_seed(0)
    opt = make_opt()
    ab = METHODS["abound"].build(model_dict["resnet8"](num_classes=10), model_dict["resnet8x4"](num_classes=10),
                                 opt, DATA)
    feat_ids = {id(p) for p in ab.student.get_feat_modules().parameters()}
    connector_ids = {id(p) for p in ab.connectors.parameters()}
    assert all(isinstance(c, ConvReg) and not c.relu for c in ab.connectors)
    assert not any(p.requires_grad for p in ab.connectors.parameters())  # main stage: frozen
    ab.set_stage("init")
    assert {id(p) for p in ab.init_stage_parameters()} == feat_ids | connector_ids
    ab.train()
    assert ab.connectors.training and ab.student.layer1.training and not ab.student.fc.training
    assert not ab.student.training and not ab.teacher.training
    assert ab.init_learning_rate(opt) == opt.learning_rate
    ab.set_stage("main")
    assert not ab.connectors.training and ab.student.training

    ft = METHODS["factor"].build(model_dict["resnet8"](num_classes=10), model_dict["resnet8x4"](num_classes=10),
                                 opt, DATA)
    assert not any(p.requires_grad for p in ft.paraphraser.parameters())  # kept out of the main optimizer
    assert all(p.requires_grad for p in ft.translator.parameters())
    ft.train()
    assert not ft.paraphraser.training and ft.translator.training
    ft.set_stage("init")
    assert {id(p) for p in ft.init_stage_parameters()} == {id(p) for p in ft.paraphraser.parameters()}
    assert all(p.requires_grad for p in ft.paraphraser.parameters())
    assert ft.paraphraser.training and not ft.translator.training and not ft.student.training
    assert ft.init_learning_rate(opt) == 0.01                              # resnet student
    assert ft.init_learning_rate(make_opt(model_s="vgg8")) == 0.05         # others: the main rate
    ft.set_stage("main")
    assert not any(p.requires_grad for p in ft.paraphraser.parameters()) and not ft.paraphraser.training
    # paraphraser of k = 0.5: 256 -> 128 channels; translator 64 -> 128
    assert ft.paraphraser.encoder[-2].out_channels == 128 and ft.translator.encoder[-3].out_channels == 128

    fsp = METHODS["fsp"].build(model_dict["resnet8"](num_classes=10), model_dict["resnet20"](num_classes=10),
                               opt, DATA)
    assert {id(p) for p in fsp.init_stage_parameters()} == {id(p) for p in fsp.student.get_feat_modules().parameters()}
    with pytest.raises(ValueError):
        fsp.set_stage("warmup")


def test_fsp_rejects_unequal_widths():
    with pytest.raises(ValueError, match=r"stage 0 \(student 16, teacher 32\)"):
        METHODS["fsp"].build(model_dict["resnet8"](num_classes=10), model_dict["resnet32x4"](num_classes=10),
                             make_opt(), DATA)


def test_kdsvd_rejects_unequal_widths():
    with pytest.raises(ValueError, match="widths"):
        METHODS["kdsvd"].build(model_dict["resnet8"](num_classes=10), model_dict["resnet8x4"](num_classes=10),
                               make_opt(), DATA)


def test_hint_layer_must_be_a_spatial_map():
    with pytest.raises(ValueError, match="spatial map"):
        METHODS["hint"].build(model_dict["resnet8"](num_classes=10), model_dict["resnet20"](num_classes=10),
                              make_opt(hint_layer=4), DATA)
