"""CIFAR-10/100 read from torchvision's on-disk pickle layout, without its md5 checks."""
import os

import numpy as np
from torchvision import datasets

from .common import InMemoryImages, cifar_style_transforms, corrupt_file, not_found
from .safe_pickle import ForbiddenGlobal, load_data_pickle

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
    """The dict of one CIFAR batch file, read with the restricted unpickler; str keys."""
    try:
        with open(path, "rb") as f:
            entry = load_data_pickle(f)
    except ForbiddenGlobal as err:
        raise corrupt_file(path, f"refused to load: the pickle asks for {err}, which no CIFAR batch holds (a "
                                 "doctored file can run code)") from None
    except OSError as err:
        raise corrupt_file(path, f"cannot be read ({err.strerror or err})", "check the file's permissions") from None
    except Exception as err:  # noqa: BLE001 - any unpickling failure means the file is truncated or garbled
        raise corrupt_file(path, f"not a readable CIFAR batch, truncated or corrupt ({type(err).__name__})") from None
    if not isinstance(entry, dict):
        raise corrupt_file(path, f"holds a {type(entry).__name__}, not a CIFAR batch (a dict)")
    # The official files (Python 2 pickles) load with bytes keys; files written by Python 3 may have str keys.
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}


def _batch_arrays(path, entry, num_classes, label_key):
    """(uint8 images N x 3 x 32 x 32, int labels) of one batch dict, checked against CIFAR's layout."""
    missing = [key for key in ("data", label_key) if key not in entry]
    if missing:
        raise corrupt_file(path, f"no {' or '.join(repr(k) for k in missing)} entry: not a CIFAR-{num_classes} "
                                 "batch (is it the other CIFAR?)")
    data, labels = entry["data"], entry[label_key]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", None)
        raise corrupt_file(path, f"'data' is {type(data).__name__} {getattr(data, 'dtype', '')} of shape {shape}, "
                                 "not uint8 rows of 3072 pixels")
    if not isinstance(labels, (list, np.ndarray)) or len(labels) != len(data):
        raise corrupt_file(path, f"{len(data)} images but {len(labels) if hasattr(labels, '__len__') else 'no'} "
                                 f"{label_key}")
    labels = np.asarray(labels)
    if labels.size and (labels.dtype.kind not in "iu" or labels.min() < 0 or labels.max() >= num_classes):
        raise corrupt_file(path, f"{label_key} are not integers in [0, {num_classes})")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64).tolist()


def read_cifar(root, num_classes, train):
    """Read one split: (uint8 array N x 32 x 32 x 3, list of int labels), in file order."""
    _, _, _, label_key = LAYOUT[num_classes]
    images, labels = [], []
    for path in cifar_files(root, num_classes, train):
        batch_images, batch_labels = _batch_arrays(path, _load_pickle(path), num_classes, label_key)
        images.append(batch_images)
        labels.extend(batch_labels)
    data = np.ascontiguousarray(np.concatenate(images).transpose(0, 2, 3, 1))
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
