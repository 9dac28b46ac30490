"""CIFAR resnet / ResNet50 / wrn / vgg: RepDistiller's figures, checkpoint round trips and the NORM transform."""
import copy

import pytest
import torch

from models.cifar.resnet import (resnet8, resnet8x4, resnet14, resnet20, resnet32, resnet32x4, resnet44, resnet56,
                                 resnet110)
from models.cifar.resnetv2 import ResNet50
from models.cifar.vgg import vgg8_bn, vgg11_bn, vgg13_bn, vgg16_bn, vgg19_bn
from models.cifar.wrn import wrn_16_1, wrn_16_2, wrn_40_1, wrn_40_2
from models.norm import attach_feature_transform, fold_transform_into_classifier

RESNET_FEATS = [(16, 32, 32), (16, 32, 32), (32, 16, 16), (64, 8, 8), (64,)]
RESNET_X4_FEATS = [(32, 32, 32), (64, 32, 32), (128, 16, 16), (256, 8, 8), (256,)]
WRN_K1_FEATS = [(16, 32, 32), (16, 32, 32), (32, 16, 16), (64, 8, 8), (64,)]
WRN_K2_FEATS = [(16, 32, 32), (32, 32, 32), (64, 16, 16), (128, 8, 8), (128,)]
VGG_FEATS = [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 4, 4), (512,)]

# name -> (builder, parameters at 100 classes, is_feat shapes, len(get_bn_before_relu()), len(get_feat_modules()))
# Figures from RepDistiller's own models (parameter counts of its definitions), not from these implementations.
FIGURES = {
    "resnet8": (resnet8, 83_892, RESNET_FEATS, 3, 6),
    "resnet14": (resnet14, 181_108, RESNET_FEATS, 3, 6),
    "resnet20": (resnet20, 278_324, RESNET_FEATS, 3, 6),
    "resnet32": (resnet32, 472_756, RESNET_FEATS, 3, 6),
    "resnet44": (resnet44, 667_188, RESNET_FEATS, 3, 6),
    "resnet56": (resnet56, 861_620, RESNET_FEATS, 3, 6),
    "resnet110": (resnet110, 1_736_564, RESNET_FEATS, 3, 6),
    "resnet8x4": (resnet8x4, 1_233_540, RESNET_X4_FEATS, 3, 6),
    "resnet32x4": (resnet32x4, 7_433_860, RESNET_X4_FEATS, 3, 6),
    "ResNet50": (ResNet50, 23_705_252,
                 [(64, 32, 32), (256, 32, 32), (512, 16, 16), (1024, 8, 8), (2048, 4, 4), (2048,)], 4, 6),
    "wrn_16_1": (wrn_16_1, 180_916, WRN_K1_FEATS, 3, 4),
    "wrn_16_2": (wrn_16_2, 703_284, WRN_K2_FEATS, 3, 4),
    "wrn_40_1": (wrn_40_1, 569_780, WRN_K1_FEATS, 3, 4),
    "wrn_40_2": (wrn_40_2, 2_255_156, WRN_K2_FEATS, 3, 4),
    "vgg8_bn": (vgg8_bn, 3_965_028, VGG_FEATS, 4, 10),
    "vgg11_bn": (vgg11_bn, 9_277_284, VGG_FEATS, 4, 10),
    "vgg13_bn": (vgg13_bn, 9_462_180, VGG_FEATS, 4, 10),
    "vgg16_bn": (vgg16_bn, 14_774_436, VGG_FEATS, 4, 10),
    "vgg19_bn": (vgg19_bn, 20_086_692, VGG_FEATS, 4, 10),
}
NAMES = list(FIGURES)
FOLDABLE = [name for name in NAMES if not name.startswith("wrn")]
TEACHER_CHANNELS = 24  # any C_t works; a small one keeps the N=8 transform cheap on CPU
BATCH = 2


@pytest.fixture(scope="module")
def zoo():
    """One pristine 100-class model per name, built on first use; tests work on deep copies."""
    cache = {}

    def get(name):
        if name not in cache:
            torch.manual_seed(0)
            cache[name] = FIGURES[name][0](num_classes=100)
        return copy.deepcopy(cache[name])
    return get


def images(seed=0):
    """A fixed batch of 32x32 RGB inputs."""
    return torch.randn(BATCH, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def randomise(model, seed=1):
    """Give every BatchNorm (transform included) random affine parameters and running statistics."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            c = m.num_features
            m.weight.copy_(1 + 0.2 * torch.randn(c, generator=gen))
            m.bias.copy_(0.2 * torch.randn(c, generator=gen))
            m.running_mean.copy_(0.2 * torch.randn(c, generator=gen))
            m.running_var.copy_(0.5 + torch.rand(c, generator=gen))
    return model


@torch.no_grad()
def calibrate(model, seed=1):
    """Random BN affine parameters and running statistics close to real ones (from one batch), then eval mode.

    Statistics far from the data let deep nets' logits grow to ~1e8, where float32 cannot show a 1e-4 match.
    """
    randomise(model, seed)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in norms:
        bn.momentum = 1.0  # the running statistics become exactly this batch's
    model.train()
    model(images(seed))
    gen = torch.Generator().manual_seed(seed)
    for bn in norms:
        bn.momentum = 0.1
        c = bn.num_features
        bn.running_mean.add_(0.1 * torch.randn(c, generator=gen) * bn.running_var.sqrt())
        bn.running_var.mul_(0.8 + 0.4 * torch.rand(c, generator=gen))
    return model.eval()


def eval_forward(model, x, **kwargs):
    """Eval-mode forward without gradients."""
    model.eval()
    with torch.no_grad():
        return model(x, **kwargs)


@pytest.mark.parametrize("name", NAMES)
def test_parameter_count(zoo, name):
    assert sum(p.numel() for p in zoo(name).parameters()) == FIGURES[name][1]


@pytest.mark.parametrize("name", NAMES)
def test_feature_list_and_helpers(zoo, name):
    _, _, shapes, n_bn, n_feat = FIGURES[name]
    model = zoo(name)
    feats, logits = eval_forward(model, images(), is_feat=True)
    assert [tuple(f.shape[1:]) for f in feats] == shapes
    assert all(f.shape[0] == BATCH for f in feats)
    assert logits.shape == (BATCH, 100)
    assert len(model.get_bn_before_relu()) == n_bn
    assert all(isinstance(bn, torch.nn.BatchNorm2d) for bn in model.get_bn_before_relu())
    assert len(model.get_feat_modules()) == n_feat
    assert model.feature_transform is None
    assert not any("feature_transform" in key for key in model.state_dict())


def test_vgg_pools_before_block4_only_at_64px(zoo):
    feats, logits = eval_forward(zoo("vgg8_bn"), torch.randn(BATCH, 3, 64, 64), is_feat=True)
    assert [tuple(f.shape[1:]) for f in feats] == [(64, 64, 64), (128, 32, 32), (256, 16, 16), (512, 8, 8),
                                                    (512, 4, 4), (512,)]
    assert logits.shape == (BATCH, 100)


@pytest.mark.parametrize("name", NAMES)
def test_checkpoint_round_trip(zoo, name, tmp_path):
    source = randomise(zoo(name))
    path = tmp_path / "ckpt.pth"
    torch.save({"epoch": 240, "model": source.state_dict(), "accuracy": 70.0, "optimizer": {}}, path)
    fresh = zoo(name)
    fresh.load_state_dict(torch.load(path, weights_only=True)["model"], strict=True)
    x = images()
    assert torch.equal(eval_forward(fresh, x), eval_forward(source, x))


@pytest.mark.parametrize("name", NAMES)
def test_num_classes(name):
    with torch.device("meta"):  # only shapes are checked, so skip materialising the weights
        model = FIGURES[name][0](num_classes=10)
    classifier = model.get_submodule(model.classifier_name)
    assert classifier.out_features == 10
    assert classifier.in_features == FIGURES[name][2][-1][0]


@pytest.mark.parametrize("name", NAMES)
def test_feature_transform_shapes(zoo, name):
    model = attach_feature_transform(zoo(name), teacher_channels=TEACHER_CHANNELS, n=8)
    plain_keys = set(zoo(name).state_dict())
    keys = set(model.state_dict())
    assert plain_keys < keys and all(k.startswith("feature_transform.") for k in keys - plain_keys)
    shapes = FIGURES[name][2]
    feats, logits = eval_forward(model, images(), is_feat=True)
    assert tuple(feats[-2].shape) == (BATCH, 8 * TEACHER_CHANNELS) + shapes[-2][1:]
    assert [tuple(f.shape[1:]) for f in feats[:-2]] == shapes[:-2]
    assert tuple(feats[-1].shape[1:]) == shapes[-1] == (model.transform_in_channels,)
    assert logits.shape == (BATCH, 100)


@pytest.mark.parametrize("name", ["resnet8", "ResNet50", "wrn_16_1", "vgg8_bn"])
def test_feature_transform_preact_keeps_plain_map(zoo, name):
    """With preact=True the matched index holds the untransformed network's pre-ReLU map, not the expansion."""
    plain = randomise(zoo(name))
    model = attach_feature_transform(copy.deepcopy(plain), teacher_channels=TEACHER_CHANNELS, n=8)
    x = images()
    expected, _ = eval_forward(plain, x, is_feat=True, preact=True)
    got, _ = eval_forward(model, x, is_feat=True, preact=True)
    for e, g in zip(expected[:-1], got[:-1]):
        assert torch.equal(e, g)


@pytest.mark.parametrize("name", FOLDABLE)
def test_fold_into_classifier(zoo, name):
    model = calibrate(attach_feature_transform(zoo(name), teacher_channels=TEACHER_CHANNELS, n=8), seed=2)
    assert model.transform_foldable
    x = images()
    expected = eval_forward(model, x)
    plain = zoo(name)
    plain.load_state_dict(fold_transform_into_classifier(model), strict=True)
    assert expected.abs().max() > 0.1
    assert torch.allclose(eval_forward(plain, x), expected, atol=1e-4)


@pytest.mark.parametrize("name", ["wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2"])
def test_wrn_fold_refused(zoo, name):
    model = attach_feature_transform(zoo(name), teacher_channels=TEACHER_CHANNELS, n=8)
    assert not model.transform_foldable
    with pytest.raises(ValueError):
        fold_transform_into_classifier(model)
