"""Building models by name and loading checkpoints into them, with errors that say what to do."""
import difflib

import torch

from .checkpoint import load_checkpoint, model_state
from .errors import UsageError


def build_model(zoo, name, num_classes, flag="--model"):
    """`zoo[name](num_classes=...)`; an unknown name names the closest valid ones."""
    if name not in zoo:
        close = difflib.get_close_matches(name or "", list(zoo), n=3)
        hint = f"did you mean {', '.join(close)}?" if close else f"choose one of {', '.join(zoo)}"
        raise UsageError(f"unknown {flag} {name!r}; {hint}")
    return zoo[name](num_classes=num_classes)


def _signature(state):
    return {k: tuple(v.shape) for k, v in state.items() if not k.endswith("num_batches_tracked")}


def matching_architectures(zoo, state, num_classes):
    """Names in `zoo` whose plain state dict has exactly the keys and shapes of `state` (built on `meta`)."""
    wanted = _signature(state)
    names = []
    for name, builder in zoo.items():
        with torch.device("meta"):
            candidate = builder(num_classes=num_classes)
        if _signature(candidate.state_dict()) == wanted:
            names.append(name)
    return names


def load_strict(model, state, *, name, path, zoo, num_classes, flag):
    """Load `state` strictly into `model`; on mismatch say which architecture the file holds."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError:
        matches = matching_architectures(zoo, state, num_classes)
        if matches:
            hint = f"it holds a {matches[0]}: pass {flag} {matches[0]}"
        else:
            fc = [tuple(v.shape) for k, v in state.items() if k.endswith("weight") and v.dim() == 2]
            hint = (f"no architecture of that name fits it (classifier {fc[-1] if fc else '?'}); "
                    "check the file and the --dataset's number of classes")
        raise UsageError(f"{path} does not fit {flag} {name}; {hint}") from None
    return model


def load_model_file(zoo, name, path, num_classes, flag="--model_t"):
    """Build `name` and load the model state of checkpoint `path` into it (strictly, safely)."""
    model = build_model(zoo, name, num_classes, flag)
    state = model_state(load_checkpoint(path), path)
    return load_strict(model, state, name=name, path=path, zoo=zoo, num_classes=num_classes, flag=flag)
