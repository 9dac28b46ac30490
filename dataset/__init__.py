"""Datasets for training and evaluation: CIFAR-10/100, Fashion-MNIST, ImageNet/ImageFolder, and the CRD wrapper.

Every item (train and val/test) is `(img, target, index)`; the CRD wrapper adds `contrast_index`.
"""
from .cifar import CIFAR, cifar_transforms
from .common import CorruptDataFile, CRDDataset, DatasetError, DatasetNotFound
from .fashion_mnist import FashionMNIST, fashion_mnist_transforms
from .fashion_mnist import NUM_CLASSES as _FASHION_MNIST_CLASSES
from .imagenet import ImageFolderWithIndex, find_split_dir, folder_num_classes, imagenet_transforms

NAMES = ("cifar100", "cifar10", "fashion_mnist", "imagenet")
SPLITS = ("train", "val", "test")
_CIFAR_CLASSES = {"cifar100": 100, "cifar10": 10}

__all__ = ["NAMES", "CIFAR", "CorruptDataFile", "CRDDataset", "DatasetError", "DatasetNotFound", "FashionMNIST",
           "ImageFolderWithIndex", "build_dataset", "crd_dataset", "num_classes"]


def _check_name(name):
    if name not in NAMES:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(NAMES)}")


def build_dataset(name, root, split, *, download=False, image_size=None, seed=None):
    """The `split` ('train' augmented; 'val' or 'test' not) of dataset `name` under `root`; items (img, target, index).

    `image_size` is for imagenet only (default 224); the 32x32 datasets accept None or 32. `seed` (None = global RNG)
    makes the augmentation of item i in epoch e (see `set_epoch`) a function of (seed, e, i) only.
    """
    _check_name(name)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    train = split == "train"
    if name == "imagenet":
        size = 224 if image_size is None else image_size
        folder = find_split_dir(root, "train" if train else "val")
        return ImageFolderWithIndex(folder, transform=imagenet_transforms(train, size), seed=seed)
    if image_size not in (None, 32):
        raise ValueError(f"{name} images are 32x32; image_size={image_size} is only supported for imagenet")
    if name == "fashion_mnist":
        return FashionMNIST(root, train=train, transform=fashion_mnist_transforms(train), download=download, seed=seed)
    classes = _CIFAR_CLASSES[name]
    return CIFAR(root, classes, train=train, transform=cifar_transforms(classes, train), download=download, seed=seed)


def num_classes(name, root=None):
    """The number of classes of dataset `name` (for imagenet: the class folders of <root>/train)."""
    _check_name(name)
    if name == "imagenet":
        return folder_num_classes(root)
    if name == "fashion_mnist":
        return _FASHION_MNIST_CLASSES
    return _CIFAR_CLASSES[name]


def crd_dataset(base, k, mode="exact"):
    """Wrap `base` so items become (img, target, index, contrast_index) with K negatives; seeded like `base`."""
    return CRDDataset(base, k, mode)
