"""CUDA-only code paths closed on the CPU with stand-ins (docs/cuda-paths.md lists every path and its test)."""
import pytest
import torch

from helper.runtime.device import Runtime


def test_a_checkpoint_of_cuda_tensors_loads_on_the_cpu(tmp_path, monkeypatch):
    from helper.runs.checkpoint import load_checkpoint

    path = tmp_path / "last.pth"
    state = {"model": {"w": torch.arange(6.0).view(2, 3)}, "epoch": 3}
    with monkeypatch.context() as patch:  # the file a CUDA run writes: every storage tagged cuda:0
        patch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        torch.save(state, path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="CUDA"):  # the file really names CUDA: a plain load refuses it here
        torch.load(path, weights_only=True)
    loaded = load_checkpoint(str(path))
    assert loaded["model"]["w"].device.type == "cpu" and torch.equal(loaded["model"]["w"], state["model"]["w"])


def test_the_layout_cache_is_keyed_by_the_gpu_name_not_the_cpu(monkeypatch):
    from helper.teachers.inference import device_signature

    names = iter(["NVIDIA H100 80GB HBM3", "NVIDIA H200"])
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: next(names))
    h100, h200 = device_signature(torch.device("cuda", 0)), device_signature(torch.device("cuda", 0))
    assert h100.startswith("NVIDIA H100 80GB HBM3, torch ") and h200.startswith("NVIDIA H200, torch ")
    assert "threads" not in h100  # the CPU's thread count does not change a GPU's kernels
    assert "threads" in device_signature(torch.device("cpu"))


def test_loaders_pin_host_memory_for_cuda_only():
    from helper.loaders.loader import eval_loader, train_loader

    data = torch.utils.data.TensorDataset(torch.zeros(8, 3, 4, 4), torch.zeros(8, dtype=torch.long))
    for device, pinned in (("cuda", True), ("cpu", False)):
        runtime = Runtime(torch.device(device))
        assert train_loader(data, 4, 0, runtime, num_workers=0).pin_memory is pinned
        assert eval_loader(data, 4, runtime, num_workers=0).pin_memory is pinned


def test_torchrun_on_gpus_joins_nccl_on_cuda_local_rank(monkeypatch):
    from helper.runtime import device as runtime_module

    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.append(("set_device", device)))
    monkeypatch.setattr(runtime_module.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(runtime_module.dist, "init_process_group",
                        lambda backend: calls.append(("init_process_group", backend)))
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", torch.backends.cudnn.benchmark)  # restored afterwards
    for key, value in {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}.items():
        monkeypatch.setenv(key, value)
    runtime = runtime_module.setup_runtime("auto", amp="bf16")
    assert runtime.device == torch.device("cuda", 1) and (runtime.rank, runtime.world_size) == (1, 2)
    assert calls == [("set_device", torch.device("cuda", 1)), ("init_process_group", "nccl")]
    assert runtime.amp_dtype is torch.bfloat16 and runtime.grad_scaler() is None
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    calls.clear()
    cpu = runtime_module.setup_runtime("cpu")  # gloo on the CPU, and no CUDA call at all
    assert cpu.device == torch.device("cpu") and calls == [("init_process_group", "gloo")]


@pytest.mark.filterwarnings("ignore:.*CUDA is not available")  # the stand-in machine has none
def test_fp16_on_cuda_gets_a_cuda_gradient_scaler():
    scaler = Runtime(torch.device("cuda"), amp_dtype=torch.float16).grad_scaler()
    assert scaler is not None and scaler._device == "cuda"
    assert Runtime(torch.device("cuda"), amp_dtype=torch.bfloat16).grad_scaler() is None
