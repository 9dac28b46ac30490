"""HookedModel: a torchvision model, unedited, as a teacher or NORM student through forward hooks."""
import argparse
import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from distiller_zoo import METHODS
from models import model_dict
from models.hooked import HookedModel
from models.norm import attach_feature_transform, fold_transform_into_classifier


def hooked_resnet18(num_classes=10):
    torch.manual_seed(0)
    return HookedModel(torchvision.models.resnet18(num_classes=num_classes), ["layer3", "layer4"], "fc",
                       image_size=32)


def by_hand(resnet, x, transform=None):
    """torchvision's ResNet forward written out, with the FT after layer4: (layer3, matched map, pooled, logits)."""
    x = resnet.maxpool(resnet.relu(resnet.bn1(resnet.conv1(x))))
    f3 = resnet.layer3(resnet.layer2(resnet.layer1(x)))
    f4 = f3
    for block in resnet.layer4:  # block by block: calling layer4 itself would run the wrapper's FT hook
        f4 = block(f4)
    matched = f4
    if transform is not None:
        expanded = transform.expand(f4)
        f4 = transform.contract(expanded) + f4
        matched = expanded
    pooled = f4.mean((2, 3))
    return f3, matched, pooled, resnet.fc(pooled)


def test_features_and_logits_are_the_wrapped_models():
    model = hooked_resnet18().eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        feats, logits = model(x, is_feat=True)
        expected = by_hand(model.model, x)
        assert torch.equal(model(x), model.model(x))
    assert [f.shape for f in feats] == [(3, 256, 2, 2), (3, 512, 1, 1), (3, 512)]
    for got, want in zip(list(feats) + [logits], expected):
        assert torch.allclose(got, want, atol=1e-6)
    assert model.transform_in_channels == 512 and model.transform_foldable


def test_feature_transform_runs_inside_the_wrapped_forward():
    model = hooked_resnet18()
    attach_feature_transform(model, teacher_channels=64, n=3)
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats, logits = model(x, is_feat=True)
        _, matched, pooled, want = by_hand(model.model, x, model.feature_transform)
    assert feats[-2].shape == (2, 3 * 64, 2, 2)
    assert torch.allclose(feats[-2], matched, atol=1e-6)
    assert torch.allclose(feats[-1], pooled, atol=1e-6)
    assert torch.allclose(logits, want, atol=1e-5)
    assert sorted({k.split(".")[0] for k in model.state_dict()}) == ["feature_transform", "model"]


def test_folded_transform_gives_the_same_logits_without_it():
    model = hooked_resnet18()
    attach_feature_transform(model, teacher_channels=32, n=2)
    model.train()
    with torch.no_grad():  # non-trivial BatchNorm statistics in the FT
        for _ in range(3):
            model(torch.randn(8, 3, 32, 32) * 2 + 0.5)
    model.eval()
    plain = hooked_resnet18()
    plain.load_state_dict(fold_transform_into_classifier(model), strict=True)
    plain.eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(plain(x), model(x), atol=1e-4)


def test_a_layer_between_the_map_and_the_pooling_is_not_foldable():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))
    model = HookedModel(net, ["1"], "5", image_size=8)
    assert model.transform_in_channels == 8 and not model.transform_foldable
    attach_feature_transform(model, teacher_channels=4, n=2)
    with pytest.raises(ValueError, match="cannot be folded"):
        fold_transform_into_classifier(model.eval())


def test_a_relu_after_the_map_is_not_foldable_even_in_place():
    torch.manual_seed(0)
    for inplace in (False, True):  # densenet's pattern: features -> ReLU(inplace) -> pool -> linear
        net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=inplace),
                            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))
        model = HookedModel(net, ["1"], "5", image_size=8)
        assert not model.transform_foldable, inplace


def test_a_module_that_runs_twice_per_forward_is_refused():
    with pytest.raises(ValueError, match="ran twice in one forward pass"):  # BasicBlock calls its relu twice
        HookedModel(torchvision.models.resnet18(num_classes=10), ["layer4.1.relu"], "fc", image_size=32)


@pytest.mark.parametrize("features,classifier,match", [
    (["layer9"], "fc", "no submodule 'layer9'.*layer4"),
    (["layer4"], "avgpool", "is a AdaptiveAvgPool2d"),
    (["fc"], "fc", "2-d tensor"),
    ([], "fc", "at least one feature module"),
])
def test_bad_module_names_are_refused_with_the_choices(features, classifier, match):
    with pytest.raises(ValueError, match=match):
        HookedModel(torchvision.models.resnet18(num_classes=10), features, classifier, image_size=32)


def test_a_deep_copy_records_its_own_features():
    model = hooked_resnet18()
    attach_feature_transform(model, teacher_channels=16, n=2)
    twin = copy.deepcopy(model)
    with torch.no_grad():
        twin.feature_transform.expand[0].weight.mul_(3)
        feats, _ = twin(torch.randn(2, 3, 32, 32), is_feat=True)
    assert feats[-2].shape == (2, 32, 1, 1)


def norm_options():
    return argparse.Namespace(gamma=None, alpha=None, beta=None, ceta=None, kd_T=4.0, co_sponge=4, ft="residual",
                              norm_schedule="constant", epochs=240)


@pytest.mark.parametrize("side", ["student", "teacher"])
def test_norm_distills_with_a_hooked_model_on_either_side(side):
    torch.manual_seed(0)
    zoo_model = model_dict["resnet8"](num_classes=10)
    hooked = hooked_resnet18()
    student, teacher = (hooked, zoo_model) if side == "student" else (zoo_model, hooked)
    method = METHODS["NORM"].build(student, teacher, norm_options(),
                                   {"n_data": 16, "image_size": 32, "in_channels": 3, "schedule_kind": "cifar"})
    teacher_channels = 64 if side == "student" else 512
    assert student.feature_transform.expand[0].out_channels == 4 * teacher_channels
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    method.train()
    first = None
    for _ in range(8):
        _, losses = method(x, y)
        total = sum(losses.values())
        first = first if first is not None else {k: v.item() for k, v in losses.items()}
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
    _, losses = method(x, y)
    assert set(losses) == {"ce", "norm"}
    assert losses["norm"].item() < first["norm"] and losses["ce"].item() < first["ce"]
    assert all(not p.requires_grad for p in teacher.parameters())


def test_norm_loss_on_hooked_features_equals_the_tiled_mse():
    model = hooked_resnet18()
    teacher = model_dict["resnet8x4"](num_classes=10).eval()
    method = METHODS["NORM"].build(model, teacher, norm_options(),
                                   {"n_data": 4, "image_size": 32, "in_channels": 3, "schedule_kind": "cifar"})
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    _, losses = method(x, y)
    with torch.no_grad():
        feat_s, _ = model(x, is_feat=True)
        feat_t, _ = teacher(x, is_feat=True)
    target = F.adaptive_max_pool2d(feat_t[-2], feat_s[-2].shape[-2:]).repeat(1, 4, 1, 1)
    assert losses["norm"].item() == pytest.approx(4 * F.mse_loss(feat_s[-2], target).item(), rel=1e-5)


def test_the_readme_example_runs():
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme.split("## Distilling your own model", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)
    method = scope["method"]
    method.set_epoch(1)
    logits, losses = method(torch.randn(2, 3, 32, 32), torch.tensor([0, 99]))
    assert logits.shape == (2, 100) and set(losses) == {"ce", "norm"}
    assert scope["student"].transform_foldable
