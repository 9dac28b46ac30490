"""ReviewKD and OFD: losses against arithmetic written out here, gradients, the reference's per-pair settings, the
teacher kept frozen, one-epoch runs of the student script on every paper pair, and the pairs they refuse."""
import argparse
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distiller_zoo import METHODS
from distiller_zoo.ofd import bn_margin, connector, ofd_loss, partial_l2
from distiller_zoo.reviewkd import ReviewFusion, hcl_loss, review_warmup_factor
from helper.errors import UsageError
from helper.teachers.inference import install_inference_teacher
from models import model_dict
from tests.test_cifar_scripts import run_student

DATA = {"n_data": 20, "image_size": 32, "in_channels": 3}
PAPER_PAIRS = [("resnet32x4", "resnet8x4"), ("wrn_40_2", "wrn_16_2"), ("resnet56", "resnet20"), ("vgg13", "vgg8"),
               ("resnet32x4", "ShuffleV2")]


def make_opt(model_t, model_s, **overrides):
    opt = dict(gamma=None, alpha=None, beta=None, ceta=None, kd_T=4.0, model_t=model_t, model_s=model_s,
               reviewkd_warmup=20.0)
    opt.update(overrides)
    return argparse.Namespace(**opt)


def randomize(module, seed):
    """Every parameter (BN affine included) to seeded random values, so that no term is trivially zero or one."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)


# ------------------------------------------------------------------ plain-op helpers for the expected values
def bn_batch(x, bn):
    """BatchNorm in train mode by hand: batch mean and biased variance over N, H, W."""
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    var = ((x - mean) ** 2).mean(dim=(0, 2, 3), keepdim=True)
    return (x - mean) / torch.sqrt(var + bn.eps) * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)


def conv1x1(x, weight, bias=None):
    y = torch.einsum("nchw,oc->nohw", x, weight[:, :, 0, 0])
    return y if bias is None else y + bias.view(1, -1, 1, 1)


def conv3x3_same(x, weight):
    """3x3 convolution with zero padding 1, as a sum of nine shifted 1x1 products."""
    padded = torch.zeros(x.shape[0], x.shape[1], x.shape[2] + 2, x.shape[3] + 2, dtype=x.dtype)
    padded[:, :, 1:-1, 1:-1] = x
    h, w = x.shape[-2:]
    return sum(torch.einsum("nchw,oc->nohw", padded[:, :, i:i + h, j:j + w], weight[:, :, i, j])
               for i in range(3) for j in range(3))


def mse(a, b):
    return ((a - b) ** 2).mean()


def block_mean(x, size):
    """Average pooling of an (N, C, H, W) map to size x size blocks (H divisible by size)."""
    n, c, h, w = x.shape
    return x.view(n, c, size, h // size, size, w // size).mean(dim=(3, 5))


# ------------------------------------------------------------------ ReviewKD: HCL and the whole loss by hand
def test_hcl_loss_by_hand():
    f_s = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2)
    f_t = torch.zeros(1, 1, 2, 2)
    # 2x2: the 4x4 and 2x2 pools are skipped (not smaller than the map); 1x1 pool: mean 2.5 -> 6.25 at weight 1/2
    level_2x2 = (7.5 + 0.5 * 6.25) / 1.5
    level_1x1 = (3.0 - 1.0) ** 2  # no pool is smaller than 1x1
    loss = hcl_loss([f_s, torch.full((1, 1, 1, 1), 3.0)], [f_t, torch.ones(1, 1, 1, 1)])
    assert loss.item() == pytest.approx(level_2x2 + level_1x1)


@pytest.mark.parametrize("size,weights", [(8, {4: 1 / 2, 2: 1 / 4, 1: 1 / 8}), (4, {2: 1 / 2, 1: 1 / 4})])
def test_hcl_weights_halve_in_the_order_the_pools_are_used(size, weights):
    g = torch.Generator().manual_seed(0)
    f_s, f_t = torch.randn(2, 3, size, size, generator=g), torch.randn(2, 3, size, size, generator=g)
    expected = mse(f_s, f_t) + sum(w * mse(block_mean(f_s, k), block_mean(f_t, k)) for k, w in weights.items())
    expected = expected / (1 + sum(weights.values()))
    assert hcl_loss([f_s], [f_t]).item() == pytest.approx(expected.item(), rel=1e-6)


def test_reviewkd_loss_by_hand():
    """Two levels: a pooled 3-vector (deepest) and a 2x2 map fused with it and resized to the teacher's 4x4."""
    g = torch.Generator().manual_seed(1)
    s_map, s_vec = torch.randn(3, 2, 2, 2, generator=g), torch.randn(3, 3, generator=g)
    t_map, t_vec = torch.randn(3, 2, 4, 4, generator=g), torch.randn(3, 2, generator=g)
    fusion = ReviewFusion([2, 3], [2, 2], [(4, 4), (1, 1)])
    randomize(fusion, 2)
    method = METHODS["reviewkd"](nn.Linear(1, 1), nn.Linear(1, 1), fusion, warmup=20.0, gamma=1.0, alpha=0.0,
                                 beta=5.0)
    method.train()
    method.set_epoch(11)  # (11 - 1) / 20: half the weight
    dummy = torch.zeros(1)
    loss = method.feature_losses([dummy, s_map, s_vec], [dummy, t_map, t_vec], None, None, None, None)["reviewkd"]

    deep, shallow = fusion.abfs  # deepest first; mid channels = min(512, 3) = 3
    with torch.no_grad():
        # deepest level: conv1x1+BN on the 1x1 map, no fusion, conv3x3+BN (only the kernel's centre sees a 1x1 map)
        x_deep = bn_batch(conv1x1(s_vec.view(3, 3, 1, 1), deep.conv1[0].weight), deep.conv1[1])
        out_deep = bn_batch(conv3x3_same(x_deep, deep.conv2[0].weight), deep.conv2[1])
        # shallow level: conv1x1+BN, the 1x1 residual repeated to 2x2, sigmoid attention over both, mix
        x = bn_batch(conv1x1(s_map, shallow.conv1[0].weight), shallow.conv1[1])
        residual = x_deep.expand(-1, -1, 2, 2)
        att = torch.sigmoid(conv1x1(torch.cat([x, residual], 1), shallow.att_conv[0].weight,
                                    shallow.att_conv[0].bias))
        fused = x * att[:, :1] + residual * att[:, 1:]
        fused = fused.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)  # nearest 2x2 -> 4x4
        out_shallow = bn_batch(conv3x3_same(fused, shallow.conv2[0].weight), shallow.conv2[1])
        # HCL: 4x4 level pools to 2x2 (weight 1/2) and 1x1 (1/4); the 1x1 level is a plain MSE
        hcl_shallow = (mse(out_shallow, t_map) + 0.5 * mse(block_mean(out_shallow, 2), block_mean(t_map, 2))
                       + 0.25 * mse(block_mean(out_shallow, 1), block_mean(t_map, 1))) / 1.75
        hcl_deep = mse(out_deep, t_vec.view(3, 2, 1, 1))
    assert loss.item() == pytest.approx((5.0 * 0.5 * (hcl_shallow + hcl_deep)).item(), rel=1e-5)


def test_reviewkd_gradient_matches_finite_differences():
    g = torch.Generator().manual_seed(3)
    fusion = ReviewFusion([2, 3], [2, 2], [(4, 4), (1, 1)]).double()
    randomize(fusion, 4)
    fusion.train()
    t_map, t_vec = torch.randn(3, 2, 4, 4, generator=g).double(), torch.randn(3, 2, 1, 1, generator=g).double()
    s_map = torch.randn(3, 2, 2, 2, generator=g).double().requires_grad_()
    s_vec = torch.randn(3, 3, 1, 1, generator=g).double().requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: hcl_loss(fusion([a, b]), [t_map, t_vec]), (s_map, s_vec))


def test_reviewkd_warmup_counts_from_the_first_epoch_as_zero():
    # the reference's min(e / 20, 1) with its 0-based e; our epochs start at 1
    assert [review_warmup_factor(e, 20) for e in (1, 2, 11, 21, 240)] == [0.0, 0.05, 0.5, 1.0, 1.0]
    assert review_warmup_factor(1, 0) == 1.0


# ------------------------------------------------------------------ OFD: margins and partial L2 by hand
def expected_margin(w, b):
    s = abs(w)
    mass = 0.5 * (1 + math.erf(-b / s / math.sqrt(2)))
    if mass <= 1e-3:
        return -3 * s
    return -s * math.exp(-0.5 * (b / s) ** 2) / math.sqrt(2 * math.pi) / mass + b


def test_bn_margin_is_the_mean_below_zero_of_the_bn_output():
    weight = torch.tensor([1.0, -1.0, 2.0, 0.5, 1.0, 0.0, 0.0])
    bias = torch.tensor([0.0, 0.0, -1.0, 0.3, 4.0, -0.5, 0.5])
    margins = bn_margin(weight, bias)
    assert margins.dtype == torch.float32
    assert margins[0].item() == pytest.approx(-math.sqrt(2 / math.pi), rel=1e-6)  # half-normal mean
    assert margins[1].item() == pytest.approx(-math.sqrt(2 / math.pi), rel=1e-6)  # |gamma|
    for i in (2, 3):
        assert margins[i].item() == pytest.approx(expected_margin(weight[i].item(), bias[i].item()), rel=1e-6)
    assert margins[4].item() == -3.0                         # Phi(-4) < 1e-3: -3|gamma|
    assert margins[5:].tolist() == [-0.5, 0.0]               # gamma 0: the limit min(beta, 0)
    # by sampling: the mean of the negative part of N(-1, 2^2)
    samples = torch.randn(2_000_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 - 1
    assert margins[2].item() == pytest.approx(samples[samples < 0].mean().item(), abs=5e-3)


def test_partial_l2_by_hand():
    margin = torch.tensor([-1.0])
    t = torch.tensor([[-2.0, -0.5, 1.0, -2.0], [-0.5, 0.5, -3.0, -1.0]]).view(2, 1, 1, 4)
    s = torch.tensor([[0.5, 0.0, 0.5, -3.0], [-0.8, 0.5, -1.0, 2.0]]).view(2, 1, 1, 4)
    # sample 0: t<=m, s>m: (0.5+1)^2 | m<t<=0, s>t: 0.5^2 | t>0: (0.5-1)^2 | t<=m, s<=m: 0
    # sample 1: m<t<=0 but s<t: 0 | t>0: 0 | t<=m, s=m: 0 (not above) | t=m, s>m: (2+1)^2
    expected = (2.25 + 0.25 + 0.25 + 0.0 + 0.0 + 0.0 + 0.0 + 9.0) / 2
    assert partial_l2(s, t, margin).item() == pytest.approx(expected)


def test_ofd_loss_by_hand():
    """Two stages: the first weighs 1/2, the second 1; a 2x2 teacher map is average-pooled to the student's 1x1."""
    g = torch.Generator().manual_seed(5)
    student = [torch.randn(3, 2, 1, 1, generator=g), torch.randn(3, 2, 2, 2, generator=g)]
    teacher = [torch.randn(3, 2, 2, 2, generator=g), torch.randn(3, 2, 2, 2, generator=g)]
    margins = [torch.tensor([-0.5, -1.0]), torch.tensor([-0.2, -2.0])]

    def by_hand(s, t, m):
        total = 0.0
        for value_s, value_t, mm in zip(s.flatten().tolist(), t.flatten().tolist(),
                                        m.view(1, -1, 1, 1).expand_as(s).flatten().tolist()):
            if value_t > 0:
                total += (value_s - value_t) ** 2
            elif value_t > mm:
                total += (value_s - value_t) ** 2 if value_s > value_t else 0.0
            else:
                total += (value_s - mm) ** 2 if value_s > mm else 0.0
        return total / s.shape[0]

    pooled = teacher[0].mean(dim=(2, 3), keepdim=True)
    expected = by_hand(student[0], pooled, margins[0]) / 2 + by_hand(student[1], teacher[1], margins[1])
    assert ofd_loss(student, teacher, margins).item() == pytest.approx(expected, rel=1e-6)


def test_ofd_method_loss_by_hand():
    """The whole term: connector (conv1x1, BN with batch statistics) then beta * partial L2."""
    g = torch.Generator().manual_seed(6)
    s_map, t_map = torch.randn(4, 3, 2, 2, generator=g), torch.randn(4, 2, 2, 2, generator=g)
    connectors = nn.ModuleList([connector(3, 2)])
    randomize(connectors, 7)
    margin = torch.tensor([-0.3, -1.2])
    method = METHODS["ofd"](nn.Linear(1, 1), nn.Linear(1, 1), connectors, [margin], gamma=1.0, alpha=0.0, beta=1e-3)
    method.train()
    dummy = torch.zeros(1)
    loss = method.feature_losses([dummy, s_map, dummy], [dummy, t_map, dummy], None, None, None, None)["ofd"]
    with torch.no_grad():
        r = bn_batch(conv1x1(s_map, connectors[0][0].weight), connectors[0][1])
        target = torch.maximum(t_map, margin.view(1, -1, 1, 1))
        keep = ((r > target) | (target > 0)).float()
        expected = 1e-3 * (((r - target) ** 2) * keep).sum() / 4
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_ofd_gradient():
    g = torch.Generator().manual_seed(8)
    t = [torch.randn(3, 2, 2, 2, generator=g).double(), torch.randn(3, 2, 2, 2, generator=g).double()]
    m = [torch.tensor([-0.5, -1.0]).double(), torch.tensor([-0.2, -2.0]).double()]
    s = [torch.randn(3, 2, 1, 1, generator=g).double().requires_grad_(),
         torch.randn(3, 2, 2, 2, generator=g).double().requires_grad_()]
    assert torch.autograd.gradcheck(lambda a, b: ofd_loss([a, b], t, m), tuple(s))
    # analytic: 2 (s - max(t, m)) on the kept entries, / batch, times the stage weight
    ofd_loss(s, t, m).backward()
    pooled = t[0].mean(dim=(2, 3), keepdim=True)
    for s_i, t_i, m_i, w in zip(s, [pooled, t[1]], m, [0.5, 1.0]):
        target = torch.maximum(t_i, m_i.view(1, -1, 1, 1))
        keep = ((s_i > target) | (target > 0)).double()
        assert torch.allclose(s_i.grad, w * 2 * (s_i.detach() - target) * keep / 3)


# ------------------------------------------------------------------ the reference's settings, per pair
# dvlab-research/ReviewKD build_review_kd: (in_channels, out_channels, out_shapes), shallow to deep; mid = min(512, in[-1])
REVIEW_TABLES = {
    ("resnet32x4", "resnet8x4"): ([64, 128, 256, 256], [64, 128, 256, 256], [32, 16, 8, 1]),
    ("wrn_40_2", "wrn_16_2"): ([32, 64, 128, 128], [32, 64, 128, 128], [32, 16, 8, 1]),
    ("resnet56", "resnet20"): ([16, 32, 64, 64], [16, 32, 64, 64], [32, 16, 8, 1]),
    ("resnet32x4", "ShuffleV2"): ([116, 232, 464, 1024], [64, 128, 256, 256], [32, 16, 8, 1]),
    # the original's vgg row (its vgg backbone is commented out, so neither reference runs it): the same rule
    ("vgg13", "vgg8"): ([128, 256, 512, 512, 512], [128, 256, 512, 512, 512], [16, 8, 4, 4, 1]),
    # further rows of the original's table (not paper pairs), reproduced by the same rule
    ("wrn_40_2", "ShuffleV1"): ([240, 480, 960, 960], [32, 64, 128, 128], [32, 16, 8, 1]),
    ("vgg13", "MobileNetV2"): ([12, 16, 48, 160, 1280], [128, 256, 512, 512, 512], [16, 8, 4, 4, 1]),
    ("ResNet50", "MobileNetV2"): ([12, 16, 48, 160, 1280], [256, 512, 1024, 2048, 2048], [32, 16, 8, 4, 1]),
}
REVIEW_WEIGHTS = {("resnet32x4", "resnet8x4"): 5.0, ("wrn_40_2", "wrn_16_2"): 5.0, ("resnet56", "resnet20"): 0.6,
                  ("resnet32x4", "ShuffleV2"): 8.0, ("vgg13", "vgg8"): 5.0, ("resnet110", "resnet32"): 1.0,
                  ("wrn_40_2", "ShuffleV1"): 5.0, ("vgg13", "MobileNetV2"): 5.0, ("ResNet50", "MobileNetV2"): 5.0}


@pytest.mark.parametrize("pair", sorted(REVIEW_TABLES))
def test_reviewkd_sizes_are_the_reference_tables(pair):
    model_t, model_s = pair
    method = METHODS["reviewkd"].build(model_dict[model_s](num_classes=100), model_dict[model_t](num_classes=100),
                                       make_opt(*pair), DATA)
    in_channels, out_channels, out_shapes = REVIEW_TABLES[pair]
    abfs = list(method.fusion.abfs)[::-1]  # stored deepest first, as the reference's abfs[::-1]
    assert [a.conv1[0].in_channels for a in abfs] == in_channels
    assert [a.conv2[0].out_channels for a in abfs] == out_channels
    assert {a.conv1[0].out_channels for a in abfs} == {min(512, in_channels[-1])}
    assert [a.att_conv is not None for a in abfs] == [True] * (len(abfs) - 1) + [False]
    assert [size for size, _ in method.fusion.out_sizes[::-1]] == out_shapes
    assert method.beta == REVIEW_WEIGHTS[pair]


def test_reviewkd_weights_flags_and_defaults():
    cls = METHODS["reviewkd"]
    for pair, weight in REVIEW_WEIGHTS.items():
        assert cls.weights(make_opt(*pair))["beta"] == weight
    assert cls.weights(make_opt("resnet110", "resnet8"))["beta"] == 5.0
    assert cls.weights(make_opt("resnet56", "resnet20", beta=2.0))["beta"] == 2.0  # -b wins
    assert cls.defaults == {"gamma": 1.0, "alpha": 0.0, "beta": 5.0} and cls.default_logit_scale == 0
    assert (cls.preact, cls.teacher_preact) == (False, True)
    parser = argparse.ArgumentParser()
    cls.add_arguments(parser)
    assert parser.parse_args([]).reviewkd_warmup == 20.0
    with pytest.raises(ValueError, match="reviewkd_warmup"):
        cls.build(model_dict["resnet8"](num_classes=10), model_dict["resnet20"](num_classes=10),
                  make_opt("resnet20", "resnet8", reviewkd_warmup=-1.0), DATA)


def test_ofd_defaults_and_structure():
    cls = METHODS["ofd"]
    assert cls.defaults == {"gamma": 1.0, "alpha": 0.0, "beta": 1e-3} and cls.preact and cls.teacher_preact is None
    expected = {("resnet32x4", "resnet8x4"): ([64, 128, 256], [64, 128, 256]),
                ("wrn_40_2", "wrn_16_2"): ([32, 64, 128], [32, 64, 128]),
                ("resnet56", "resnet20"): ([16, 32, 64], [16, 32, 64]),
                ("vgg13", "vgg8"): ([128, 256, 512, 512], [128, 256, 512, 512]),
                ("resnet32x4", "ShuffleV2"): ([116, 232, 464], [64, 128, 256])}
    for (model_t, model_s), (c_s, c_t) in expected.items():
        teacher = model_dict[model_t](num_classes=100)
        randomize(teacher, 9)
        method = cls.build(model_dict[model_s](num_classes=100), teacher, make_opt(model_t, model_s), DATA)
        assert [c[0].in_channels for c in method.connectors] == c_s
        assert [c[0].out_channels for c in method.connectors] == c_t
        assert all(c[0].kernel_size == (1, 1) and c[0].bias is None for c in method.connectors)
        assert all(torch.equal(c[1].weight, torch.ones_like(c[1].weight)) for c in method.connectors)
        bns = teacher.get_bn_before_relu()
        for margin, bn in zip(method.margins(), bns):
            assert torch.equal(margin.flatten(), bn_margin(bn.weight, bn.bias))
        assert not any(k.startswith("margin") for k in method.method_state_dict())  # derived, not saved


def test_ofd_connector_initialisation_is_the_references():
    torch.manual_seed(0)
    conv = connector(64, 256)[0]
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / 256), rel=0.05)
    assert abs(conv.weight.mean().item()) < 0.01


# ------------------------------------------------------------------ on real pairs: frozen teacher, features used
@pytest.mark.parametrize("name", ["reviewkd", "ofd"])
def test_method_trains_and_leaves_the_teacher_untouched(name):
    torch.manual_seed(0)
    teacher, student = model_dict["resnet20"](num_classes=10), model_dict["resnet8"](num_classes=10)
    teacher.train()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    method = METHODS[name].build(student, teacher, make_opt("resnet20", "resnet8"), DATA)
    method.set_epoch(30)
    method.train()
    assert not teacher.training
    own = method.fusion if name == "reviewkd" else method.connectors
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    images, targets = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    for _ in range(2):
        optimizer.zero_grad(set_to_none=True)
        _, losses = method(images, targets)
        assert set(losses) == {"ce", name} and all(torch.isfinite(v) for v in losses.values())
        sum(losses.values()).backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in own.parameters())
        optimizer.step()
    student.zero_grad(set_to_none=True)
    _, losses = method(images, targets)
    losses[name].backward()  # the feature term alone reaches the student's stem
    assert student.conv1.weight.grad.abs().sum() > 0
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())


def test_reviewkd_student_post_relu_teacher_pre_relu_also_from_the_inference_copy():
    torch.manual_seed(0)
    teacher, student = model_dict["resnet20"](num_classes=10), model_dict["resnet8"](num_classes=10)
    randomize(teacher, 10)
    method = METHODS["reviewkd"].build(student, teacher, make_opt("resnet20", "resnet8"), DATA)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        pre, _ = teacher(images, is_feat=True, preact=True)
        post, _ = teacher(images, is_feat=True)
    assert not torch.equal(pre[1], post[1])
    feat_t, _ = method.teacher_forward(images)
    assert all(torch.equal(a, b) for a, b in zip(feat_t, pre))
    install_inference_teacher(method, images, memory_format="contiguous")
    feat_t, _ = method.teacher_forward(images)
    assert all((a - b).abs().max() <= 1e-4 * b.abs().max() for a, b in zip(feat_t, pre))  # BN folded: rounding


# ------------------------------------------------------------------ the student script: paper pairs and refusals
@pytest.mark.parametrize("name", ["reviewkd", "ofd"])
@pytest.mark.parametrize("model_t,model_s", PAPER_PAIRS)
def test_paper_pairs_run_through_the_student_script(tiny_cifar, tmp_path, teacher_file, capsys, name, model_t,
                                                    model_s):
    extra = ["--reviewkd_warmup", "0"] if name == "reviewkd" else []  # the HCL term at full weight from epoch 1
    summary = run_student(tiny_cifar, tmp_path, teacher_file(model_t), model_t, model_s, "--distill", name, *extra)
    assert summary["method"] == name
    out = capsys.readouterr().out
    first = next(line for line in out.splitlines() if line.startswith("epoch 1 ["))
    assert f" {name} " in first and " ce " in first
    weight = REVIEW_WEIGHTS[(model_t, model_s)] if name == "reviewkd" else 0.001
    assert f"_{name}_r_1.0_a_0.0_b_{weight}_" in summary["run"]


def test_reviewkd_first_epoch_has_zero_weight_by_default(tiny_cifar, tmp_path, teacher_file, capsys):
    run_student(tiny_cifar, tmp_path, teacher_file("resnet20"), "resnet20", "resnet8", "--distill", "reviewkd")
    first = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch 1 ["))
    assert " reviewkd 0.0000 " in first


@pytest.mark.parametrize("name,model_t,model_s,reason", [
    ("reviewkd", "resnet32x4", "vgg8", "student has 5 levels and the teacher 4"),
    ("reviewkd", "vgg13", "resnet8x4", "student has 4 levels and the teacher 5"),
    ("ofd", "ShuffleV2", "resnet8", "ShuffleV2 has none"),
])
def test_pairs_they_cannot_serve_are_refused_in_one_line(tiny_cifar, tmp_path, teacher_file, name, model_t, model_s,
                                                         reason):
    with pytest.raises(UsageError, match=reason) as err:
        run_student(tiny_cifar, tmp_path, teacher_file(model_t), model_t, model_s, "--distill", name)
    assert "\n" not in str(err.value)
    assert str(err.value).startswith(f"--distill {name} cannot distill {model_t} into {model_s}")
