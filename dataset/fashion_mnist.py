"""Fashion-MNIST from idx files, zero-padded to 32x32 and repeated to 3 channels so CIFAR networks run unchanged."""
import gzip
import math
import os
import zlib

import numpy as np
from torchvision import datasets, transforms

from .common import InMemoryImages, corrupt_file, not_found

SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist package
DEFAULT_ROOT = "./data"  # the scripts' --data_root default: only then is SYSTEM_DIR searched as well

# Mean and (population) std of all pixels of the 60000 training images after zero-padding 28->32, scaled to [0, 1]
# (np.pad(x, ((0, 0), (2, 2), (2, 2))) / 255 over the whole array: 0.218999..., 0.331811...).
MEAN = 0.2190
STD = 0.3318

NUM_CLASSES = 10
PAD = 2
_IDX_DTYPES = {0x08: np.uint8}
_FIX = "delete it and get Fashion-MNIST again (run once online with --download, or reinstall dataset-fashion-mnist)"


def search_dirs(root):
    """The folders searched for the idx files, in order."""
    if root is None:
        return [SYSTEM_DIR]
    folders = [os.path.join(root, "fashion-mnist"), os.path.join(root, "FashionMNIST", "raw"), root]
    if os.path.normpath(root) == os.path.normpath(DEFAULT_ROOT):  # a --data_root the user gave is not overruled
        folders.append(SYSTEM_DIR)
    return folders


def _find_file(folder, name):
    for candidate in (os.path.join(folder, name), os.path.join(folder, name + ".gz")):
        if os.path.isfile(candidate):
            return candidate
    return None


def find_idx_files(root, train):
    """The (images, labels) idx paths of one split from the first folder holding both, or None."""
    prefix = "train" if train else "t10k"
    for folder in search_dirs(root):
        images = _find_file(folder, f"{prefix}-images-idx3-ubyte")
        labels = _find_file(folder, f"{prefix}-labels-idx1-ubyte")
        if images and labels:
            return images, labels
    return None


def read_idx(path):
    """Parse an idx file (gzipped or not) into a numpy array, checking its magic number and size."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (EOFError, zlib.error, gzip.BadGzipFile) as err:  # a cut-off download or a non-gzip file named .gz
        raise corrupt_file(path, f"truncated or not gzip data ({err})", _FIX) from None
    except OSError as err:
        raise corrupt_file(path, f"cannot be read ({err.strerror or err})", "check the file's permissions") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise corrupt_file(path, f"not an unsigned-byte idx file (bad magic number {raw[:4].hex()})", _FIX)
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    if len(raw) < header or len(raw) != header + math.prod(shape):
        raise corrupt_file(path, f"size {len(raw)} does not match the header shape {shape} (truncated?)", _FIX)
    return np.frombuffer(raw, dtype=_IDX_DTYPES[raw[2]], offset=header).reshape(shape)


def write_idx(path, array):
    """Write a uint8 array as an idx file (gzipped when `path` ends with .gz)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + array.tobytes())


def read_fashion_mnist(images_path, labels_path):
    """Read one split: (uint8 array N x 32 x 32 zero-padded, list of int labels)."""
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise corrupt_file(images_path, f"holds an array of shape {images.shape}, not 28x28 images", _FIX)
    if labels.ndim != 1 or len(images) != len(labels):
        raise corrupt_file(labels_path, f"holds labels of shape {labels.shape} for the {len(images)} images of "
                                        f"{images_path}", _FIX)
    if labels.size and labels.max() >= NUM_CLASSES:
        raise corrupt_file(labels_path, f"holds label {labels.max()}, not one of the {NUM_CLASSES} classes", _FIX)
    padded = np.pad(images, ((0, 0), (PAD, PAD), (PAD, PAD)))
    return padded, labels.astype(np.int64).tolist()


class RepeatChannels:
    """Repeat a 1-channel tensor to `n` channels (a class, not a lambda, so DataLoader workers can pickle it)."""

    def __init__(self, n=3):
        self.n = n

    def __call__(self, tensor):
        return tensor.repeat(self.n, 1, 1)

    def __repr__(self):
        return f"{type(self).__name__}(n={self.n})"


def fashion_mnist_transforms(train):
    """CIFAR-style augmentation (train) or plain normalisation, then 1 -> 3 channels."""
    tail = [transforms.ToTensor(), transforms.Normalize((MEAN,), (STD,)), RepeatChannels(3)]
    if not train:
        return transforms.Compose(tail)
    return transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()] + tail)


class FashionMNIST(InMemoryImages):
    """Fashion-MNIST held in memory as uint8 N x 32 x 32 (padded); items are (img, target, index)."""

    num_classes = NUM_CLASSES

    def __init__(self, root, train=True, transform=None, download=False, seed=None):
        self.root = root
        self.train = train
        self.transform = transform
        self._init_seed(seed)
        found = find_idx_files(root, train)
        if found is None and download and root is not None:
            try:
                datasets.FashionMNIST(root, train=train, download=True)
            except Exception as err:  # no network, bad checksum, ...: report as missing data with the cause
                raise not_found("Fashion-MNIST", search_dirs(root),
                                f"download failed ({type(err).__name__}: {err})") from err
            found = find_idx_files(root, train)
        if found is None:
            raise not_found(f"Fashion-MNIST {'train' if train else 't10k'} idx files", search_dirs(root),
                            "apt-get install dataset-fashion-mnist, pass --data_root, "
                            "or run once online with --download")
        self.data, self.targets = read_fashion_mnist(*found)
