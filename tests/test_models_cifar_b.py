"""CIFAR MobileNetV2 / ShuffleV1 / ShuffleV2: RepDistiller's figures, checkpoint round trip, NORM transform, fold."""
import pytest
import torch
from torch import nn

from models.cifar.mobilenetv2 import MobileNetV2
from models.cifar.shufflenetv1 import ShuffleV1
from models.cifar.shufflenetv2 import ShuffleV2
from models.norm import attach_feature_transform, fold_transform_into_classifier

# Reference §10 (measured on RepDistiller's definitions, 100 classes, 32x32 input).
SPECS = {
    "MobileNetV2": dict(cls=MobileNetV2, params=812_836, bn_before_relu=4, feat_modules=2, ft_hw=(2, 2),
                        shapes=[(16, 16, 16), (12, 16, 16), (16, 8, 8), (48, 4, 4), (160, 2, 2), (1280,)]),
    "ShuffleV1": dict(cls=ShuffleV1, params=949_258, bn_before_relu=None, feat_modules=5, ft_hw=(4, 4),
                      shapes=[(24, 32, 32), (240, 16, 16), (480, 8, 8), (960, 4, 4), (960,)]),
    "ShuffleV2": dict(cls=ShuffleV2, params=1_355_528, bn_before_relu=None, feat_modules=5, ft_hw=(4, 4),
                      shapes=[(24, 32, 32), (116, 16, 16), (232, 8, 8), (464, 4, 4), (1024,)]),
}
NAMES = list(SPECS)
BATCH = 2


def _input(seed=0):
    return torch.randn(BATCH, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def _randomise_bn(model, seed=0):
    """Give every BatchNorm non-trivial affine parameters and running statistics."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.weight.copy_(1 + 0.2 * torch.randn(c, generator=g))
            m.bias.copy_(0.1 * torch.randn(c, generator=g))
            m.running_mean.copy_(0.1 * torch.randn(c, generator=g))
            m.running_var.copy_(0.5 + torch.rand(c, generator=g))


@pytest.mark.parametrize("name", NAMES)
def test_figures_match_repdistiller(name):
    spec = SPECS[name]
    model = spec["cls"](num_classes=100).eval()
    assert sum(p.numel() for p in model.parameters()) == spec["params"]
    assert model.feature_transform is None
    with torch.no_grad():
        feats, logits = model(_input(), is_feat=True)
        pre_feats, _ = model(_input(), is_feat=True, preact=True)
    assert [tuple(f.shape[1:]) for f in feats] == spec["shapes"]
    assert [tuple(f.shape[1:]) for f in pre_feats] == spec["shapes"]
    assert logits.shape == (BATCH, 100)
    assert len(model.get_feat_modules()) == spec["feat_modules"]
    if spec["bn_before_relu"] is None:
        with pytest.raises(NotImplementedError):
            model.get_bn_before_relu()
    else:
        bns = model.get_bn_before_relu()
        assert len(bns) == spec["bn_before_relu"] and all(isinstance(m, nn.BatchNorm2d) for m in bns)


@pytest.mark.parametrize("name", NAMES)
def test_checkpoint_round_trip_is_strict_and_exact(name, tmp_path):
    cls = SPECS[name]["cls"]
    torch.manual_seed(0)
    model = cls(num_classes=100)
    _randomise_bn(model)
    path = tmp_path / "ckpt.pth"
    torch.save({"epoch": 240, "model": model.state_dict(), "accuracy": 70.0, "optimizer": {}}, path)
    state = torch.load(path, weights_only=True)["model"]
    torch.manual_seed(1)
    fresh = cls(num_classes=100)
    fresh.load_state_dict(state, strict=True)
    x = _input()
    with torch.no_grad():
        assert torch.equal(model.eval()(x), fresh.eval()(x))


@pytest.mark.parametrize("name", NAMES)
def test_attached_transform_replaces_matched_feature(name):
    spec = SPECS[name]
    c_t, n = 32, 8
    model = spec["cls"](num_classes=100)
    plain_keys = set(model.state_dict())
    assert not any(k.startswith("feature_transform.") for k in plain_keys)
    attach_feature_transform(model, teacher_channels=c_t, n=n)
    assert set(model.state_dict()) - plain_keys == {k for k in model.state_dict() if k.startswith("feature_transform.")}
    feats, logits = model(_input(), is_feat=True)
    assert tuple(feats[-2].shape) == (BATCH, n * c_t, *spec["ft_hw"])
    assert tuple(feats[-1].shape) == (BATCH, model.transform_in_channels)
    assert [tuple(f.shape[1:]) for f in feats[:-2]] == spec["shapes"][:-2]
    assert logits.shape == (BATCH, 100)


def test_mobilenetv2_norm_student_drops_relus():
    torch.manual_seed(0)
    teacher = MobileNetV2(num_classes=100).eval()
    _randomise_bn(teacher)
    student = MobileNetV2(num_classes=100).eval()
    student.load_state_dict(teacher.state_dict(), strict=True)
    student.prepare_norm_student()
    assert student.norm_student and not teacher.norm_student
    assert list(student.state_dict()) == list(teacher.state_dict())

    pooled_inputs = []
    hooks = [m.avgpool.register_forward_pre_hook(lambda mod, args: pooled_inputs.append(args[0]))
             for m in (teacher, student)]
    x = _input()
    with torch.no_grad():
        assert not torch.allclose(teacher(x), student(x))
    for h in hooks:
        h.remove()
    teacher_conv2, student_conv2 = pooled_inputs
    assert teacher_conv2.min() >= 0
    assert student_conv2.min() < 0


def test_attach_switches_mobilenetv2_to_student_variant():
    model = attach_feature_transform(MobileNetV2(num_classes=100), teacher_channels=16, n=2)
    assert model.norm_student


@pytest.mark.parametrize("name", NAMES)
def test_fold_transform_into_classifier(name):
    cls = SPECS[name]["cls"]
    torch.manual_seed(0)
    model = attach_feature_transform(cls(num_classes=100), teacher_channels=32, n=4)
    _randomise_bn(model)
    model.eval()
    folded = fold_transform_into_classifier(model)
    plain = cls(num_classes=100)
    if hasattr(plain, "prepare_norm_student"):
        plain.prepare_norm_student()
    plain.load_state_dict(folded, strict=True)
    x = _input()
    with torch.no_grad():
        torch.testing.assert_close(plain.eval()(x), model(x), atol=1e-4, rtol=0)
