"""The fast flags that run on CPU give the reference step's loss (within their numeric tolerance)."""
import argparse
import copy

import pytest
import torch

from distiller_zoo import METHODS
from helper.training.engine import train_one_epoch
from helper.runtime.device import Runtime
from helper.runtime.device import compile_networks
from models import model_dict


def build_method():
    torch.manual_seed(0)
    opt = argparse.Namespace(gamma=None, alpha=0.5, beta=None, ceta=None, kd_T=4.0, co_sponge=2, ft="residual",
                             norm_schedule="official", epochs=240)
    teacher, student = model_dict["resnet8"](num_classes=10), model_dict["resnet8"](num_classes=10)
    data = {"n_data": 8, "image_size": 32, "in_channels": 3, "schedule_kind": "cifar"}
    return METHODS["NORM"].build(student, teacher, opt, data)


def one_step(method, runtime, compile_model=False, steps=2):
    method = runtime.to_device(copy.deepcopy(method))
    if compile_model:
        compile_networks(method.student, method.teacher)
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    generator = torch.Generator().manual_seed(1)
    batch = (torch.randn(8, 3, 32, 32, generator=generator), torch.randint(0, 10, (8,), generator=generator),
             torch.arange(8))
    stats = train_one_epoch(method, [batch] * steps, optimizer, runtime, epoch=30, scaler=runtime.grad_scaler(),
                            print_freq=100, progress=False)
    return stats


@pytest.fixture(scope="module")
def reference():
    method = build_method()
    return method, one_step(method, Runtime(torch.device("cpu")))


@pytest.mark.parametrize("flags,tol", [({"channels_last": True}, 1e-5), ({"amp_dtype": torch.bfloat16}, 3e-2)],
                         ids=["channels_last", "bf16"])
def test_fast_flags_match_the_reference_step(reference, flags, tol):
    method, expected = reference
    got = one_step(method, Runtime(torch.device("cpu"), **flags))
    for key in ("loss/ce", "loss/kd", "loss/norm"):
        assert got[key] == pytest.approx(expected[key], rel=tol), key


def test_fp16_with_gradient_scaler_matches_the_reference_loss():
    method = build_method()
    expected = one_step(method, Runtime(torch.device("cpu")), steps=1)
    runtime = Runtime(torch.device("cpu"), amp_dtype=torch.float16)
    assert runtime.grad_scaler() is not None
    got = one_step(method, runtime, steps=1)   # the loss of the first step, before any update
    for key in ("loss/ce", "loss/kd", "loss/norm"):
        assert got[key] == pytest.approx(expected[key], rel=1e-2), key


def test_compiled_networks_match_the_reference_step(reference):
    method, expected = reference
    got = one_step(method, Runtime(torch.device("cpu")), compile_model=True)
    for key in ("loss/ce", "loss/kd", "loss/norm"):
        assert got[key] == pytest.approx(expected[key], rel=1e-4), key


def test_device_resident_data_trains_through_the_script_and_refuses_crd(tiny_cifar, tmp_path, teacher_file):
    import train_cifar_student
    import train_cifar_teacher
    from helper.errors import UsageError

    summary = train_cifar_teacher.main(["--model", "resnet8", "--data_root", tiny_cifar, "--save_root",
                                        str(tmp_path), "--epochs", "1", "--batch_size", "16", "--gpu_data",
                                        "--seed", "2"])
    assert summary["config"]["gpu_data"] is True and 0 <= summary["best_acc"] <= 100
    with pytest.raises(UsageError, match="--gpu_data"):
        train_cifar_student.main(["--path_t", teacher_file("resnet8"), "--model_s", "resnet8", "--distill", "crd",
                                  "--data_root", tiny_cifar, "--save_root", str(tmp_path), "--gpu_data"])
    assert not (tmp_path / "student_model").exists()  # the refused run left no folder behind


class LargeFeatures(torch.nn.Module):
    """A network whose last map has batch-Gram entries far above float16's 65504 (as resnet32x4's do)."""

    def __init__(self, channels):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, channels, 3, padding=1)
        self.fc = torch.nn.Linear(channels, 10)

    def forward(self, x, is_feat=False, preact=False):
        f = self.conv(x) * 30
        pooled = f.mean((2, 3))
        logits = self.fc(pooled)
        return ([f, pooled], logits) if is_feat else logits


def test_baseline_losses_are_computed_in_float32_under_fp16_autocast():
    torch.manual_seed(0)
    opt = argparse.Namespace(gamma=None, alpha=None, beta=None, ceta=None, kd_T=4.0)
    method = METHODS["similarity"].build(LargeFeatures(8), LargeFeatures(16), opt, {})
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
    _, expected = method(x, y)
    with torch.autocast("cpu", dtype=torch.float16):
        feats, _ = method.teacher(x, is_feat=True)
        assert feats[-2].dtype == torch.float16
        assert not torch.isfinite(feats[-2].flatten(1) @ feats[-2].flatten(1).t()).all()  # what would overflow
        _, got = method(x, y)
    assert got["similarity"].dtype == torch.float32
    assert got["similarity"].item() == pytest.approx(expected["similarity"].item(), rel=2e-2)
