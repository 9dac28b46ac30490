"""The teacher's inference copy: BatchNorm folding per family, the Distiller's installed copy, the layout choice."""
import argparse
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distiller_zoo import METHODS
from distiller_zoo.norm import norm_loss
from helper.teachers.inference import InferenceTeacher, install_inference_teacher
from models import imagenet_model_dict, model_dict
from models.cifar.resnetv2 import ResNet as BottleneckResNet
from models.fold_bn import count_batchnorms, fold_batchnorms

# Folding changes only float rounding: measured max |diff| / max |value| is ~1e-6 on these models.
RTOL = 2e-5


def randomise_batchnorms(model, seed=0):
    """Running statistics and affine parameters away from their identity defaults, so a fold is not trivial."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(0.2 * torch.randn(c, generator=g))
            m.running_var.copy_(0.5 + torch.rand(c, generator=g))
            m.weight.data.copy_(0.5 + torch.rand(c, generator=g))
            m.bias.data.copy_(0.1 * torch.randn(c, generator=g))
    return model.eval()


def relative_difference(a, b):
    return ((a - b).abs().max() / a.abs().max()).item()


def assert_same_outputs(reference, candidate, rtol=RTOL):
    (feat_a, logit_a), (feat_b, logit_b) = reference, candidate
    assert len(feat_a) == len(feat_b)
    for a, b in zip(list(feat_a) + [logit_a], list(feat_b) + [logit_b]):
        assert a.shape == b.shape
        assert relative_difference(a, b) <= rtol


# (builder, input size, BatchNorms that fold): every BN that reads a convolution's output alone folds; in the
# pre-activation WRN only each block's bn2 (after conv1) does — its bn1 reads the block input (a residual sum or
# the stem output, which is also a feature) and the final bn1 reads block3's output, also a feature.
FAMILIES = {
    "resnet8": (model_dict["resnet8"], 32, "all"),
    "resnetv2": (lambda **kw: BottleneckResNet([1, 1, 1, 1], **kw), 32, "all"),  # ResNet50's family, 1 block a stage
    "wrn_16_1": (model_dict["wrn_16_1"], 32, 6),
    "vgg8": (model_dict["vgg8"], 32, "all"),
    "MobileNetV2": (model_dict["MobileNetV2"], 32, "all"),
    "ShuffleV1": (model_dict["ShuffleV1"], 32, "all"),
    "ShuffleV2": (model_dict["ShuffleV2"], 32, "all"),
    "imagenet_resnet18": (imagenet_model_dict["resnet18"], 64, "all"),
    "imagenet_MobileNet": (imagenet_model_dict["MobileNet"], 64, "all"),
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_folded_teacher_gives_the_same_features_and_logits(family):
    build, size, expected = FAMILIES[family]
    torch.manual_seed(0)
    model = randomise_batchnorms(build(num_classes=10))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(3, 3, size, size)
    for preact in (False, True):
        folded, pairs = fold_batchnorms(model, x[:2], is_feat=True, preact=preact)
        total = count_batchnorms(model)
        assert len(pairs) == (total if expected == "all" else expected)
        assert count_batchnorms(folded) == total - len(pairs)
        with torch.no_grad():
            assert_same_outputs(model(x, is_feat=True, preact=preact), folded(x, is_feat=True, preact=preact))
    after = model.state_dict()  # the original is untouched: same tensors, same values, still frozen-free as built
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert count_batchnorms(model) == sum(1 for k in after if k.endswith("running_var"))
    assert not model.training


class SharedConvOutput(nn.Module):
    """conv1's output goes to bn1 AND to the shortcut; conv2's only to bn2; bn3 is run twice; conv4 feeds a hooked
    bn4; conv5's output is read through an attribute view (`.mT`) too."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv3, self.bn3 = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)
        self.conv4, self.bn4 = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)
        self.conv5, self.bn5 = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)
        self.seen = []
        self.bn4.register_forward_hook(lambda m, i, o: self.seen.append(o))

    def forward(self, x):
        a = self.conv1(x)
        y = F.relu(self.bn1(a)) + a
        y = F.relu(self.bn2(self.conv2(y)), inplace=True)
        z = self.bn3(self.conv3(y))
        z = self.bn3(z)
        e = self.conv5(z)
        return self.bn4(self.conv4(z)).mean((2, 3)) + self.bn5(e).mean((2, 3)) + e.mT.mean((2, 3))


def test_only_a_conv_whose_output_feeds_one_batchnorm_alone_is_folded():
    torch.manual_seed(0)
    model = randomise_batchnorms(SharedConvOutput())
    x = torch.randn(2, 3, 8, 8)
    folded, pairs = fold_batchnorms(model, x)
    assert pairs == [("conv2", "bn2")]
    assert isinstance(folded.bn2, nn.Identity) and isinstance(model.bn2, nn.BatchNorm2d)
    with torch.no_grad():
        assert relative_difference(model(x), folded(x)) <= RTOL


def test_folding_needs_eval_mode():
    with pytest.raises(ValueError, match="eval"):
        fold_batchnorms(model_dict["resnet8"](num_classes=10).train(), torch.randn(2, 3, 32, 32))


def build_norm(teacher_name="resnet8", student_name="resnet8", n=2):
    torch.manual_seed(0)
    teacher = randomise_batchnorms(model_dict[teacher_name](num_classes=10))
    student = model_dict[student_name](num_classes=10)
    opt = argparse.Namespace(co_sponge=n, ft="residual", norm_schedule="constant", epochs=10, gamma=None,
                             alpha=0.5, beta=None, ceta=None, kd_T=4.0)
    data = {"n_data": 16, "image_size": 32, "in_channels": 3, "schedule_kind": "cifar"}
    return METHODS["NORM"].build(student, teacher, opt, data).train()


def losses_and_grads(method, x, y):
    method.zero_grad(set_to_none=True)
    _, losses = method(x, y)
    sum(losses.values()).backward()
    grads = {k: p.grad.clone() for k, p in method.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in losses.items()}, grads


def test_installed_inference_teacher_gives_the_same_losses_and_gradients_and_stays_out_of_the_state(tmp_path):
    method = build_norm()
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    keys, n_params = set(method.state_dict()), len(list(method.parameters()))
    reference = losses_and_grads(method, x, y)
    teacher_state = {k: v.clone() for k, v in method.teacher.state_dict().items()}

    copy = install_inference_teacher(method, x, memory_format="channels_last", cache_path=str(tmp_path / "c.json"))
    assert copy is method.inference_teacher and copy.folded == count_batchnorms(method.teacher)
    assert "9 of 9 BatchNorms folded; channels_last; eager" in copy.summary()
    assert set(method.state_dict()) == keys and len(list(method.parameters())) == n_params
    assert set(method.method_state_dict()) == {k for k in keys if not k.startswith(("student.", "teacher."))}
    method.train()
    assert not copy.network.training and isinstance(method.teacher.bn1, nn.BatchNorm2d)
    losses, grads = losses_and_grads(method, x, y)
    assert losses.keys() == reference[0].keys() and set(losses) == {"ce", "kd", "norm"}
    for k in losses:
        assert relative_difference(reference[0][k], losses[k]) <= RTOL
    assert grads.keys() == reference[1].keys()
    for k in grads:
        assert (grads[k] - reference[1][k]).abs().max() <= 1e-4 * reference[1][k].abs().max() + 1e-7
    # the original teacher is untouched, its layout too
    state = method.teacher.state_dict()
    assert all(torch.equal(teacher_state[k], state[k]) and state[k].is_contiguous() for k in state)
    # the same (features, logits) as the original teacher, for preact too (AB asks for it)
    feats = method.teacher_forward(x)
    with torch.no_grad():
        assert_same_outputs(method.teacher(x, is_feat=True), feats)
    method.preact = True
    install_inference_teacher(method, x, memory_format="contiguous", cache_path=str(tmp_path / "c.json"))
    with torch.no_grad():
        assert_same_outputs(method.teacher(x, is_feat=True, preact=True), method.teacher_forward(x))


def test_inference_teacher_refuses_another_device_and_is_a_snapshot_rebuilt_on_demand(tmp_path):
    method = build_norm()
    x = torch.randn(2, 3, 32, 32)
    install_inference_teacher(method, x, memory_format="contiguous")
    with pytest.raises(RuntimeError, match="lives on cpu"):
        method.teacher_forward(torch.empty(2, 3, 32, 32, device="meta"))
    with torch.no_grad():
        method.teacher.fc.bias.add_(1.0)  # e.g. a teacher loaded after the copy was made
        stale = method.teacher_forward(x)[1]
        assert not torch.allclose(stale, method.teacher(x))  # the copy does not follow: the trainer rebuilds it
    install_inference_teacher(method, x, memory_format="contiguous")
    with torch.no_grad():
        assert_same_outputs(method.teacher(x, is_feat=True), method.teacher_forward(x))


def test_layout_is_measured_once_then_read_from_the_cache(tmp_path):
    teacher = randomise_batchnorms(model_dict["resnet8"](num_classes=10))
    x = torch.randn(4, 3, 32, 32)
    cache = tmp_path / "sub" / "layout.json"
    first = InferenceTeacher(teacher, x, cache_path=str(cache))
    assert first.layout_source == "measured" and set(first.layout_seconds) == {"contiguous", "channels_last"}
    assert first.memory_format == min(first.layout_seconds, key=first.layout_seconds.get)
    entries = json.loads(cache.read_text())
    assert len(entries) == 1
    key = next(iter(entries))
    assert entries[key]["format"] == first.memory_format
    # the cache decides from then on: flip its entry and a new copy follows it
    other = "contiguous" if first.memory_format == "channels_last" else "channels_last"
    cache.write_text(json.dumps({key: {"format": other, "seconds": {}}}))
    second = InferenceTeacher(teacher, x, cache_path=str(cache))
    assert second.layout_source == "cached" and second.memory_format == other
    weight = second.network.conv1.weight
    assert weight.is_contiguous(memory_format=torch.channels_last if other == "channels_last"
                                else torch.contiguous_format)
    # another batch shape is another entry
    InferenceTeacher(teacher, torch.randn(2, 3, 32, 32), cache_path=str(cache))
    assert len(json.loads(cache.read_text())) == 2


def test_an_unwritable_layout_cache_only_costs_the_cache(tmp_path, monkeypatch):
    # a full disk (or a read-only ~/.cache) makes the atomic writer raise; the teacher is still measured and served
    import errno
    import tempfile

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tempfile, "mkstemp", no_space)
    teacher = randomise_batchnorms(model_dict["resnet8"](num_classes=10))
    x = torch.randn(4, 3, 32, 32)
    cache = tmp_path / "layout.json"
    served = InferenceTeacher(teacher, x, cache_path=str(cache))
    assert served.layout_source == "measured" and not cache.exists()
    teacher.eval()
    with torch.no_grad():
        assert_same_outputs(teacher(x, is_feat=True), served(x))


def test_a_failing_compile_leaves_the_eager_copy_serving(monkeypatch):
    teacher = randomise_batchnorms(model_dict["resnet8"](num_classes=10))
    x = torch.randn(2, 3, 32, 32)

    def broken_compile(*args, **kwargs):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(torch, "compile", broken_compile)
    copy = InferenceTeacher(teacher, x, memory_format="contiguous", compile=True)
    assert not copy.compiled and "torch.compile of the teacher failed" in copy.summary()
    with torch.no_grad():
        assert_same_outputs(teacher(x, is_feat=True), copy(x))


def test_inference_teacher_under_autocast_matches_the_original_under_autocast():
    teacher = randomise_batchnorms(model_dict["resnet8"](num_classes=10))
    x = torch.randn(2, 3, 32, 32)
    autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731
    copy = InferenceTeacher(teacher, x, memory_format="channels_last", autocast=autocast)
    with autocast(), torch.no_grad():
        reference, result = teacher(x, is_feat=True), copy(x)
    assert_same_outputs(reference, result, rtol=3e-2)  # bf16 rounding of the convolutions, in both


def test_norm_loss_keeps_the_maps_layout_in_its_gradient():
    torch.manual_seed(0)
    e = torch.randn(2, 8, 4, 4)
    t = torch.randn(2, 4, 4, 4)
    expected = 2 * ((e.unflatten(1, (2, 4)) - t.unsqueeze(1)) ** 2).mean()  # tile-free form of N * MSE(e, tile(t))
    for e_format in (torch.contiguous_format, torch.channels_last):
        for t_format in (torch.contiguous_format, torch.channels_last):
            leaf = e.clone().requires_grad_()
            expanded = leaf.contiguous(memory_format=e_format) * 1.0  # not a leaf: the gradient's own layout shows
            seen = []
            expanded.register_hook(seen.append)
            loss = norm_loss(expanded, t.contiguous(memory_format=t_format))
            loss.backward()
            assert torch.allclose(loss, expected, rtol=1e-6)
            assert torch.allclose(leaf.grad, 2 * 2 * (e - t.repeat(1, 2, 1, 1)) / e.numel(), rtol=1e-5, atol=1e-7)
            assert seen[0].is_contiguous(memory_format=e_format)
