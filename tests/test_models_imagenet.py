"""ImageNet zoo: torchvision equivalence of the teachers, student architectures, is_feat lists, NORM FT hook, folding."""
import pytest
import torch
import torchvision
from torch import nn

from models.imagenet.mobilenet import MobileNet
from models.imagenet.resnet import resnet18, resnet18S, resnet34, resnet34S, resnet50, resnet50_4S
from models.norm import attach_feature_transform, fold_transform_into_classifier

TEACHERS = {"resnet18": resnet18, "resnet34": resnet34, "resnet50": resnet50}
STUDENTS = {"resnet18S": resnet18S, "resnet34S": resnet34S, "resnet50_4S": resnet50_4S, "MobileNet": MobileNet}
ALL = {**TEACHERS, **STUDENTS}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These forwards are tiny; one intra-op thread avoids OpenMP spin contention on a shared 2-core box."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


# ---------------------------------------------------------------------------------------------------------------
# parameter counts: expectations by hand arithmetic from the architecture (no model instantiated)

def _conv(cin, cout, k, groups=1):
    return cin // groups * cout * k * k


def _bn(c):
    return 2 * c


def _linear(cin, cout):
    return cin * cout + cout


def _basic_block(cin, planes, stride):
    n = _conv(cin, planes, 3) + _bn(planes) + _conv(planes, planes, 3) + _bn(planes)
    if stride != 1 or cin != planes:
        n += _conv(cin, planes, 1) + _bn(planes)
    return n, planes


def _bottleneck(cin, planes, stride, expansion=4):
    out = planes * expansion
    n = (_conv(cin, planes, 1) + _bn(planes) + _conv(planes, planes, 3) + _bn(planes)
         + _conv(planes, out, 1) + _bn(out))
    if stride != 1 or cin != out:
        n += _conv(cin, out, 1) + _bn(out)
    return n, out


def _resnet_params(block, depths, planes, num_classes):
    total, c = _conv(3, 64, 7) + _bn(64), 64
    for stage, (depth, p) in enumerate(zip(depths, planes)):
        for i in range(depth):
            n, c = block(c, p, 2 if (i == 0 and stage > 0) else 1)
            total += n
    return total + _linear(c, num_classes)


def _mobilenet_params(num_classes):
    total, c = _conv(3, 32, 3) + _bn(32), 32
    for out in (64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024):
        total += _conv(c, c, 3, groups=c) + _bn(c) + _conv(c, out, 1) + _bn(out)
        c = out
    return total + _linear(c, num_classes)


def _expected_params(name, num_classes):
    if name in ("resnet18", "resnet18S"):
        return _resnet_params(_basic_block, [2, 2, 2, 2], [64, 128, 256, 512], num_classes)
    if name in ("resnet34", "resnet34S"):
        return _resnet_params(_basic_block, [3, 4, 6, 3], [64, 128, 256, 512], num_classes)
    if name == "resnet50":
        return _resnet_params(_bottleneck, [3, 4, 6, 3], [64, 128, 256, 512], num_classes)
    if name == "resnet50_4S":
        return _resnet_params(_bottleneck, [3, 4, 6, 3], [16, 32, 64, 128], num_classes)
    return _mobilenet_params(num_classes)


def test_hand_counts_match_published_totals():
    # torchvision's documented sizes and the usual MobileNet-v1 (with BN) total validate the arithmetic above
    assert _expected_params("resnet18", 1000) == 11_689_512
    assert _expected_params("resnet34", 1000) == 21_797_672
    assert _expected_params("resnet50", 1000) == 25_557_032
    assert _expected_params("MobileNet", 1000) == 4_231_976


def _meta(builder, **kwargs):
    """The model on the meta device: real modules and shapes, no storage, no init cost, shape-only forwards."""
    with torch.device("meta"):
        return builder(**kwargs)


@pytest.mark.parametrize("name", list(ALL))
def test_parameter_counts(name):
    for num_classes in (1000, 100):
        model = _meta(ALL[name], num_classes=num_classes)
        assert sum(p.numel() for p in model.parameters()) == _expected_params(name, num_classes)


# ---------------------------------------------------------------------------------------------------------------
# helpers

def _randomize_bn(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(0.5 + torch.rand(c, generator=g))
                m.bias.copy_(0.1 * torch.randn(c, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(c, generator=g))
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))


@torch.no_grad()
def _calibrate_bn(model, x):
    """Running statistics := the statistics of one batch, so eval-mode activations stay O(1) in deep nets."""
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.momentum = 1.0
    model.train()
    model(x)
    for m, momentum in zip(bns, saved):
        m.momentum = momentum
    model.eval()


def _input(name, batch=2, size=64):
    if name == "MobileNet":  # AvgPool2d(7) needs the 7x7 map of a 224 input
        batch, size = 1, 224
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))


def _check_feature_semantics(model, feats, logits):
    """Entry -2 is the post-ReLU map before pooling, entry -1 its spatial mean, the logits fc of it."""
    assert feats[-2].dim() == 4 and feats[-2].min() >= 0
    torch.testing.assert_close(feats[-1], feats[-2].mean((2, 3)))
    torch.testing.assert_close(logits, model.fc(feats[-1]))


# ---------------------------------------------------------------------------------------------------------------
# teachers == torchvision

@pytest.mark.parametrize("name", list(TEACHERS))
def test_teacher_loads_torchvision_strictly_and_matches(name):
    torch.manual_seed(0)
    reference = getattr(torchvision.models, name)(weights=None)
    _randomize_bn(reference)
    model = TEACHERS[name]()
    assert list(model.state_dict()) == list(reference.state_dict())
    model.load_state_dict(reference.state_dict(), strict=True)
    reference.eval()
    model.eval()
    x = _input(name)
    with torch.no_grad():
        expected = reference(x)
        logits = model(x)
        feats, logits_feat = model(x, is_feat=True, preact=True)
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(logits_feat, expected, rtol=0, atol=1e-6)
    _check_feature_semantics(model, feats, logits_feat)


def test_teacher_weights_argument_checks_classes_before_any_download():
    with pytest.raises(ValueError):
        resnet18(num_classes=10, weights="IMAGENET1K_V1")


# ---------------------------------------------------------------------------------------------------------------
# architecture details

def test_resnet50_4S_layout():
    model = _meta(resnet50_4S)
    state = model.state_dict()
    assert not any(k.startswith("layer1.0.downsample") for k in state)
    assert state["layer1.0.conv1.weight"].shape == (16, 64, 1, 1)
    assert state["layer1.0.conv2.weight"].shape == (16, 16, 3, 3)
    assert state["layer1.0.conv3.weight"].shape == (64, 16, 1, 1)
    for stage, (cin, width, stride) in enumerate([(64, 32, 2), (128, 64, 2), (256, 128, 2)], start=2):
        assert state[f"layer{stage}.0.downsample.0.weight"].shape == (width * 4, cin, 1, 1)
        assert state[f"layer{stage}.0.conv2.weight"].shape == (width, width, 3, 3)
    assert sorted({k.split(".")[0] for k in state}) == ["bn1", "conv1", "fc", "layer1", "layer2", "layer3", "layer4"]
    assert model.layer2[0].conv2.stride == (2, 2)  # stride on the 3x3, as in torchvision
    assert state["fc.weight"].shape == (1000, 512)


def test_student_resnets_have_torchvision_keys():
    for ours, theirs in ((resnet18S, torchvision.models.resnet18), (resnet34S, torchvision.models.resnet34)):
        ours_state, theirs_state = _meta(ours).state_dict(), _meta(theirs).state_dict()
        assert {k: v.shape for k, v in ours_state.items()} == {k: v.shape for k, v in theirs_state.items()}


def test_mobilenet_official_keys_and_shapes():
    expected = {}

    def bn(prefix, c):
        for k in ("weight", "bias", "running_mean", "running_var"):
            expected[f"{prefix}.{k}"] = (c,)
        expected[f"{prefix}.num_batches_tracked"] = ()

    expected["model1.0.0.weight"] = (32, 3, 3, 3)
    bn("model1.0.1", 32)
    c = 32
    blocks = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + [(1024, 2), (1024, 1)]
    for i, (out, _) in enumerate(blocks):
        prefix = f"model1.{i + 1}" if i < 11 else f"model2.{i - 11}"
        expected[f"{prefix}.0.weight"] = (c, 1, 3, 3)
        bn(f"{prefix}.1", c)
        expected[f"{prefix}.3.weight"] = (out, c, 1, 1)
        bn(f"{prefix}.4", out)
        c = out
    expected["fc.weight"] = (1000, 1024)
    expected["fc.bias"] = (1000,)
    model = _meta(MobileNet)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == expected
    strides = [blk[0].stride[0] for blk in list(model.model1)[1:] + list(model.model2)]
    assert strides == [s for _, s in blocks]
    assert model.model1[0][0].stride == (2, 2)
    assert all(blk[0].groups == blk[0].in_channels for blk in list(model.model1)[1:] + list(model.model2))
    assert all(m.bias is None for m in model.modules() if isinstance(m, nn.Conv2d))
    assert sum(isinstance(m, nn.ReLU) for m in model.modules()) == 1 + 2 * 13


# ---------------------------------------------------------------------------------------------------------------
# is_feat lists at 224

R18_FEATS = [(64, 56, 56), (64, 56, 56), (128, 28, 28), (256, 14, 14), (512, 7, 7), (512,)]
FEATS_224 = {
    "resnet18": R18_FEATS, "resnet34": R18_FEATS, "resnet18S": R18_FEATS, "resnet34S": R18_FEATS,
    "resnet50": [(64, 56, 56), (256, 56, 56), (512, 28, 28), (1024, 14, 14), (2048, 7, 7), (2048,)],
    "resnet50_4S": R18_FEATS,
    "MobileNet": [(512, 14, 14), (1024, 7, 7), (1024,)],
}


@pytest.mark.parametrize("name", list(ALL))
def test_feature_list_at_224(name):
    model = _meta(ALL[name]).eval()
    assert model.feature_transform is None and "feature_transform" not in dict(model.named_children())
    assert model.classifier_name == "fc" and model.transform_foldable is True
    assert model.transform_in_channels == FEATS_224[name][-2][0]
    assert model.transform_init == ("default" if name == "MobileNet" else "kaiming")
    x = torch.empty(2, 3, 224, 224, device="meta")
    feats, logits = model(x, is_feat=True)
    assert [tuple(f.shape) for f in feats] == [(2, *shape) for shape in FEATS_224[name]]
    assert logits.shape == model(x).shape == (2, 1000)

    with torch.device("meta"):
        attach_feature_transform(model, teacher_channels=2048, n=2)
    assert "feature_transform" in dict(model.named_children())
    assert any(k.startswith("feature_transform.expand.0.") for k in model.state_dict())
    feats, logits = model(x, is_feat=True)
    expected = [(2, *shape) for shape in FEATS_224[name]]
    expected[-2] = (2, 4096, 7, 7)
    assert [tuple(f.shape) for f in feats] == expected
    assert logits.shape == (2, 1000)


# ---------------------------------------------------------------------------------------------------------------
# NORM feature transform: attach and fold

FOLD_CASES = [(name, "residual") for name in STUDENTS] + [("resnet18S", "plain"), ("MobileNet", "plain")]


@pytest.mark.parametrize("name,mode", FOLD_CASES)
def test_fold_reproduces_logits(name, mode):
    torch.manual_seed(0)
    x = _input(name)
    model = attach_feature_transform(STUDENTS[name](), teacher_channels=2048, n=2, mode=mode)
    _calibrate_bn(model, x)
    _randomize_bn(model.feature_transform, seed=3)  # a generic affine FT, not just the calibrated one
    with torch.no_grad():
        feats, expected = model(x, is_feat=True)
    assert feats[-2].shape[1] == 4096
    state = fold_transform_into_classifier(model)
    assert not any(k.startswith("feature_transform.") for k in state)
    plain = STUDENTS[name]()
    plain.load_state_dict(state, strict=True)
    plain.eval()
    with torch.no_grad():
        plain_feats, logits = plain(x, is_feat=True)
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(plain.fc.weight, model.fc.weight)  # the FT really changed the classifier
    _check_feature_semantics(plain, plain_feats, logits)
