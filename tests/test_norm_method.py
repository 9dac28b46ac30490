"""The NORM method on real architectures: matched shapes of the paper's pairs, the full objective, the frozen
teacher, and conversion of officially laid-out student checkpoints."""
import argparse

import pytest
import torch
import torch.nn.functional as F

from distiller_zoo import METHODS
from helper.runs.checkpoint import load_checkpoint
from helper.teachers.loading import load_student
from models import model_dict
from models.norm import attach_feature_transform

DATA = {"n_data": 16, "image_size": 32, "in_channels": 3, "schedule_kind": "cifar"}


def options(**kw):
    base = dict(gamma=None, alpha=None, beta=None, ceta=None, kd_T=4.0, co_sponge=8, ft="residual",
                norm_schedule="official", epochs=240, feat_dim=16, nce_k=4, nce_t=0.07, nce_m=0.5, mode="exact",
                crd_weight=2.5)
    base.update(kw)
    return argparse.Namespace(**base)


# (teacher, student, C_s, C_t, student HxW, teacher HxW) from the paper's Tables 1-2
PAIRS = [
    ("wrn_40_2", "wrn_16_2", 128, 128, 8, 8), ("wrn_40_2", "wrn_40_1", 64, 128, 8, 8),
    ("resnet56", "resnet20", 64, 64, 8, 8), ("resnet110", "resnet20", 64, 64, 8, 8),
    ("resnet110", "resnet32", 64, 64, 8, 8), ("resnet32x4", "resnet8x4", 256, 256, 8, 8),
    ("vgg13", "vgg8", 512, 512, 4, 4), ("vgg13", "MobileNetV2", 1280, 512, 2, 4),
    ("ResNet50", "MobileNetV2", 1280, 2048, 2, 4), ("ResNet50", "vgg8", 512, 2048, 4, 4),
    ("resnet32x4", "ShuffleV1", 960, 256, 4, 8), ("resnet32x4", "ShuffleV2", 1024, 256, 4, 8),
    ("wrn_40_2", "ShuffleV1", 960, 128, 4, 8),
]


@pytest.mark.parametrize("model_t,model_s,c_s,c_t,hw_s,hw_t", PAIRS, ids=[f"{t}->{s}" for t, s, *_ in PAIRS])
def test_matched_shapes_of_the_paper_pairs(model_t, model_s, c_s, c_t, hw_s, hw_t):
    torch.manual_seed(0)
    teacher, student = model_dict[model_t](num_classes=100), model_dict[model_s](num_classes=100)
    method = METHODS["NORM"].build(student, teacher, options(), DATA)
    ft = student.feature_transform
    assert (ft.in_channels, ft.teacher_channels, ft.n) == (c_s, c_t, 8)
    x = torch.randn(2, 3, 32, 32)
    feat_s, _ = student(x, is_feat=True)
    feat_t, _ = teacher(x, is_feat=True)
    assert feat_s[-2].shape == (2, 8 * c_t, hw_s, hw_s)
    assert feat_t[-2].shape == (2, c_t, hw_t, hw_t)
    assert feat_s[-1].shape == (2, c_s)   # pooled after the FT: the student's own width
    logits, losses = method(x, torch.tensor([1, 2]))
    assert logits.shape == (2, 100) and set(losses) == {"ce", "norm"}


def test_full_objective_equals_independent_computation():
    torch.manual_seed(1)
    teacher, student = model_dict["resnet20"](num_classes=10), model_dict["resnet8"](num_classes=10)
    method = METHODS["NORM"].build(student, teacher, options(gamma=0.5, alpha=0.7, beta=2.0, co_sponge=3), DATA)
    method.set_epoch(15)   # official β1 = 0.5 for epochs 10-19
    method.train()
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 3, 5, 9])
    logits, losses = method(x, y)

    with torch.no_grad():
        feat_t, z_t = teacher(x, is_feat=True)
    feat_s, z_s = student(x, is_feat=True)  # same BN batch statistics, train mode

    def ln(z):
        return 2.5 * (z - z.mean(1, keepdim=True)) / torch.sqrt(z.var(1, unbiased=False, keepdim=True) + 1e-7)

    ce = F.cross_entropy(ln(z_s), y)
    p_t = F.softmax(ln(z_t) / 4, 1)
    kd = (p_t * (torch.log(p_t) - F.log_softmax(ln(z_s) / 4, 1))).sum() * 16 / 4
    norm = 3 * ((feat_s[-2] - feat_t[-2].repeat(1, 3, 1, 1)) ** 2).mean()
    torch.testing.assert_close(losses["ce"], 0.5 * ce)
    torch.testing.assert_close(losses["kd"], 0.7 * kd)
    torch.testing.assert_close(losses["norm"], 2.0 * 0.5 * norm)
    torch.testing.assert_close(logits, z_s)


def test_training_steps_leave_the_teacher_untouched():
    torch.manual_seed(2)
    teacher, student = model_dict["resnet20"](num_classes=10), model_dict["resnet8"](num_classes=10)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    method = METHODS["NORM"].build(student, teacher, options(alpha=1.0, co_sponge=2), DATA)
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.1)
    method.train()
    assert not teacher.training
    for _ in range(2):
        _, losses = method(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3]))
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert all(p.grad is None for p in teacher.parameters())
    assert student.feature_transform.expand[0].weight.grad is not None


def official_layout(state, model_s):
    """Rename our FT keys to the official student files' and add their unused extras."""
    ft = "layer4" if model_s == "MobileNetV2" else "layer3"
    out = {}
    for key, value in state.items():
        key = key.replace("feature_transform.expand.", f"{ft}1.").replace("feature_transform.contract.", f"{ft}2.")
        out["module." + key] = value
    if model_s.startswith("resnet"):
        out["module.alpha"] = torch.ones(4)
    if model_s.startswith("wrn"):
        out["module.layer21.0.weight"] = torch.zeros(64, 32, 1, 1)
    return out


@pytest.mark.parametrize("model_s,c_t", [("resnet8x4", 256), ("wrn_16_1", 64), ("vgg8", 512),
                                         ("MobileNetV2", 512), ("ShuffleV2", 256)])
def test_official_student_checkpoint_converts_to_the_same_logits(tmp_path, monkeypatch, model_s, c_t):
    torch.manual_seed(3)
    ours = attach_feature_transform(model_dict[model_s](num_classes=100), c_t, 8)
    for module in ours.modules():  # give BN non-trivial statistics so a wrong mapping shows
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.8, 1.2)
    ours.eval()
    path = tmp_path / f"{model_s}_best.pth"
    monkeypatch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")  # saved on a GPU
    torch.save({"epoch": 240, "model": official_layout(ours.state_dict(), model_s),
                "best_acc": torch.tensor(71.0)}, path)
    monkeypatch.undo()
    model, info = load_student(model_dict, load_checkpoint(str(path)), str(path), model_s=model_s, n=8, official=True)
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ours(x), atol=1e-5, rtol=1e-5)
    assert info["saved_accuracy"] == pytest.approx(71.0)
    assert getattr(model, "norm_student", False) == (model_s == "MobileNetV2")


@pytest.mark.parametrize("model_s,ft_keys", [("resnet18S", "layer4"), ("MobileNet", "layer3")])
def test_official_imagenet_student_converts_to_the_same_logits(tmp_path, model_s, ft_keys):
    from models import imagenet_model_dict

    torch.manual_seed(4)
    ours = attach_feature_transform(imagenet_model_dict[model_s](num_classes=10), 64, 2).eval()
    state = {}
    for key, value in ours.state_dict().items():   # DataParallel prefix and the official FT names
        key = key.replace("feature_transform.expand.", f"{ft_keys}1.").replace("feature_transform.contract.",
                                                                              f"{ft_keys}2.")
        state["module." + key] = value
    if model_s == "resnet18S":   # the unused parameters the official resnet students carry
        state["module.layer21.0.weight"] = torch.zeros(128, 128, 1, 1)
        state["module.layer22.0.weight"] = torch.zeros(128, 128, 1, 1)
    path = tmp_path / "student.pth"
    torch.save({"epoch": 100, "model": state, "best_acc": torch.tensor(70.0)}, path)
    model, _ = load_student(imagenet_model_dict, load_checkpoint(str(path)), str(path), model_s=model_s, n=2,
                            official=True)
    size = 224 if model_s == "MobileNet" else 64
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), ours(x), atol=1e-5, rtol=1e-5)
