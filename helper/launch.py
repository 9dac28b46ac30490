"""The official `--gids` flag: one id picks that GPU; several start DDP over them from the one command (via torchrun)."""
import os
import signal
import subprocess
import sys

import torch

from .distributed import per_process_batch
from .errors import UsageError
from .options import gpu_id_list


def parse_gids(text):
    """'0,1,2' -> [0, 1, 2]; a one-line UsageError for anything else (the grammar: helper.options.gpu_id_list)."""
    try:
        return gpu_id_list(text)
    except ValueError as err:
        raise UsageError(f"--gids {err}") from None


def torchrun_command(script, argv, nproc):
    """The torchrun command that runs `script argv` on `nproc` local processes."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", script, *argv]


def apply_gids(opt, script, argv, before_spawn=None):
    """Act on --gids before anything is loaded.

    One id sets `--device cuda:ID`. Several ids, outside torchrun, run this same command under torchrun with one
    process per id (CUDA_VISIBLE_DEVICES set to the ids, so process k takes the k-th) and exit with its status; this
    returns only in the process that should train. With --device cpu the ids only count the processes (for tests).
    `before_spawn` runs first (e.g. releasing the run folder's lock for the processes that will train in it).
    """
    if opt.gids is None:
        return
    ids = parse_gids(opt.gids)
    on_cpu = opt.device == "cpu"
    if not on_cpu:
        if not torch.cuda.is_available():
            raise UsageError(f"--gids {opt.gids} names GPUs but no CUDA device is available; drop --gids (or add "
                             "--device cpu)")
        # the ids have one meaning: indices among the GPUs this process sees, as in cuda:K (with
        # CUDA_VISIBLE_DEVICES=2,3 set, id 1 is physical GPU 3 for one id and for several)
        count = torch.cuda.device_count()
        missing = [i for i in ids if i >= count]
        if missing and int(os.environ.get("WORLD_SIZE", "1")) == 1:
            raise UsageError(f"--gids {opt.gids}: this process sees {count} GPU(s) (ids 0..{count - 1}"
                             f"{', among CUDA_VISIBLE_DEVICES' if 'CUDA_VISIBLE_DEVICES' in os.environ else ''}); "
                             "choose ids among them")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return  # a process torchrun started: it takes cuda:LOCAL_RANK among the visible ids
    if len(ids) == 1:
        if not on_cpu:
            opt.device = f"cuda:{ids[0]}"
        return
    # what each process would refuse, refused here once, in one line, before torchrun starts them
    per_process_batch(opt.batch_size, len(ids))
    if getattr(opt, "sync_bn", False) and on_cpu:
        raise UsageError("--sync_bn needs CUDA devices (SyncBatchNorm has no CPU kernel); drop --sync_bn or run on GPUs")
    if before_spawn is not None:
        before_spawn()
    env = dict(os.environ)
    if not on_cpu:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(visible_device_names(ids))
    sys.exit(run_forwarding_signals(torchrun_command(script, argv, len(ids)), env))


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
