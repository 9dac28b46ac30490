"""DistributedDataParallel for the current training stage, SyncBN where it can work, buffer and RNG exchange."""
import inspect
import warnings

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from helper.errors import UsageError
from helper.runtime.device import rng_state, set_rng_state


def per_process_batch(batch_size, world_size):
    """--batch_size is the global batch (the paper's meaning) split over the processes; it must divide evenly."""
    if batch_size % world_size:
        lower, upper = batch_size // world_size * world_size, -(-batch_size // world_size) * world_size
        choices = " or ".join(str(b) for b in dict.fromkeys((lower, upper)) if b > 0)
        raise UsageError(f"--batch_size {batch_size} is the global batch and does not divide over {world_size} "
                         f"processes; use {choices}")
    return batch_size // world_size


def check_sync_bn(requested, runtime):
    """Whether SyncBatchNorm is used: refused where it cannot run (CPU under DDP), a warning where it does nothing."""
    if not requested:
        return False
    if not runtime.distributed:
        warnings.warn("--sync_bn does nothing in a single process (there are no other ranks to share statistics with)",
                      stacklevel=2)
        return False
    if runtime.device.type != "cuda":
        raise UsageError("--sync_bn needs CUDA devices (SyncBatchNorm has no CPU kernel); drop --sync_bn or run on GPUs")
    return True


class StageWrapper:
    """The network the loop trains: the method itself, or under torchrun a DDP wrapper built for the current stage.

    The init stage of AB/FT/FSP trains other parameters than the main stage, and only there are some of the
    registered parameters unused (hence `find_unused_parameters`, which costs a graph walk every step), so each stage
    gets its own wrapper and the main stage pays nothing for the init stage.
    """

    def __init__(self, method, runtime, sync_bn=False):
        self.method, self.runtime = method, runtime
        self.stage, self.module = None, method
        if sync_bn:
            # converts in place below the root: the student's BatchNorms become SyncBatchNorms
            torch.nn.SyncBatchNorm.convert_sync_batchnorm(method.student)

    def for_stage(self, stage):
        """The module to train in `stage` ('init' or 'main'); wrapped anew when the stage changes."""
        if stage != self.stage:
            self.stage = stage
            if self.runtime.distributed:
                self.module = None  # the old wrapper's reducer hooks go with it
                sync_buffers(self.method, self.runtime, everything=True)
                device_ids = [self.runtime.device.index] if self.runtime.device.type == "cuda" else None
                self.module = DistributedDataParallel(self.method, device_ids=device_ids,
                                                      find_unused_parameters=stage == "init",
                                                      **_no_per_step_buffer_sync())
        return self.module


def sync_buffers(method, runtime, everything=False):
    """Give every rank rank 0's buffers (BN statistics), so validation and the saved checkpoint agree.

    Buffers a module declares in `synchronised_buffers` (CRD's memories) are kept equal by the module itself,
    once they start equal (`everything=True`). Buffers are synchronised once per epoch rather than on every forward
    (a CRD memory is ~50 MB).
    """
    if runtime.distributed:
        for module in method.modules():
            own = () if everything else getattr(module, "synchronised_buffers", ())
            for name, buffer in module.named_buffers(recurse=False):
                if name not in own:
                    dist.broadcast(buffer, 0)


def broadcast_from_rank0(value, runtime):
    """Rank 0's `value` on every rank (a collective under DDP: every rank must call it); `value` itself otherwise."""
    if not runtime.distributed:
        return value
    box = [value if runtime.rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_rng_states(runtime):
    """Every rank's RNG state, in rank order (a collective under DDP: every rank must call it)."""
    own = rng_state()
    if not runtime.distributed:
        return [own]
    states = [None] * runtime.world_size
    dist.all_gather_object(states, own)
    return states


def restore_rng_state(checkpoint, runtime):
    """This rank's own saved RNG state; files from before per-rank states (or another rank count) give rank 0's."""
    states = checkpoint.get("rng_per_rank")
    if isinstance(states, list) and len(states) == runtime.world_size:
        set_rng_state(states[runtime.rank])
    else:
        set_rng_state(checkpoint["rng"])


def _no_per_step_buffer_sync():
    """DDP's option for not broadcasting buffers on every forward (renamed in recent PyTorch)."""
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}
