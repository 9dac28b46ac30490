"""A fake CUDA device for placement tests on machines without a GPU (issue 24).

PyTorch's FakeTensorMode runs ops on `device="cuda"` without a GPU: every result has the right shape, dtype and
device, no value is computed, and an op mixing CUDA and CPU tensors raises FakeTensorDeviceMismatchError, as it
would on a GPU. Reading a value on the host (`.item()`, `bool(t)`, `.tolist()`) raises DataDependentOutputException.

Two limits of the mode and how `fake_cuda()` handles them:
- nn.Module.to/.double/... on a module whose parameters are already fake swaps the tensors
  (torch.utils.swap_tensors), which the mode's own weak references refuse (and replacing the data in place crashes);
  inside `fake_cuda()` modules convert as PyTorch does with overwrite_module_params_on_conversion: every parameter
  and buffer is replaced by its converted copy. What moves is the same: registered parameters and buffers only.
- code that computes on the CPU on purpose (a sampler's permutation, the epoch's augmentation draws from a CPU
  generator) gets fake CPU tensors, whose values cannot be read: `on_the_host_for_real` runs such a method outside
  the mode, as it runs on a GPU machine, and its results enter the mode as real CPU tensors.
- backward needs a CUDA context (the autograd engine's device threads), so it is not run under the mode: the step's
  backward and optimizer run on the CPU tests and are first run on CUDA by benchmarks/gpu_check.sh.
"""
import contextlib

import torch
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode, unset_fake_temporarily

CUDA = torch.device("cuda", 0)


@contextlib.contextmanager
def fake_cuda():
    """Inside: tensors may be made on `cuda` without a GPU (fake), and a CUDA/CPU mix raises."""
    from helper.loaders import device as device_data

    device_data._statistics.cache_clear()  # a cached tensor must not cross into (or out of) a fake mode
    real_apply = torch.nn.Module._apply
    torch.nn.Module._apply = _apply_by_replacing
    try:
        with FakeTensorMode(allow_non_fake_inputs=True) as mode:
            yield mode
    finally:
        torch.nn.Module._apply = real_apply
        device_data._statistics.cache_clear()


def _apply_by_replacing(self, fn, recurse=True):
    """nn.Module._apply as PyTorch does it with overwrite_module_params_on_conversion: each parameter replaced by a
    new Parameter holding fn(param), each buffer by fn(buffer) (no swap; gradients are never present here)."""
    if recurse:
        for child in self.children():
            child._apply(fn)
    for key, param in self._parameters.items():
        if param is not None:
            with torch.no_grad():
                applied = fn(param)
            self._parameters[key] = torch.nn.Parameter(applied, param.requires_grad)
    for key, buffer in self._buffers.items():
        if buffer is not None:
            self._buffers[key] = fn(buffer)
    return self


def devices_of(module):
    """The devices of every parameter and buffer of `module`."""
    return {t.device for t in list(module.parameters()) + list(module.buffers())}


@contextlib.contextmanager
def on_the_host_for_real(owner, name):
    """Inside: `owner.name` runs outside the fake mode (real CPU tensors, readable values); a generator's items are
    made outside it too."""
    original = getattr(owner, name)

    def real(*args, **kwargs):
        with unset_fake_temporarily():
            result = original(*args, **kwargs)
            return iter(list(result)) if name == "__iter__" else result

    setattr(owner, name, real)
    try:
        yield
    finally:
        setattr(owner, name, original)
