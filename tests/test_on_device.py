"""Checks that need the run's real device: run on CUDA by benchmarks/gpu_check.sh, on the CPU by its --smoke mode.

The device comes from $GPU_CHECK_DEVICE (set by gpu_check.sh); without it every test here is skipped, so the normal
suite runs them only through the smoke run (tests/test_gpu_check.py). Tolerances are stated per check: on CUDA the
fp32 reference itself runs its convolutions in TF32 (PyTorch's default), which is ~1e-3 relative.
"""
import os

import pytest
import torch

from helper.runs.checkpoint import load_checkpoint
from helper.runtime.device import Runtime

pytestmark = pytest.mark.on_device

DEVICE = os.environ.get("GPU_CHECK_DEVICE")
if DEVICE is None:
    pytest.skip("run by benchmarks/gpu_check.sh (GPU_CHECK_DEVICE names the device)", allow_module_level=True)
if DEVICE.startswith("cuda") and not torch.cuda.is_available():
    pytest.skip(f"GPU_CHECK_DEVICE={DEVICE} but no CUDA device is available", allow_module_level=True)
ON_CUDA = DEVICE.startswith("cuda")
FP32_RTOL = 5e-3 if ON_CUDA else 1e-5  # two fp32 runs that may pick other kernels (TF32 on CUDA)


def device_runtime(**flags):
    return Runtime(torch.device(DEVICE), **flags)


@pytest.fixture(scope="module")
def reference():
    """The fp32 method and its losses after 1 and after 2 steps on the device."""
    from tests.test_fast_path import build_method, one_step

    method = build_method()
    return method, {steps: one_step(method, device_runtime(), steps=steps) for steps in (1, 2)}


# fp16 is compared on its first step only: its scaler may skip a step (an overflow probe), which moves the second
@pytest.mark.parametrize("flags,steps,rtol", [({"channels_last": True}, 2, FP32_RTOL),
                                              ({"amp_dtype": torch.bfloat16}, 2, 3e-2),
                                              ({"amp_dtype": torch.float16}, 1, 1e-2)],
                         ids=["channels_last", "bf16", "fp16"])
def test_amp_and_channels_last_steps_match_fp32(reference, flags, steps, rtol):
    from tests.test_fast_path import one_step

    method, expected = reference
    got = one_step(method, device_runtime(**flags), steps=steps)
    for key in ("loss/ce", "loss/kd", "loss/norm"):
        assert got[key] == pytest.approx(expected[steps][key], rel=rtol), key


def test_fused_sgd_matches_the_foreach_step():
    torch.manual_seed(0)
    params = [torch.randn(64, 32, device=DEVICE), torch.randn(32, device=DEVICE)]
    grads = [torch.randn_like(p) for p in params]
    results = []
    for fused in (False, True):
        copies = [torch.nn.Parameter(p.clone()) for p in params]
        optimizer = torch.optim.SGD(copies, lr=0.1, momentum=0.9, weight_decay=5e-4, fused=fused)
        for _ in range(3):
            for p, g in zip(copies, grads):
                p.grad = g.clone()
            optimizer.step()
        results.append(copies)
    for a, b in zip(*results):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.skipif(not ON_CUDA, reason="inductor on the CPU compiles C++ for minutes: tests/test_fast_path.py has it")
def test_compiled_step_matches_the_eager_step(reference):
    from tests.test_fast_path import one_step

    method, expected = reference
    got = one_step(method, device_runtime(), compile_model=True)
    for key in ("loss/ce", "loss/kd", "loss/norm"):
        assert got[key] == pytest.approx(expected[2][key], rel=FP32_RTOL), key


def test_gpu_data_gives_the_cpu_pipelines_distribution(tiny_cifar):
    """The device loader's batches against torchvision's transform on the same images: per-channel mean and std
    over an epoch of crops and flips (independent random streams: 2% apart at most), and the loader on the device
    equals itself on the CPU (same draws) to float rounding."""
    from dataset import build_dataset
    from helper.loaders.device import device_loader_for

    train = build_dataset("cifar100", tiny_cifar, "train", download=False, image_size=None, seed=0)
    on_device = device_loader_for(train, 16, 0, device_runtime())
    on_cpu = device_loader_for(train, 16, 0, Runtime(torch.device("cpu")))
    device_images, cpu_images = [], []
    for epoch in range(1, 9):
        for loader, out in ((on_device, device_images), (on_cpu, cpu_images)):
            loader.sampler.set_epoch(epoch, 0)
            out += [images.cpu() for images, _, _ in loader]
    device_images, cpu_images = torch.cat(device_images), torch.cat(cpu_images)
    assert torch.allclose(device_images, cpu_images, atol=1e-6)
    torchvision = torch.stack([train[(epoch, i)][0] for epoch in range(1, 9) for i in range(len(train))])
    for stat in (lambda x: x.mean(dim=(0, 2, 3)), lambda x: x.std(dim=(0, 2, 3))):
        assert torch.allclose(stat(device_images), stat(torchvision), rtol=0.02, atol=0.02)


def _teacher_args(tiny_cifar, save, *extra):
    return ["--model", "resnet8", "--data_root", tiny_cifar, "--save_root", str(save), "--epochs", "2",
            "--batch_size", "16", "--num_workers", "0", "--seed", "3", "--print_freq", "100", "--deterministic",
            "--device", DEVICE, *extra]


def test_a_resumed_run_on_the_device_is_bit_identical_and_its_checkpoint_loads_on_cpu(tiny_cifar, tmp_path,
                                                                                        monkeypatch):
    import train_cifar_teacher
    from models import model_dict
    from tests.test_resume import interrupt_after

    whole = train_cifar_teacher.main(_teacher_args(tiny_cifar, tmp_path / "whole"))
    interrupt_after(monkeypatch, 2)
    with pytest.raises(SystemExit):
        train_cifar_teacher.main(_teacher_args(tiny_cifar, tmp_path / "parts"))
    monkeypatch.undo()
    parts = train_cifar_teacher.main(_teacher_args(tiny_cifar, tmp_path / "parts", "--resume"))
    a, b = (load_checkpoint(os.path.join(s["run"], "resnet8_last.pth")) for s in (whole, parts))
    for key, value in a["model"].items():
        assert value.device.type == "cpu"  # saved on the device, read on the CPU
        assert torch.equal(value, b["model"][key]), key
    model = model_dict["resnet8"](num_classes=100)
    model.load_state_dict(a["model"])
    assert torch.isfinite(model(torch.randn(2, 3, 32, 32))).all()
