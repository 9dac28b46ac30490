"""Export and evaluation of students with a torchvision:/timm: architecture (see models.external).

A run's config names the architecture, the module choices, the image size, the normalisation and the class names;
the zoo built from it (`zoo_for`) lets export_student.py and evaluate_student.py load the student like a paper
model. The deployed .pth holds the library model's own keys (no 'model.' prefix), so it loads into
`torchvision.models.NAME(num_classes=K)`; the ONNX file carries the class names as JSON in its metadata.
"""
import json
from collections import OrderedDict

import torch
from torch.utils.data import DataLoader

HOOK_PREFIX = "model."


def zoo_for(config, role="s"):
    """An ExternalZoo that rebuilds the run's wrapped student (role 's') or teacher ('t') from its saved options."""
    from models.external import ExternalZoo

    stages = config.get("feature_modules" if role == "s" else "feature_modules_t")
    return ExternalZoo(image_size=config.get("image_size") or 224, feature_module=config.get(f"feature_module_{role}"),
                       classifier=config.get(f"classifier_{role}"), feature_modules=stages)


def with_hook_prefix(checkpoint):
    """A checkpoint whose state has the wrapper's 'model.' prefix (a deployed .pth holds the library's own keys)."""
    state = checkpoint.get("model") if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or any(k.startswith(HOOK_PREFIX) for k in state):
        return checkpoint
    prefixed = OrderedDict((HOOK_PREFIX + k, v) for k, v in state.items())
    metadata = getattr(state, "_metadata", None)
    if metadata is not None:  # per-module versions (MNASNet needs them), renamed with the keys
        prefixed._metadata = OrderedDict((_join(HOOK_PREFIX[:-1], k), v) for k, v in metadata.items())
    return {**checkpoint, "model": prefixed}


def _join(prefix, name):
    return f"{prefix}.{name}" if name else prefix


def library_state(state):
    """The deployed state without the wrapper's prefix: loads into torchvision.models.NAME(num_classes=K)."""
    out = OrderedDict((k[len(HOOK_PREFIX):], v) for k, v in state.items() if k.startswith(HOOK_PREFIX))
    metadata = getattr(state, "_metadata", None)
    if metadata is not None:  # per-module versions (MNASNet needs them), renamed with the keys
        root = HOOK_PREFIX[:-1]
        out._metadata = OrderedDict(("" if k == root else k[len(HOOK_PREFIX):], v) for k, v in metadata.items()
                                    if k == root or k.startswith(HOOK_PREFIX))
    return out


def config_extras(config):
    """What an exported file keeps of a run's config besides the architecture: classes, statistics, modules."""
    keys = ("classes", "num_classes", "mean", "std", "feature_module_s", "classifier_s", "feature_modules")
    return {k: config[k] for k in keys if config.get(k) is not None}


def metadata_value(value):
    """An ONNX metadata string: lists as JSON (class names may hold commas)."""
    return json.dumps(value) if isinstance(value, (list, tuple)) else value


def model_classes(info_or_metadata):
    """Class names saved with a model (a config dict or ONNX metadata), or None."""
    classes = info_or_metadata.get("classes")
    if isinstance(classes, str):
        try:
            classes = json.loads(classes)
        except ValueError:
            return None
    return list(classes) if classes else None


def folder_eval_set(root, config, image_size, split=None):
    """The images to evaluate under `root`: its val/ folder when it has one, else the validation images of `split`
    (a run's split.json) when given and present, else every image of its class folders."""
    import os

    from dataset.imagenet import MEAN, STD
    from dataset.imagenet import imagenet_transforms
    from dataset.user_folder import FolderImages, class_samples, read_split

    if os.path.isdir(os.path.join(root, "val")):
        classes, samples = class_samples(os.path.join(root, "val"))
    elif split and os.path.isfile(split):
        classes, _, samples, _ = read_split(split, root)
    else:
        classes, samples = class_samples(root)
    mean, std = config.get("mean") or MEAN, config.get("std") or STD
    if isinstance(mean, str):
        mean, std = json.loads(mean), json.loads(std)
    return FolderImages(classes, samples, imagenet_transforms(False, image_size, tuple(mean), tuple(std)))


@torch.no_grad()
def per_class_accuracy(model, dataset, runtime, batch_size=64, num_workers=0):
    """[(class name, correct, images)] of top-1 predictions over `dataset` (a FolderImages)."""
    model.eval()
    correct = torch.zeros(len(dataset.classes), dtype=torch.long)
    total = torch.zeros(len(dataset.classes), dtype=torch.long)
    for images, targets, _ in DataLoader(dataset, batch_size=batch_size, num_workers=num_workers):
        predicted = model(runtime.to_device(images) if hasattr(runtime, "to_device") else images).argmax(1).cpu()
        total += torch.bincount(targets, minlength=len(total))
        correct += torch.bincount(targets[predicted == targets], minlength=len(total))
    return [(name, int(c), int(t)) for name, c, t in zip(dataset.classes, correct, total)]


def run_split(config, path):
    """The split.json of the run a model comes from: beside the checkpoint, or beside the one it was exported from."""
    import os

    from dataset.user_folder import SPLIT_FILE

    for source in (path, config.get("folded_from")):
        candidate = os.path.join(os.path.dirname(os.path.abspath(source)), SPLIT_FILE) if source else None
        if candidate and os.path.isfile(candidate):
            return candidate
    return None


def per_class_table(rows):
    """Lines 'class: acc% (correct/images)', worst class first."""
    lines = []
    for name, c, t in sorted(rows, key=lambda r: (r[1] / max(r[2], 1), r[0])):
        lines.append(f"  {name}: {100 * c / max(t, 1):.2f}% ({c}/{t})")
    return lines
