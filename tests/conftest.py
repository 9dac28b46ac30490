"""Shared fixtures: tiny CIFAR-100 on disk and random teachers in RepDistiller's checkpoint format."""
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from tests.datafakes import write_tiny_cifar  # noqa: E402

torch.set_num_threads(1)  # tiny tensors: threads cost more than they give


def pytest_configure(config):
    """Register this suite's markers (they run in the normal suite; -m selects them)."""
    config.addinivalue_line("markers", "fake_cuda: device placement on a fake CUDA device (tests/fake_cuda.py)")
    config.addinivalue_line("markers", "on_device: needs $GPU_CHECK_DEVICE (benchmarks/gpu_check.sh runs them)")


@pytest.fixture(scope="session")
def tiny_cifar(tmp_path_factory):
    """A learnable 100-class CIFAR-100 with 64 train / 32 test images, in the real pickle layout."""
    root = tmp_path_factory.mktemp("cifar")
    write_tiny_cifar(str(root), num_classes=100, n_train=64, n_test=32, learnable=True, seed=0)
    return str(root)


@pytest.fixture(scope="session")
def teacher_file(tmp_path_factory):
    """Factory: a randomly initialised teacher saved as RepDistiller's {'epoch','model','accuracy','optimizer'}."""
    from models import model_dict

    folder = tmp_path_factory.mktemp("teachers")
    made = {}

    def make(name, num_classes=100):
        if (name, num_classes) not in made:
            torch.manual_seed(0)
            model = model_dict[name](num_classes=num_classes)
            path = folder / f"{name}_{num_classes}_vanilla" / "ckpt_epoch_240.pth"
            path.parent.mkdir()
            torch.save({"epoch": 240, "model": model.state_dict(), "accuracy": 70.0, "optimizer": {}}, path)
            made[(name, num_classes)] = str(path)
        return made[(name, num_classes)]

    return make
