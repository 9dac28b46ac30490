"""The defects found by reading the CUDA paths (issue 24), each reproduced or simulated on the CPU.

- a resume overwrote SGD's operational `fused` flag with the checkpoint's;
- the teacher's BatchNorm fold was checked in TF32 (cuDNN's default for fp32 convolutions) and refused;
- `--gids a,b --resume` after a kill before the first checkpoint was checked against world size 1;
- host synchronisations in the step (GradScaler's unfused step, the DDP stop check, RKD's masked mean);
- `--gids` ids meant visible indices for one id and physical ids for several;
- a `--device cpu` run created a CUDA context (RNG state) when a GPU was present.
"""
import os
import signal

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import train_cifar_teacher
from helper.cli import gids as gids_module, main as main_module, teacher as teacher_role
from helper.errors import UsageError
from helper.runs.checkpoint import load_checkpoint
from helper.runs.config import run_config
from helper.runs.store import RunStore
from helper.runtime import device as runtime_module
from helper.runtime.device import Runtime
from helper.training import optim, signals, trainer as trainer_module
from helper.training.engine import train_one_epoch
from tests.test_resume import interrupt_after

# ops through which a tensor's value reaches the host: on CUDA each one waits for the device (a host sync)
SYNC_OPS = {"_local_scalar_dense", "is_nonzero", "nonzero", "masked_select", "_unique2", "unique_consecutive",
            "repeat_interleave"}
# ops that sync when indexed by a boolean mask: the kernel turns the mask into indices (a nonzero). On the CPU that
# nonzero runs inside the kernel and is never dispatched on its own, so the counter looks at the index's dtype.
MASK_INDEX_OPS = {"index", "index_put", "index_put_", "_index_put_impl_"}


def _indexes_by_a_mask(func, args):
    """Whether `func(*args)` is an indexing op with a boolean (or uint8) mask among its indices."""
    if func.overloadpacket.__name__ not in MASK_INDEX_OPS or len(args) < 2:
        return False
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in args[1])


class HostSyncCounter(TorchDispatchMode):
    """Counts the dispatched ops that read a tensor's value on the host (`.item()`, `bool(t)`, `nonzero`, `t[mask]`,
    ...)."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ in SYNC_OPS:
            self.calls.append(func.overloadpacket.__name__)
        elif _indexes_by_a_mask(func, args):
            self.calls.append(f"{func.overloadpacket.__name__} by a mask")
        return func(*args, **(kwargs or {}))


def teacher_args(tiny_cifar, save, *extra):
    return ["--model", "resnet8", "--data_root", tiny_cifar, "--save_root", str(save), "--epochs", "2",
            "--batch_size", "16", "--num_workers", "0", "--seed", "1", "--print_freq", "100", *extra]


def fused_on_cpu(runtime, fused):
    """_sgd_speed_options as on CUDA, for the CPU (fused SGD has a CPU kernel since torch 2.4)."""
    return {"fused": True} if fused else {}


def teacher_options(args):
    """The resolved options of the teacher script's command line `args`, as the script's start-up resolves them."""
    opt = train_cifar_teacher.parser().parse_args(args)
    return teacher_role.resolve(train_cifar_teacher.TEACHER_PROFILE, opt).options


def record_run_folders(monkeypatch):
    """Record (run_dir, name) of every run folder the scripts' start-up checks (helper.cli.main.prepare_run_dir)."""
    seen, real_prepare = [], main_module.prepare_run_dir

    def prepare(run_dir, name, config, **kwargs):
        seen.append((run_dir, name))
        return real_prepare(run_dir, name, config, **kwargs)

    monkeypatch.setattr(main_module, "prepare_run_dir", prepare)
    return seen


# ---------------------------------------------------------------- 1. a resume keeps the command line's fused flag
def test_resume_with_fused_sgd_and_fp16_uses_the_fused_kernel_not_the_saved_flag(tiny_cifar, tmp_path, monkeypatch):
    monkeypatch.setattr(optim, "_sgd_speed_options", fused_on_cpu)
    interrupt_after(monkeypatch, 2)
    with pytest.raises(SystemExit):  # saved without fused SGD, mid-epoch
        train_cifar_teacher.main(teacher_args(tiny_cifar, tmp_path, "--amp", "fp16"))
    monkeypatch.undo()
    monkeypatch.setattr(optim, "_sgd_speed_options", fused_on_cpu)
    # before the fix: AssertionError "Expected grad_scale and found_inf to be None" on the first step
    summary = train_cifar_teacher.main(teacher_args(tiny_cifar, tmp_path, "--amp", "fp16", "--fused_sgd", "--resume"))
    ckpt = load_checkpoint(os.path.join(summary["run"], "resnet8_last.pth"))
    assert all(group["fused"] is True for group in ckpt["optimizer"]["param_groups"])


def test_resume_without_fused_sgd_drops_the_saved_fused_flag(tiny_cifar, tmp_path, monkeypatch):
    monkeypatch.setattr(optim, "_sgd_speed_options", fused_on_cpu)
    interrupt_after(monkeypatch, 2)
    with pytest.raises(SystemExit):
        train_cifar_teacher.main(teacher_args(tiny_cifar, tmp_path, "--fused_sgd"))
    monkeypatch.undo()
    summary = train_cifar_teacher.main(teacher_args(tiny_cifar, tmp_path, "--resume"))
    ckpt = load_checkpoint(os.path.join(summary["run"], "resnet8_last.pth"))
    assert all(not group["fused"] for group in ckpt["optimizer"]["param_groups"])


# ---------------------------------------------------------------- 2. the fold check measures the fold, not TF32
def _round_to_tf32(x):
    """x rounded to TF32 (10-bit mantissa, round half away from zero on the bits), as Ampere tensor cores read fp32."""
    bits = x.contiguous().view(torch.int32)
    return ((bits + 0x1000) & ~0x1FFF).view(torch.float32)


def test_batchnorm_fold_is_kept_when_fp32_convolutions_run_in_tf32(monkeypatch):
    from helper.teachers.inference import FOLD_CHECK_RTOL, InferenceTeacher, _max_relative_difference
    from models import model_dict

    plain = nn.Conv2d._conv_forward

    def cudnn_like(self, x, weight, bias):  # what cuDNN does with fp32 convolutions while allow_tf32 is on (default)
        if torch.backends.cudnn.allow_tf32 and x.dtype == torch.float32:
            x, weight = _round_to_tf32(x), _round_to_tf32(weight)
        return plain(self, x, weight, bias)

    torch.manual_seed(0)
    teacher = model_dict["resnet20"](num_classes=100)
    for module in teacher.modules():  # trained-like statistics, so that the fold changes the weights
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.2, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    teacher.eval()
    example = torch.randn(2, 3, 32, 32)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)  # PyTorch's default
    with torch.no_grad():
        fp32 = teacher(example, is_feat=True)
        monkeypatch.setattr(nn.Conv2d, "_conv_forward", cudnn_like)
        tf32 = teacher(example, is_feat=True)
    # the simulation matters: TF32 alone moves the teacher's features past the check's tolerance
    assert _max_relative_difference(fp32, tf32) > FOLD_CHECK_RTOL
    engine = InferenceTeacher(teacher, example, memory_format="contiguous")
    # resnet20: the stem, 9 blocks of two and 2 downsampling shortcuts: 21 conv+BN pairs
    assert engine.folded == 21 and not engine.notes, engine.summary()
    assert torch.backends.cudnn.allow_tf32  # the check restored the setting


# ---------------------------------------------------------------- 3. --gids a,b --resume after an early kill
def test_gids_resume_after_a_kill_before_the_first_checkpoint_starts_the_run(tiny_cifar, tmp_path, monkeypatch):
    spawned = []
    monkeypatch.setattr(gids_module, "run_forwarding_signals", lambda command, env: spawned.append(command) or 0)
    seen = record_run_folders(monkeypatch)
    args = teacher_args(tiny_cifar, tmp_path, "--gids", "0,1", "--device", "cpu")
    with pytest.raises(SystemExit) as first:
        train_cifar_teacher.main(args)
    assert first.value.code == 0 and len(spawned) == 1
    run_dir, name = seen[0]
    # what the two processes leave when killed before their first checkpoint: the folder and its config.json
    store = RunStore(run_dir, name, resume=False)
    store.open(run_config(teacher_options(args), 2))
    store.close()
    assert not os.path.exists(store.last_path)
    with pytest.raises(SystemExit) as resumed:  # before the fix: "changed configuration: ... world_size"
        train_cifar_teacher.main(args + ["--resume"])
    assert resumed.value.code == 0 and len(spawned) == 2 and "--resume" in spawned[1]


def test_gids_resume_still_refuses_another_process_count(tiny_cifar, tmp_path, monkeypatch):
    monkeypatch.setattr(gids_module, "run_forwarding_signals", lambda command, env: 0)
    seen = record_run_folders(monkeypatch)
    args = teacher_args(tiny_cifar, tmp_path, "--gids", "0,1", "--device", "cpu")
    with pytest.raises(SystemExit):
        train_cifar_teacher.main(args)
    run_dir, name = seen[0]
    store = RunStore(run_dir, name, resume=False)
    store.open(run_config(teacher_options(args), 4))  # the folder of a 4-process run with the global batch 16
    store.close()
    with pytest.raises(UsageError, match="world_size"):
        train_cifar_teacher.main(args + ["--resume"])


# ---------------------------------------------------------------- 4. host synchronisations per step
def _steps(n, batch=8):
    generator = torch.Generator().manual_seed(0)
    return [(torch.randn(batch, 3, 8, 8, generator=generator), torch.randint(0, 10, (batch,), generator=generator))
            for _ in range(n)]


def _syncs_in_epoch(steps, fused):
    """Host syncs of one fp16 epoch of `steps` steps with a GradScaler (CPU autocast stands in for CUDA's)."""
    from distiller_zoo import Vanilla

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 10))
    method = Vanilla(model)
    runtime = Runtime(torch.device("cpu"), amp_dtype=torch.float16)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, fused=fused)
    scaler = runtime.grad_scaler()
    with HostSyncCounter() as counter:
        train_one_epoch(method, _steps(steps), optimizer, runtime, 1, scaler=scaler, print_freq=10_000,
                        progress=False, log=lambda *a: None, timing=False)
    return len(counter.calls)


def test_the_fp16_step_with_fused_sgd_reads_nothing_on_the_host():
    # the same syncs for 3 steps as for 6 (those of the epoch's end): none per step
    assert _syncs_in_epoch(3, fused=True) == _syncs_in_epoch(6, fused=True)
    # the counter sees what it must: GradScaler's unfused step reads found_inf once a step
    assert _syncs_in_epoch(6, fused=False) - _syncs_in_epoch(3, fused=False) == 3


def test_fp16_on_cuda_uses_fused_sgd_in_both_stages(tiny_cifar, teacher_file, tmp_path, monkeypatch):
    import train_cifar_student

    cuda_fp16 = Runtime(torch.device("cuda"), amp_dtype=torch.float16)
    assert optim._sgd_speed_options(cuda_fp16, False) == {"fused": True}  # without --fused_sgd
    assert optim._sgd_speed_options(Runtime(torch.device("cuda")), False) == {}
    assert optim._sgd_speed_options(Runtime(torch.device("cpu"), amp_dtype=torch.float16), False) == {}
    # the init stage of AB/FT/FSP gets the main stage's options (before: never fused, a sync every fp16 step)
    monkeypatch.setattr(optim, "_sgd_speed_options", fused_on_cpu)
    built = []
    monkeypatch.setattr(trainer_module.Trainer, "fit", lambda self: built.append(self) or {})
    train_cifar_student.main(["--path_t", teacher_file("resnet8"), "--data_root", tiny_cifar, "--save_root",
                              str(tmp_path), "--model_s", "resnet8", "--distill", "fsp", "--init_epochs", "1",
                              "--epochs", "1", "--batch_size", "16", "--num_workers", "0", "--fused_sgd",
                              "--no_inference_teacher"])
    trainer = built[0]
    assert trainer.optimizers.init.param_groups[0]["fused"] is True
    assert trainer.optimizers.main.param_groups[0]["fused"] is True


def test_the_ddp_stop_check_reads_one_value(monkeypatch):
    def all_reduce_from_a_stopped_peer(tensor, op=None):
        tensor.fill_(int(signal.SIGTERM))  # another rank got SIGTERM

    monkeypatch.setattr(signals.dist, "all_reduce", all_reduce_from_a_stopped_peer)
    stop = signals.StopRequest()
    ddp = Runtime(torch.device("cpu"), rank=0, world_size=2)
    with HostSyncCounter() as counter:
        assert stop.should_stop(19, ddp) is True
    assert stop.signum == signal.SIGTERM
    assert counter.calls == ["_local_scalar_dense"]  # before: three reads of the same value
    with HostSyncCounter() as counter:
        assert stop.should_stop(20, ddp) is False  # not a check step: nothing read, nothing exchanged
    assert counter.calls == []


# ---------------------------------------------------------------- 5. one meaning of the --gids ids
@pytest.fixture
def four_visible_gpus(monkeypatch):
    """A machine whose process sees GPUs through CUDA_VISIBLE_DEVICES=2,3 (two visible devices)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    spawned = []
    monkeypatch.setattr(gids_module, "run_forwarding_signals", lambda command, env: spawned.append(env) or 0)
    return spawned


def _apply_gids(gids):
    """apply_gids as the scripts' start-up calls it for `--gids gids` (device auto, global batch 64)."""
    return gids_module.apply_gids(gids, device="auto", batch_size=64, sync_bn=False, script="train.py",
                                  argv=["--gids", gids])


def test_gids_ids_index_the_visible_gpus_for_one_id_and_for_several(four_visible_gpus):
    assert _apply_gids("1") == ("cuda:1", None)  # visible index 1: physical GPU 3
    assert _apply_gids("0,1")[1] == 0  # torchrun's status
    assert four_visible_gpus[0]["CUDA_VISIBLE_DEVICES"] == "2,3"  # before: "0,1", physical GPUs 0 and 1
    assert _apply_gids("1,0")[1] == 0
    assert four_visible_gpus[1]["CUDA_VISIBLE_DEVICES"] == "3,2"


def test_gids_beyond_the_visible_gpus_are_refused(four_visible_gpus):
    for gids in ("2", "0,2"):
        with pytest.raises(UsageError, match="sees 2 GPU"):
            _apply_gids(gids)
    assert four_visible_gpus == []


def test_gids_without_cuda_visible_devices_name_the_physical_gpus(four_visible_gpus, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert _apply_gids("1,0")[1] == 0
    assert four_visible_gpus[0]["CUDA_VISIBLE_DEVICES"] == "1,0"


# ---------------------------------------------------------------- 6. a CPU run leaves the GPU alone
def test_a_cpu_run_reads_and_restores_rng_state_without_touching_cuda(monkeypatch):
    touched = []

    def cuda_call(name):
        return lambda *args, **kwargs: touched.append(name)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU is present ...
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)  # ... and this run never used it
    for name in ("get_rng_state", "set_rng_state", "current_device", "init"):
        monkeypatch.setattr(torch.cuda, name, cuda_call(name))
    state = runtime_module.rng_state()
    assert "cuda" not in state and touched == []  # before: get_rng_state(current_device()) made a context on GPU 0
    state["cuda"] = torch.zeros(16, dtype=torch.uint8)  # a checkpoint of a CUDA run, resumed with --device cpu
    runtime_module.set_rng_state(state)
    assert touched == []


def test_a_cuda_run_still_saves_and_restores_its_cuda_rng_state(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: calls.append(("get", device)) or torch.ones(4))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: calls.append(("set", device)))
    state = runtime_module.rng_state()
    assert torch.equal(state["cuda"], torch.ones(4))
    runtime_module.set_rng_state(state)
    assert calls == [("get", 0), ("set", 0)]


def test_rkd_distance_potential_reads_nothing_on_the_host_and_keeps_its_value():
    from distiller_zoo.rkd import distance_potential, pairwise_distances

    x = torch.randn(6, 5, generator=torch.Generator().manual_seed(0))
    with HostSyncCounter() as counter:
        got = distance_potential(x)
    assert counter.calls == []  # before: d[d > 0] (a nonzero, which waits for the GPU) every step
    d = pairwise_distances(x)
    off_diagonal = [d[i, j].item() for i in range(6) for j in range(6) if i != j]
    assert torch.allclose(got, d / (sum(off_diagonal) / len(off_diagonal)), rtol=1e-6)
