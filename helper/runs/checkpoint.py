"""Checkpoints: atomic writes of plain data, safe reads (`weights_only=True`) of ours and of legacy files."""
import argparse
import io
import os

import torch

from helper.errors import UsageError
from helper.runs.files import _write_atomic  # the torch-free atomic writer; this adds torch.save to it


def save_atomic(obj, path):
    """torch.save `obj` to `path` atomically (temporary file, fsync, rename); `path` is untouched on failure."""
    # Serialised in memory first, then written as plain bytes: torch's zip writer reports a short write (a full disk)
    # as "unexpected pos ...", a plain write as ENOSPC, which the one-line error names.
    def write(handle):
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        handle.write(buffer.getbuffer())

    _write_atomic(path, write)


def load_checkpoint(path):
    """Read a checkpoint on CPU without executing arbitrary pickled code (legacy argparse options allowed)."""
    if not os.path.isfile(path):
        raise UsageError(f"checkpoint {path} does not exist; check the path")
    safe = getattr(torch.serialization, "safe_globals", None)
    try:
        if safe is not None:  # the official `*_last.pth` stores its argparse.Namespace
            with safe([argparse.Namespace]):
                return torch.load(path, map_location="cpu", weights_only=True)
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means the same thing to the user
        raise UsageError(f"cannot read checkpoint {path} safely ({_load_failure(err)}); re-download it or use "
                         "another file") from err


def _load_failure(err):
    """torch.load's failure in a few words (its own messages run over several sentences and lines)."""
    if isinstance(err, OSError) and err.strerror:  # unreadable, not corrupt
        return err.strerror
    text = str(err)
    if "Weights only load failed" in text:  # torch suggests weights_only=False, which we never do
        return "it holds objects other than tensors and plain data, which are not loaded from untrusted files"
    if "zip archive" in text or "central directory" in text:
        return "it is truncated or corrupt"
    first = text.strip().splitlines()[0] if text.strip() else type(err).__name__
    return f"{first.split('. ')[0]}: not a checkpoint, or a corrupt one"


def model_state(checkpoint, path="the checkpoint"):
    """The model state dict inside a checkpoint ('model' or 'state_dict' entry, or the object itself), unwrapped.

    The prefixes that wrappers add to every key are removed: `module.` (DataParallel/DDP, as the official code
    saves) and `_orig_mod.` (a torch.compile'd module), in whichever order they were stacked.
    """
    state = checkpoint
    if isinstance(checkpoint, dict):
        for key in ("model", "state_dict"):  # the official/RepDistiller layout first, then the common trainer one
            if isinstance(checkpoint.get(key), dict):
                state = checkpoint[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UsageError(f"{path} holds no model state dict (expected {{'model': state_dict}}, "
                         "{'state_dict': state_dict} or a state dict)")
    return unwrapped_keys(state)


def unwrapped_keys(state):
    """`state` without the prefixes wrappers put on every key: `module.` (DataParallel/DDP) and `_orig_mod.`
    (torch.compile), in whichever order they were stacked; a prefix on only some keys stays."""
    stripped = True
    while state and stripped:
        stripped = False
        for prefix in ("module.", "_orig_mod."):
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                stripped = True
    return state


def plain_number(value):
    """A Python float from a number or a 0-dim tensor (official checkpoints store CUDA scalars)."""
    return float(value.item()) if isinstance(value, torch.Tensor) else float(value)
