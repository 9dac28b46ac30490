"""Building models by name and loading checkpoints into them, with errors that say what to do."""
import difflib

import torch

from .checkpoint import load_checkpoint, model_state, plain_number
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


def load_model_state(zoo, name, state, path, num_classes, flag="--model_t"):
    """Build `name` and load `state` (the model state read from `path`) into it strictly."""
    model = build_model(zoo, name, num_classes, flag)
    return load_strict(model, state, name=name, path=path, zoo=zoo, num_classes=num_classes, flag=flag)


def load_model_file(zoo, name, path, num_classes, flag="--model_t"):
    """Build `name` and load the model state of checkpoint `path` into it (strictly, safely)."""
    return load_model_state(zoo, name, model_state(load_checkpoint(path), path), path, num_classes, flag)


def load_student(zoo, checkpoint, path, *, model_s=None, num_classes=None, n=None, ft=None, official=False):
    """Build a (NORM) student from `checkpoint` (read from `path`): ours (options from its saved config) or official.

    Returns (model, info) where info holds the resolved model_s, n, ft, dataset and the stored accuracy.
    """
    from models.norm import attach_feature_transform
    from .convert import convert_official_student, transform_width

    config = checkpoint_config(checkpoint)
    model_s = model_s or config.get("model_s") or config.get("model")
    if not model_s:
        raise UsageError(f"{path} does not say which architecture it holds; pass --model_s")
    n = n or config.get("co_sponge") or 8
    ft = ft or config.get("ft") or "residual"
    state = model_state(checkpoint, path)
    if official:
        # official students skip their FT at N == 1, except the ImageNet MobileNet
        state = convert_official_student(state, ft_bypassed=(n == 1 and model_s != "MobileNet"))
    if num_classes is None:  # read it off the stored classifier
        with torch.device("meta"):
            probe = build_model(zoo, model_s, 100, "--model_s")
        classifier = state.get(probe.classifier_name + ".weight")
        num_classes = classifier.shape[0] if classifier is not None else 100
    model = build_model(zoo, model_s, num_classes, "--model_s")
    width = transform_width(state)
    if width is not None:
        if width % n:
            raise UsageError(f"{path}: the transform is {width} channels wide, not a multiple of N={n}; pass -s")
        attach_feature_transform(model, width // n, n, ft if ft != "none" else "residual")
    elif str(config.get("distill", "")).startswith("NORM") or official:
        attach_feature_transform(model, 1, 1, "none")  # a NORM student without FT: only the variant switch
    load_strict(model, state, name=model_s, path=path, zoo=zoo, num_classes=num_classes, flag="--model_s")
    saved = checkpoint.get("best_acc", checkpoint.get("accuracy"))
    info = {"model_s": model_s, "n": n, "ft": ft if width is not None else "none", "dataset": config.get("dataset"),
            "saved_accuracy": None if saved is None else plain_number(saved)}
    return model, info


def checkpoint_config(checkpoint):
    """The run options saved in one of our checkpoints ({} for other files)."""
    config = checkpoint.get("config") if isinstance(checkpoint, dict) else None
    return config if isinstance(config, dict) else {}
