"""Where and how a run executes: device, torchrun/DDP ranks, seeding, AMP; set up once per process."""
import contextlib
import os
import random
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist

from helper.errors import UsageError

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Runtime:
    """The process's device, rank, world size and numeric settings."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    amp_dtype: Optional[torch.dtype] = None
    channels_last: bool = False
    host_memory_kept: bool = False  # glibc keeps freed big blocks for the next step (helper/runtime/host_memory.py)

    @property
    def is_main(self):
        return self.rank == 0

    @property
    def distributed(self):
        return self.world_size > 1

    def autocast(self):
        """Autocast context for the forward pass (a no-op without --amp)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def grad_scaler(self):
        """A gradient scaler for fp16, else None."""
        if self.amp_dtype is not torch.float16:
            return None
        scaler_cls = getattr(torch.amp, "GradScaler", None)
        return scaler_cls(self.device.type) if scaler_cls else torch.cuda.amp.GradScaler()

    def to_device(self, module):
        """Move a module to the run's device (and memory format)."""
        module = module.to(self.device)
        return module.to(memory_format=torch.channels_last) if self.channels_last else module


def choose_device(requested="auto", local_rank=0, world_size=1):
    """CUDA when present (or asked for), else CPU; a clear error when the asked-for device is missing."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(requested).type
    except RuntimeError:
        kind = None
    if kind not in ("cpu", "cuda") or requested.startswith("cpu:"):
        raise UsageError(f"unknown --device {requested!r}; use auto, cpu, cuda or cuda:K")
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError("--device cuda was asked for but no CUDA device is available; use --device cpu")
        if requested == "cuda":
            requested = f"cuda:{local_rank}"
        elif world_size > 1:
            raise UsageError(f"--device {requested} would put every torchrun process on one GPU; use --device cuda "
                             "(each process takes cuda:LOCAL_RANK) and choose GPUs with CUDA_VISIBLE_DEVICES")
        index, count = torch.device(requested).index or 0, torch.cuda.device_count()
        if index >= count and world_size > 1:  # "cuda" became cuda:LOCAL_RANK: more processes than GPUs
            raise UsageError(f"torchrun started a process with LOCAL_RANK {local_rank} but this machine has {count} "
                             f"CUDA device{'s' if count != 1 else ''}; pass --nproc_per_node {count} or less")
        if index >= count:
            raise UsageError(f"--device {requested}: this machine has {count} CUDA device"
                             f"{'s' if count != 1 else ''} (cuda:0 to cuda:{count - 1}); pick one of them")
    return torch.device(requested)


def setup_runtime(device="auto", amp="none", channels_last=False, deterministic=False, keep_host_memory=False):
    """Read torchrun's environment, join the process group, pick the device and numeric modes.

    `keep_host_memory`: on the CPU, keep freed big blocks in the process (no page faults on every step's large
    tensors; the process holds its peak heap until it exits); on CUDA the caching allocator already does this.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = choose_device(device, local_rank, world_size)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    if amp not in AMP_DTYPES:
        raise UsageError(f"unknown --amp {amp!r}; use none, bf16 or fp16")
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    else:
        torch.backends.cudnn.benchmark = True
    kept = False
    if keep_host_memory and dev.type == "cpu":
        from helper.runtime.host_memory import keep_freed_host_memory

        kept = keep_freed_host_memory()
    return Runtime(dev, rank, world_size, local_rank, AMP_DTYPES[amp], channels_last, kept)


def seed_everything(seed):
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state():
    """The process's RNG states as plain data (for checkpoints)."""
    np_state = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])]}
    # this process's device only (a resume may see other GPUs, or fewer); and only when this process uses CUDA
    # already: get_rng_state would create a context on GPU 0 in a --device cpu run on a machine with a GPU
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state(torch.cuda.current_device())
    return state


def set_rng_state(state):
    """Restore what `rng_state` returned."""
    version, *internal = state["python"]
    random.setstate((version, tuple(internal[0]), internal[1]))
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), cached))
    cuda = state.get("cuda")
    # older files held a list: skipped; a CPU run (CUDA not initialised) leaves the GPU alone, as in rng_state
    if isinstance(cuda, torch.Tensor) and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.set_rng_state(cuda, torch.cuda.current_device())


def shared_seed(seed, runtime):
    """Rank 0's seed on every rank (each process may have drawn its own), so all ranks shard one permutation."""
    if not runtime.distributed:
        return seed
    holder = [seed]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def all_reduce_sum(tensor, runtime):
    """Sum a tensor over all ranks (identity in a single process)."""
    if runtime.distributed:
        dist.all_reduce(tensor)
    return tensor


def ranks_done():
    """After a run that ended normally: wait until every rank got here, so none leaves the group while a peer still
    talks to it (gloo can abort a process whose connections are torn down under it). Not on error paths: a rank that
    failed never arrives, and the others would wait for it."""
    if dist.is_initialized():
        dist.barrier()


def cleanup():
    """Leave the process group if one was joined."""
    if dist.is_initialized():
        dist.destroy_process_group()


def device_model_name(device):
    """The GPU's name, or the CPU's model name (from /proc/cpuinfo where it exists)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            name = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return name


def compile_networks(*networks):
    """torch.compile each network in place (its state-dict keys stay unchanged); None entries are skipped."""
    for network in networks:
        if network is None:
            continue
        if not hasattr(network, "compile"):
            raise UsageError("--compile needs torch>=2.2 (nn.Module.compile); upgrade torch or drop --compile")
        network.compile()
