"""Tiny on-disk datasets in the real formats (CIFAR pickles, idx files, ImageFolder JPEGs) for tests."""
import math
import os
import pickle
from collections import namedtuple

import numpy as np
from PIL import Image

from dataset.fashion_mnist import write_idx  # noqa: F401 - re-exported for the tests

FakeSplits = namedtuple("FakeSplits", "train_images train_labels test_images test_labels")


def class_colours(num_classes):
    """A distinct RGB colour per class: points of an evenly spaced grid in [32, 224]^3."""
    levels = max(2, math.ceil(num_classes ** (1 / 3)))
    steps = np.linspace(32, 224, levels)
    grid = np.array([(r, g, b) for r in steps for g in steps for b in steps])
    return grid[:num_classes]


def fake_images(labels, num_classes, learnable, rng, size=32, channels=3):
    """uint8 images N x size x size x channels: uniform noise, or (learnable) the class colour plus small noise."""
    n = len(labels)
    if not learnable:
        return rng.integers(0, 256, size=(n, size, size, channels), dtype=np.uint8)
    colours = class_colours(num_classes)[np.asarray(labels, dtype=np.int64)][:, :channels]
    noise = rng.integers(-16, 17, size=(n, size, size, channels))
    return np.clip(colours[:, None, None, :] + noise, 0, 255).astype(np.uint8)


def balanced_labels(n, num_classes, rng):
    """n labels cycling over the classes, in random order."""
    return rng.permutation(np.arange(n) % num_classes).tolist()


def _dump(path, entry):
    with open(path, "wb") as f:
        pickle.dump(entry, f, protocol=2)


def _rows(images):
    # The pickles store each image as 3072 bytes: the red plane, then green, then blue.
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), -1))


def write_tiny_cifar(root, num_classes=100, n_train=200, n_test=100, learnable=False, seed=0, train_labels=None):
    """Write CIFAR-100 (cifar-100-python/) or CIFAR-10 (cifar-10-batches-py/) pickles; return what was written."""
    if num_classes not in (10, 100):
        raise ValueError("num_classes must be 10 or 100")
    rng = np.random.default_rng(seed)
    train_labels = balanced_labels(n_train, num_classes, rng) if train_labels is None else list(train_labels)
    test_labels = balanced_labels(n_test, num_classes, rng)
    train_images = fake_images(train_labels, num_classes, learnable, rng)
    test_images = fake_images(test_labels, num_classes, learnable, rng)
    names = [f"class_{c}".encode() for c in range(num_classes)]

    def entry(images, labels, batch, label_key):
        return {b"batch_label": batch.encode(), label_key: list(labels), b"data": _rows(images),
                b"filenames": [f"img_{i}.png".encode() for i in range(len(labels))]}

    if num_classes == 100:
        folder = os.path.join(root, "cifar-100-python")
        os.makedirs(folder, exist_ok=True)
        for name, images, labels in (("train", train_images, train_labels), ("test", test_images, test_labels)):
            item = entry(images, labels, f"{name} batch", b"fine_labels")
            item[b"coarse_labels"] = [y // 5 for y in labels]
            _dump(os.path.join(folder, name), item)
        _dump(os.path.join(folder, "meta"),
              {b"fine_label_names": names, b"coarse_label_names": [f"super_{c}".encode() for c in range(20)]})
    else:
        folder = os.path.join(root, "cifar-10-batches-py")
        os.makedirs(folder, exist_ok=True)
        chunks = np.array_split(np.arange(n_train), 5)
        for i, chunk in enumerate(chunks, start=1):
            _dump(os.path.join(folder, f"data_batch_{i}"),
                  entry(train_images[chunk], [train_labels[j] for j in chunk], f"training batch {i} of 5", b"labels"))
        _dump(os.path.join(folder, "test_batch"), entry(test_images, test_labels, "testing batch 1 of 1", b"labels"))
        _dump(os.path.join(folder, "batches.meta"),
              {b"label_names": names, b"num_cases_per_batch": len(chunks[0]), b"num_vis": 3072})
    return FakeSplits(train_images, train_labels, test_images, test_labels)


def write_tiny_fashion_mnist(folder, n_train=60, n_test=20, gz=True, seed=0):
    """Write the four Fashion-MNIST idx files (28x28 images) into `folder`; return what was written."""
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    suffix = ".gz" if gz else ""
    written = []
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = balanced_labels(n, 10, rng)
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        write_idx(os.path.join(folder, f"{prefix}-images-idx3-ubyte{suffix}"), images)
        write_idx(os.path.join(folder, f"{prefix}-labels-idx1-ubyte{suffix}"), np.asarray(labels))
        written += [images, labels]
    return FakeSplits(*written)


def write_tiny_imagefolder(root, num_classes=3, per_class_train=4, per_class_val=2, size=32, seed=0):
    """Write JPEGs under root/train/<class>/ and root/val/<class>/ (class colour plus noise); return the class names."""
    rng = np.random.default_rng(seed)
    classes = [f"class_{c}" for c in range(num_classes)]
    for split, per_class in (("train", per_class_train), ("val", per_class_val)):
        for c, name in enumerate(classes):
            folder = os.path.join(root, split, name)
            os.makedirs(folder, exist_ok=True)
            images = fake_images([c] * per_class, num_classes, True, rng, size=size)
            for i, image in enumerate(images):
                Image.fromarray(image).save(os.path.join(folder, f"{name}_{i}.jpg"), quality=95)
    return classes
