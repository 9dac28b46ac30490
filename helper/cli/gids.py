"""The official `--gids` flag: one id picks that GPU; several start DDP over them from the one command (via torchrun)."""
import os
import signal
import subprocess
import sys

import torch

from helper.argtypes import gpu_id_list
from helper.errors import UsageError
from helper.runtime.distributed import per_process_batch


def parse_gids(text):
    """'0,1,2' -> [0, 1, 2]; a one-line UsageError for anything else (the grammar: helper.argtypes.gpu_id_list)."""
    try:
        return gpu_id_list(text)
    except ValueError as err:
        raise UsageError(f"--gids {err}") from None


def torchrun_command(script, argv, nproc):
    """The torchrun command that runs `script argv` on `nproc` local processes."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", script, *argv]


def apply_gids(gids, *, device, batch_size, sync_bn, script, argv, before_spawn=None):
    """Act on --gids before anything is loaded; returns (device, status).

    status None: this process trains, on `device` (one id makes it `cuda:ID`). Several ids, outside torchrun: this same
    command ran under torchrun with one process per id (CUDA_VISIBLE_DEVICES set to the ids, so process k takes the
    k-th), and status is its exit status, for the caller to exit with. With --device cpu the ids only count the
    processes (for tests). `before_spawn` runs first (e.g. releasing the run folder's lock for the processes that
    will train in it).
    """
    if gids is None:
        return device, None
    ids = parse_gids(gids)
    on_cpu = device == "cpu"
    if not on_cpu:
        if not torch.cuda.is_available():
            raise UsageError(f"--gids {gids} names GPUs but no CUDA device is available; drop --gids (or add "
                             "--device cpu)")
        # the ids have one meaning: indices among the GPUs this process sees, as in cuda:K (with
        # CUDA_VISIBLE_DEVICES=2,3 set, id 1 is physical GPU 3 for one id and for several)
        count = torch.cuda.device_count()
        missing = [i for i in ids if i >= count]
        if missing and int(os.environ.get("WORLD_SIZE", "1")) == 1:
            raise UsageError(f"--gids {gids}: this process sees {count} GPU(s) (ids 0..{count - 1}"
                             f"{', among CUDA_VISIBLE_DEVICES' if 'CUDA_VISIBLE_DEVICES' in os.environ else ''}); "
                             "choose ids among them")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return device, None  # a process torchrun started: it takes cuda:LOCAL_RANK among the visible ids
    if len(ids) == 1:
        return (device if on_cpu else f"cuda:{ids[0]}"), None
    # what each process would refuse, refused here once, in one line, before torchrun starts them
    per_process_batch(batch_size, len(ids))
    if sync_bn and on_cpu:
        raise UsageError("--sync_bn needs CUDA devices (SyncBatchNorm has no CPU kernel); drop --sync_bn or run on GPUs")
    if before_spawn is not None:
        before_spawn()
    env = dict(os.environ)
    if not on_cpu:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(visible_device_names(ids))
    return device, run_forwarding_signals(torchrun_command(script, argv, len(ids)), env)


def visible_device_names(ids):
    """CUDA_VISIBLE_DEVICES entries for the visible-GPU indices `ids`: the ids themselves when the variable is unset,
    else its entries at those positions (numbers, GPU-UUIDs or MIG names alike), so that the children see the very
    GPUs that cuda:ID names in this process."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return [str(i) for i in ids]
    entries = [entry.strip() for entry in visible.split(",")]
    return [entries[i] for i in ids]


def run_forwarding_signals(command, env):
    """Run `command`, passing SIGTERM/SIGINT on to it (torchrun then stops its workers, which checkpoint).

    The child runs in its own session, so a Ctrl-C in the terminal reaches it once (forwarded), not twice.
    """
    child = subprocess.Popen(command, env=env, start_new_session=True)
    previous = {}

    def forward(signum, frame):
        child.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        previous[sig] = signal.signal(sig, forward)
    try:
        return child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
