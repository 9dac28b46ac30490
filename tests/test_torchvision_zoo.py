"""torchvision classifiers by name as NORM students and teachers: the matched map and classifier found by a probe
forward, one training step each way, and the deployed (folded, or FT kept as a 1x1 conv) model's logits."""
import argparse
import copy

import pytest
import torch
import torchvision
from torch import nn

from distiller_zoo import METHODS
from helper import deploy
from helper.deploy.external import library_state, zoo_for
from models import external
from models.norm import fold_transform_into_classifier

SIZE, CLASSES = 64, 3  # 64 px: a stride-32 map is 2x2, so train-mode BatchNorm sees 8 values per channel
# The smallest member of each family, with the module NORM matches, the classifier, and whether the FT folds. The
# expectations are read off torchvision's model definitions: pooling then (Dropout) Linear folds; a hidden Linear
# (mobilenet_v3), a LayerNorm2d (convnext) or a ReLU (densenet) between map and classifier does not.
FAMILIES = [
    ("resnet18", "layer4", "fc", True),
    ("resnext50_32x4d", "layer4", "fc", True),
    ("wide_resnet50_2", "layer4", "fc", True),
    ("mobilenet_v2", "features", "classifier.1", True),
    ("mobilenet_v3_small", "features", "classifier.3", False),
    ("efficientnet_b0", "features", "classifier.1", True),
    ("efficientnet_v2_s", "features", "classifier.1", True),
    ("regnet_x_400mf", "trunk_output", "fc", True),
    ("convnext_tiny", "features", "classifier.2", False),
    ("shufflenet_v2_x0_5", "conv5", "fc", True),
    ("mnasnet0_5", "layers", "classifier.1", True),
    ("densenet121", "features", "classifier", False),
    ("vit_b_16", "heads.head", "heads.head", True),   # the class token as a 1x1 map: the classifier's input
    ("swin_t", "permute", "head", True),
]


def tiny_partner():
    """A small CNN (map 16x4x4 at 64 px) on the other side of the pair, wrapped by the same auto-detection."""
    net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=4, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 16, 3, stride=4, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, CLASSES))
    return external.wrap(net, SIZE)


def options():
    return argparse.Namespace(gamma=None, alpha=None, beta=None, ceta=None, kd_T=4.0, co_sponge=2, ft="residual",
                              norm_schedule="constant", epochs=10)


def one_step(student, teacher):
    """Build NORM for the pair, take one SGD step; returns the method (in eval mode)."""
    data = {"n_data": 4, "image_size": SIZE, "in_channels": 3, "schedule_kind": "imagenet"}
    method = METHODS["NORM"].build(student, teacher, options(), data)
    params = [p for p in method.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    before = [p.detach().clone() for p in params]
    method.train()
    _, losses = method(torch.randn(4, 3, SIZE, SIZE), torch.tensor([0, 2, 1, 0]))
    assert set(losses) == {"ce", "norm"} and all(torch.isfinite(v) for v in losses.values())
    optimizer.zero_grad(set_to_none=True)
    sum(losses.values()).backward()
    optimizer.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, params))
    return method.eval()


@pytest.mark.parametrize("arch,matched,classifier,foldable", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_family_as_norm_student_and_teacher(arch, matched, classifier, foldable):
    torch.manual_seed(0)
    name = "torchvision:" + arch
    plain = external.build_plain(name, CLASSES, SIZE)
    twin = copy.deepcopy(plain)  # the teacher: one build serves both roles
    student = external.wrap(plain, SIZE)
    assert (student.matched_module_name, student.classifier_name) == (matched, "model." + classifier)
    assert student.transform_foldable == foldable
    one_step(student, tiny_partner())
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        reference = student(x)
        if foldable:  # the folded state loads into torchvision's own model and gives the same logits
            deployed = torchvision.models.get_model(arch, num_classes=CLASSES,
                                                    **({"image_size": SIZE} if arch.startswith("vit") else {}))
            deployed.load_state_dict(library_state(fold_transform_into_classifier(student)), strict=True)
            assert torch.allclose(deployed.eval()(x), reference, atol=1e-4, rtol=1e-4)
        else:
            with pytest.raises(ValueError, match="cannot be folded"):
                fold_transform_into_classifier(student)
            kept = deploy.deployed_student(student, zoo_for({"image_size": SIZE}), name)
            assert kept.kind == "kept_ft" and isinstance(kept.module.feature_transform.conv, nn.Conv2d)
            assert torch.allclose(kept.module(x), reference, atol=1e-4, rtol=1e-4)
    teacher = external.wrap(twin, SIZE)
    one_step(tiny_partner(), teacher)
    assert all(not p.requires_grad for p in teacher.parameters())


def tiny_cnn(widths=(8, 16)):
    """Two conv stages ('0' and '3', maps at strides 4 and 16) and a Linear head: any user's classifier."""
    a, b = widths
    return nn.Sequential(nn.Conv2d(3, a, 3, stride=4, padding=1), nn.BatchNorm2d(a), nn.ReLU(),
                         nn.Conv2d(a, b, 3, stride=4, padding=1), nn.BatchNorm2d(b), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(b, CLASSES))


def parsed(method, *extra):
    from helper.cli.parser import student_parser
    from train_imagenet_student import IMAGENET_PROFILE

    return student_parser(IMAGENET_PROFILE).parse_args(["--distill", method, "--nce_k", "4", "--feat_dim", "8",
                                                        "--hint_layer", "1", *extra])


LAST_MAP_METHODS = ["NORM", "NORM_CRD", "kd", "crd", "similarity", "pkt", "rkd", "correlation", "factor"]
STAGE_METHODS = ["attention", "nst", "vid", "kdsvd", "abound", "fsp", "hint"]


@pytest.mark.parametrize("method", LAST_MAP_METHODS + STAGE_METHODS)
def test_methods_on_a_pair_of_wrapped_models(method):
    """Last-map methods work on the automatic choice; stage methods on the stage lists --feature_modules names."""
    stage_methods = {name for name, cls in METHODS.items() if cls.needs_stages}
    assert stage_methods == set(STAGE_METHODS) | {"reviewkd", "semckd", "ofd"}  # what --feature_modules is asked for
    torch.manual_seed(0)
    stages = ["0", "3"] if method in STAGE_METHODS else None  # the stage-flag refusal: test_own_data
    widths = (8, 16) if method not in ("fsp", "kdsvd") else (12, 24)  # FSP/KDSVD need equal widths per stage
    student = external.wrap(tiny_cnn(widths), SIZE, feature_modules=stages)
    teacher = external.wrap(tiny_cnn((12, 24)), SIZE, feature_modules=stages)
    assert student.matched_module_name == "5" and student.transform_foldable  # the last ReLU, before the pooling
    opt = parsed(method)
    method_obj = METHODS[method].build(student, teacher, opt, {"n_data": 8, "image_size": SIZE, "in_channels": 3,
                                                               "schedule_kind": "imagenet"})
    images, targets = torch.randn(4, 3, SIZE, SIZE), torch.tensor([0, 1, 2, 0])
    index = torch.arange(4)
    contrast = torch.randint(0, 8, (4, 5))
    if getattr(method_obj, "has_init_stage", False):
        method_obj.set_epoch(1)
    method_obj.train()
    logits, losses = method_obj(images, targets, index, contrast)
    assert logits.shape == (4, CLASSES) and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())


@pytest.mark.parametrize("arch,matched,classifier,foldable", [
    ("resnet18", "layer4", "fc", True),
    ("regnetx_002", "final_conv", "head.fc", True),
    ("mobilenetv3_small_050", "blocks", "classifier", False),
])
def test_timm_classifiers_when_timm_is_installed(arch, matched, classifier, foldable):
    """timm is optional (without it: test_own_data's 'pip install timm' line); with it, names resolve the same way."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    student = external.build("timm:" + arch, CLASSES, SIZE)
    assert (student.matched_module_name, student.classifier_name, student.transform_foldable) == (
        matched, "model." + classifier, foldable)
    one_step(student, tiny_partner())
    if foldable:
        x = torch.randn(2, 3, SIZE, SIZE)
        deployed = timm.create_model(arch, pretrained=False, num_classes=CLASSES)
        deployed.load_state_dict(library_state(fold_transform_into_classifier(student)), strict=True)
        with torch.no_grad():
            assert torch.allclose(deployed.eval()(x), student(x), atol=1e-4, rtol=1e-4)
