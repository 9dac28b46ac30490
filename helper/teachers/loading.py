"""Building models by name and loading checkpoints into them, with errors that say what to do."""
import difflib

import torch

from helper.runs.checkpoint import load_checkpoint, model_state, plain_number
# the official key names live in helper.teachers.official
from helper.teachers.official import _OFFICIAL_FT_KEY, _UNUSED, convert_official_student
from helper.errors import UsageError

TRANSFORM_PREFIX = "feature_transform."  # the state-dict keys of NORM's FT (models.norm.attach_feature_transform)


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


def norm_student_kind(state):
    """'ours' or 'official' when `state` is a NORM student's, feature transform included; None for a plain model."""
    if any(k.startswith(TRANSFORM_PREFIX) for k in state):
        return "ours"
    if any(_OFFICIAL_FT_KEY.match(k) or _UNUSED.match(k) for k in state):
        return "official"
    return None


def check_plain_state(state, path, zoo, num_classes, flag):
    """Refuse a NORM student's state (transform included) where a plain model is expected; say how to make one."""
    from models.simkd import is_simkd_state

    if is_simkd_state(state):
        raise UsageError(f"{path} is a SimKD student (backbone + projector + a teacher's classifier), not a plain "
                         f"model for {flag}")
    kind = norm_student_kind(state)
    if kind is None:
        return
    plain = convert_official_student(state) if kind == "official" else state
    plain = {k: v for k, v in plain.items() if not k.startswith(TRANSFORM_PREFIX)}
    matches = matching_architectures(zoo, plain, num_classes)
    arch = matches[0] if len(matches) == 1 else None
    what = f"{arch} with a feature transform" if arch else "with a feature transform"
    if kind == "ours":
        raise UsageError(f"{path} is a NORM student checkpoint ({what}), not a plain model for {flag}; fold its "
                         f"transform away with python scripts/export_student.py --path {path} --out <plain.pth> "
                         "and pass that file")
    if flag == "--model_s":  # a student was expected: only the official key names are in the way
        raise UsageError(f"{path} is an officially released NORM student ({what}); pass --official")
    raise UsageError(f"{path} is an officially released NORM student ({what}), not a plain model for {flag}; fold "
                     f"its transform away with python scripts/export_student.py --official --path {path} --model_s "
                     f"{arch or '<arch>'} -s <its N> --out <plain.pth> and pass that file")


def load_strict(model, state, *, name, path, zoo, num_classes, flag):
    """Load `state` strictly into `model`; on mismatch say which architecture the file holds."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError:
        with_transform = getattr(model, "feature_transform", None) is not None
        if not with_transform:  # a plain model was expected
            check_plain_state(state, path, zoo, num_classes, flag)
        raise UsageError(f"{path} does not fit {flag} {name}; "
                         f"{_what_the_file_holds(zoo, state, num_classes, flag)}") from None
    return model


def classifier_outputs(state):
    """The class count of a state dict: the rows of its last 2-d weight (the final linear layer), or None."""
    matrices = [v for k, v in state.items() if k.endswith("weight") and v.dim() == 2]
    return int(matrices[-1].shape[0]) if matrices else None


def _what_the_file_holds(zoo, state, num_classes, flag):
    """A hint naming the architecture of `state` (a NORM student's transform aside), at this or its own class count."""
    plain = {k: v for k, v in state.items() if not k.startswith(TRANSFORM_PREFIX)}
    transform = " with a feature transform" if len(plain) < len(state) else ""
    classes = classifier_outputs(plain)
    matches = matching_architectures(zoo, plain, num_classes)
    if matches:
        return f"it holds a {matches[0]}{transform}: pass {flag} {matches[0]}"
    if classes and classes != num_classes:
        matches = matching_architectures(zoo, plain, classes)
        if matches:
            return (f"it holds a {matches[0]}{transform} with {classes} classes (not {num_classes}): pass {flag} "
                    f"{matches[0]} and the --dataset it was trained on")
    shape = next((tuple(v.shape) for v in reversed(plain.values()) if v.dim() == 2), "?")
    return f"no architecture fits it (classifier {shape}); check the file and the --dataset's number of classes"


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
    from models.simkd import is_simkd_state
    from helper.teachers.official import convert_official_student, transform_width

    config = checkpoint_config(checkpoint)
    model_s = model_s or config.get("model_s") or config.get("model")
    if not model_s:
        raise UsageError(f"{path} does not say which architecture it holds; pass --model_s")
    n = n or config.get("co_sponge") or 8
    ft = ft or config.get("ft") or "residual"
    state = model_state(checkpoint, path)
    if is_simkd_state(state):  # SimKD's student predicts through its projector and the teacher's classifier
        return load_simkd_student(zoo, state, path, model_s, checkpoint, config)
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


def load_simkd_student(zoo, state, path, model_s, checkpoint, config):
    """(SimKDStudent, info) from a SimKD student's state dict (models/simkd.py documents the layout)."""
    from models.simkd import simkd_student_from_state

    def backbone(num_classes):
        return build_model(zoo, model_s, num_classes, "--model_s")

    try:
        model = simkd_student_from_state(backbone, state)
    except ValueError as err:
        raise UsageError(f"{path}: {err}") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError:
        raise UsageError(f"{path} is a SimKD student whose backbone does not fit --model_s {model_s}; pass the "
                         "architecture it was trained with") from None
    saved = checkpoint.get("best_acc", checkpoint.get("accuracy"))
    info = {"model_s": model_s, "n": None, "ft": "none", "dataset": config.get("dataset"),
            "saved_accuracy": None if saved is None else plain_number(saved)}
    return model, info


def checkpoint_config(checkpoint):
    """The run options saved in one of our checkpoints ({} for other files)."""
    config = checkpoint.get("config") if isinstance(checkpoint, dict) else None
    return config if isinstance(config, dict) else {}


def infer_teacher_name(zoo, state, path, num_classes):
    """The teacher architecture of `state` (read from `path`), found by matching its keys and shapes in the zoo."""
    names = matching_architectures(zoo, state, num_classes)
    # the official student variants (resnet18S, resnet34S) share their teacher's weights; a teacher is the plain one
    names = [name for name in names if not (name.endswith("S") and name[:-1] in names)]
    if len(names) == 1:
        return names[0]
    if names:
        raise UsageError(f"cannot tell the teacher architecture of {path}: several architectures fit it "
                         f"({', '.join(names)}); pass --model_t")
    classes = classifier_outputs(state)
    if classes and classes != num_classes:
        fits = matching_architectures(zoo, state, classes)
        if fits:
            raise UsageError(f"{path} is a {fits[0]} with {classes} classes, but the dataset has {num_classes}; "
                             "pass the --dataset it was trained on, or a teacher for this one")
    raise UsageError(f"cannot tell the teacher architecture of {path}: no architecture fits it; pass --model_t")
