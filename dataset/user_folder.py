"""Image folders as users have them: train/ and val/, or one folder of class folders split by --val_split.

Images of any size and mode: grey, palette and RGBA images become RGB (transparency composited on white, the
usual background of product photos), then Resize/RandomResizedCrop to `image_size` and normalise by the given
mean and std. A split is a function of the sorted file list, the fraction and the split seed; a run saves it as
`split.json` in its folder and a resume (or a student whose teacher run folder holds one) reads it back, so
files added later never move between train and validation.
"""
import json
import os

import numpy as np
from PIL import Image
from torch.utils.data import Dataset
from torchvision import datasets, transforms

from .common import CorruptDataFile, DatasetError, DatasetNotFound, EpochSeeded
from .imagenet import MEAN, STD, _reason, imagenet_transforms

SPLIT_FILE = "split.json"
EXTENSIONS = datasets.folder.IMG_EXTENSIONS


def rgb_image(path):
    """The image at `path` as RGB: grey replicated, palette expanded, alpha composited on white."""
    with open(path, "rb") as f:
        image = Image.open(f)
        image.load()
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image).convert("RGB")
    return image.convert("RGB")


def class_samples(folder):
    """(class names, [(path, class index)]) of a folder of class folders; one line when there are no images."""
    if not os.path.isdir(folder):
        raise DatasetNotFound(f"{folder} is not a folder; pass --data_root pointing to a folder of class folders "
                              "(or one with train/ and val/)")
    classes = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise DatasetNotFound(f"{folder} holds no class folders; put the images in one folder per class "
                              "(<folder>/<class>/*.jpg)")
    samples = []
    for index, name in enumerate(classes):
        for root, _, files in sorted(os.walk(os.path.join(folder, name), followlinks=True)):
            samples += [(os.path.join(root, f), index) for f in sorted(files) if f.lower().endswith(EXTENSIONS)]
    if not samples:
        shown = ", ".join(classes[:3]) + (" ..." if len(classes) > 3 else "")
        raise DatasetNotFound(f"{folder}: its class folders ({shown}) hold no images ({', '.join(EXTENSIONS[:4])}, "
                              "...); put the images there")
    return classes, samples


class FolderImages(EpochSeeded, Dataset):
    """A list of (path, class index) as items (img, target, index), augmented reproducibly per (seed, epoch, index)."""

    def __init__(self, classes, samples, transform=None, seed=None):
        self.classes = list(classes)
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        self.samples = list(samples)
        self.targets = [target for _, target in self.samples]
        self.transform = transform
        self._init_seed(seed)

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, key):
        epoch, index = self._item(key)
        path, target = self.samples[index]
        try:
            image = rgb_image(path)
        except (OSError, Image.DecompressionBombError) as err:
            raise CorruptDataFile(f"{path}: cannot be read as an image ({_reason(err)}); delete or replace it "
                                  "(every file in the class folders must be an image)") from None
        return self._augment(image, index, epoch), target, index


def split_samples(samples, fraction, seed):
    """(train, val): `fraction` of each class (at least one image, when it has two) drawn by `seed`."""
    by_class = {}
    for path, target in samples:
        by_class.setdefault(target, []).append((path, target))
    rng = np.random.default_rng(seed)
    train, val = [], []
    for target in sorted(by_class):
        items = by_class[target]
        order = rng.permutation(len(items))
        count = min(len(items) - 1, max(1, round(fraction * len(items)))) if len(items) > 1 else 0
        chosen = set(order[:count].tolist())
        val += [items[i] for i in sorted(chosen)]
        train += [items[i] for i in range(len(items)) if i not in chosen]
    return train, val


def read_split(path, root):
    """(classes, train, val, folder) from a saved split.json, its folder relative to `root`."""
    with open(path) as f:
        saved = json.load(f)
    classes = saved["classes"]
    index = {name: i for i, name in enumerate(classes)}
    base = os.path.normpath(os.path.join(root, saved.get("folder", ".")))

    def items(names):
        out = [(os.path.join(base, rel), index[rel.split("/", 1)[0]]) for rel in names]
        missing = [p for p, _ in out if not os.path.isfile(p)]
        if missing:
            raise DatasetNotFound(f"{missing[0]} (listed in {path}) is missing; restore it, or start a new run "
                                  "(another --trial) to split the folder afresh")
        return out
    return classes, items(saved["train"]), items(saved["val"]), base


def split_json(root, split, fraction, seed):
    """A split (classes, train, val, folder) as the text of its split.json: paths relative to its folder."""
    classes, train, val, folder = split

    def rel(items):
        return [os.path.relpath(p, folder).replace(os.sep, "/") for p, _ in items]
    return json.dumps({"classes": classes, "folder": os.path.relpath(folder, root).replace(os.sep, "/"),
                       "val_split": fraction, "split_seed": seed, "train": rel(train), "val": rel(val)})


def folder_datasets(root, *, image_size=224, mean=MEAN, std=STD, val_split=None, split_seed=0, saved_split=None,
                    seed=None):
    """(train set, val set, split or None) of the images under `root`.

    `root` has train/ and val/ class folders, or is one folder of class folders split by `val_split`; a split read
    from `saved_split` (a split.json) wins over a new one. The returned split (classes, train, val, folder) is
    what a run saves as `split_json`.
    """
    train_dir, val_dir = os.path.join(root, "train"), os.path.join(root, "val")
    split = None
    if saved_split and os.path.isfile(saved_split):
        split = read_split(saved_split, root)
        classes, train, val, _ = split
    elif os.path.isdir(train_dir) and os.path.isdir(val_dir) and not val_split:
        classes, train = class_samples(train_dir)
        val_classes, val = class_samples(val_dir)
        if val_classes != classes:
            raise DatasetError(f"{train_dir} and {val_dir} have different class folders; give both the same")
    elif val_split:
        folder = train_dir if os.path.isdir(train_dir) else root
        classes, samples = class_samples(folder)
        train, val = split_samples(samples, val_split, split_seed)
        if not val:
            raise DatasetError(f"{folder}: --val_split {val_split} leaves no validation image (every class has one "
                               "image); add images")
        split = (classes, train, val, folder)
    else:
        raise DatasetNotFound(f"{root} has no train/ and val/ folders; pass --val_split 0.1 to hold out 10% of "
                              "each class folder for validation")
    train_set = FolderImages(classes, train, imagenet_transforms(True, image_size, mean, std), seed=seed)
    val_set = FolderImages(classes, val, imagenet_transforms(False, image_size, mean, std))
    return train_set, val_set, split


def check_classes(expected, classes, path, flag="--path_t", verb="was trained on"):
    """Refuse a model whose saved class names (`expected`; None: it names none) are not `classes`, the folder's.

    Compared by name, so a renamed, missing or reordered class shows; `verb` says what the model at `path` (`flag`)
    did with its classes ("was trained on" them, an exported model "predicts" them)."""
    if expected is None or list(expected) == list(classes):
        return
    extra = sorted(set(expected) - set(classes))
    missing = sorted(set(classes) - set(expected))
    if extra or missing:
        what = "; ".join(filter(None, (f"only the model has {', '.join(extra[:3])}" if extra else "",
                                       f"only the data has {', '.join(missing[:3])}" if missing else "")))
    else:
        what = "the same names in another order"
    raise DatasetError(f"{path} ({flag}) {verb} other classes than --data_root holds ({what}); train it on these "
                       "class folders or point --data_root at its data")
