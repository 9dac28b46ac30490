"""CIFAR-10/100 read from torchvision's on-disk pickle layout, without its md5 checks."""
import os
import pickle

import numpy as np
from torchvision import datasets

from .common import InMemoryImages, cifar_style_transforms, not_found

# Per-channel statistics of the training sets (RepDistiller's CIFAR-100 values; the usual CIFAR-10 ones).
MEAN = {100: (0.5071, 0.4867, 0.4408), 10: (0.4914, 0.4822, 0.4465)}
STD = {100: (0.2675, 0.2565, 0.2761), 10: (0.2470, 0.2435, 0.2616)}

# folder, train files, test files, label key
LAYOUT = {
    100: ("cifar-100-python", ["train"], ["test"], "fine_labels"),
    10: ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels"),
}


def _check_num_classes(num_classes):
    if num_classes not in LAYOUT:
        raise ValueError(f"CIFAR num_classes must be 10 or 100, got {num_classes!r}")


def cifar_files(root, num_classes, train):
    """The pickle files holding one CIFAR split under `root`."""
    _check_num_classes(num_classes)
    folder, train_files, test_files, _ = LAYOUT[num_classes]
    return [os.path.join(root, folder, name) for name in (train_files if train else test_files)]


def _load_pickle(path):
    with open(path, "rb") as f:
        entry = pickle.load(f, encoding="bytes")
    # The official files (Python 2 pickles) load with bytes keys; files written by Python 3 may have str keys.
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}


def read_cifar(root, num_classes, train):
    """Read one split: (uint8 array N x 32 x 32 x 3, list of int labels), in file order."""
    _, _, _, label_key = LAYOUT[num_classes]
    images, labels = [], []
    for path in cifar_files(root, num_classes, train):
        entry = _load_pickle(path)
        images.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.extend(int(y) for y in entry[label_key])
    data = np.ascontiguousarray(np.concatenate(images).transpose(0, 2, 3, 1))
    if len(data) != len(labels):
        raise ValueError(f"CIFAR files under {root} hold {len(data)} images but {len(labels)} labels")
    return data, labels


def _download(root, num_classes, train):
    cls = datasets.CIFAR100 if num_classes == 100 else datasets.CIFAR10
    cls(root, train=train, download=True)


def cifar_transforms(num_classes, train):
    """RepDistiller's CIFAR augmentation (train) or plain normalisation (test)."""
    _check_num_classes(num_classes)
    return cifar_style_transforms(MEAN[num_classes], STD[num_classes], train)


class CIFAR(InMemoryImages):
    """CIFAR-10/100 held in memory as uint8 NHWC; items are (img, target, index)."""

    def __init__(self, root, num_classes=100, train=True, transform=None, download=False, seed=None):
        _check_num_classes(num_classes)
        self.root = root
        self.num_classes = num_classes
        self.train = train
        self.transform = transform
        self._init_seed(seed)
        files = cifar_files(root, num_classes, train)
        missing = [p for p in files if not os.path.isfile(p)]
        if missing and download:
            try:
                _download(root, num_classes, train)
            except Exception as err:  # no network, bad checksum, ...: report as missing data with the cause
                raise not_found(f"CIFAR-{num_classes}", [os.path.dirname(files[0])],
                                f"download failed ({type(err).__name__}: {err})") from err
            missing = [p for p in files if not os.path.isfile(p)]
        if missing:
            raise not_found(f"CIFAR-{num_classes} {'train' if train else 'test'} data", missing,
                            "pass --data_root pointing to the folder that holds "
                            f"{LAYOUT[num_classes][0]}/, or run once online with --download")
        self.data, self.targets = read_cifar(root, num_classes, train)
