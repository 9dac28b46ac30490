"""dataset/: on-disk readers, transforms, seeded augmentation, the CRD wrapper and the not-found errors."""
import os

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import dataset
from dataset import CRDDataset, DatasetNotFound, build_dataset, crd_dataset, num_classes
from dataset import cifar as cifar_module
from dataset import fashion_mnist as fmnist_module
from dataset.fashion_mnist import read_idx
from tests.datafakes import class_colours, write_idx, write_tiny_cifar, write_tiny_fashion_mnist, write_tiny_imagefolder

CIFAR100_MEAN = torch.tensor([0.5071, 0.4867, 0.4408]).view(3, 1, 1)
CIFAR100_STD = torch.tensor([0.2675, 0.2565, 0.2761]).view(3, 1, 1)
# Unbalanced labels: class 0 has 1 item, class 1 has 2, ..., class 5 has 6 (21 items; 15-20 negatives per class).
UNBALANCED = [c for c in range(6) for _ in range(c + 1)]


@pytest.fixture(scope="module")
def cifar100_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar100")
    return root, write_tiny_cifar(root, num_classes=100, n_train=120, n_test=40, seed=1)


# ----------------------------------------------------------------------------------------------------------- CIFAR
@pytest.mark.parametrize("classes", [100, 10])
def test_cifar_reader_returns_what_was_written(tmp_path, classes):
    fake = write_tiny_cifar(tmp_path, num_classes=classes, n_train=53, n_test=17, seed=3)
    for train, images, labels in ((True, fake.train_images, fake.train_labels),
                                  (False, fake.test_images, fake.test_labels)):
        ds = dataset.CIFAR(tmp_path, classes, train=train)
        assert ds.data.dtype == np.uint8 and ds.data.shape == images.shape
        np.testing.assert_array_equal(ds.data, images)
        assert ds.targets == labels and all(type(t) is int for t in ds.targets)
        img, target, index = ds[5]
        np.testing.assert_array_equal(np.asarray(img), images[5])
        assert (target, index) == (labels[5], 5)
    assert num_classes(f"cifar{classes}") == classes


def test_build_dataset_cifar_items_are_normalised_tensors(cifar100_root):
    root, fake = cifar100_root
    train = build_dataset("cifar100", root, "train")
    img, target, index = train[7]
    assert img.shape == (3, 32, 32) and img.dtype == torch.float32
    assert (target, index) == (fake.train_labels[7], 7)
    for split in ("val", "test"):
        test = build_dataset("cifar100", root, split)
        img, target, index = test[3]
        expected = (torch.from_numpy(fake.test_images[3]).permute(2, 0, 1).float() / 255 - CIFAR100_MEAN) / CIFAR100_STD
        torch.testing.assert_close(img, expected)
        assert (target, index) == (fake.test_labels[3], 3)
    assert len(train) == 120 and len(test) == 40


def test_cifar_train_augmentation_crops_and_flips(cifar100_root):
    root, _ = cifar100_root
    ds = build_dataset("cifar100", root, "train", seed=0)
    plain = build_dataset("cifar100", root, "test")
    # With padding 4 some crops show the zero padding, i.e. exactly -mean/std in every channel.
    pad_value = -CIFAR100_MEAN / CIFAR100_STD
    padded = sum(bool(torch.isclose(ds[i][0], pad_value.expand(3, 32, 32)).all(0).any()) for i in range(40))
    # Flipping or shifting: most augmented images differ from the un-augmented one.
    plain.data, plain.targets = ds.data, ds.targets
    changed = sum(not torch.equal(ds[i][0], plain[i][0]) for i in range(40))
    assert padded > 20 and changed > 30


def test_cifar_download_fallback_is_used_when_files_are_missing(tmp_path, monkeypatch):
    calls = []

    def fake_download(root, train, download):
        calls.append((root, train, download))
        write_tiny_cifar(root, num_classes=10, n_train=10, n_test=5)

    monkeypatch.setattr(cifar_module.datasets, "CIFAR10", fake_download)
    ds = build_dataset("cifar10", tmp_path, "train", download=True)
    assert len(ds) == 10 and calls == [(tmp_path, True, True)]


def test_cifar_download_failure_is_dataset_not_found(tmp_path, monkeypatch):
    def no_network(root, train, download):
        raise RuntimeError("no network")

    monkeypatch.setattr(cifar_module.datasets, "CIFAR100", no_network)
    with pytest.raises(DatasetNotFound, match="download failed.*no network"):
        build_dataset("cifar100", tmp_path, "train", download=True)


# ---------------------------------------------------------------------------------------- seeded augmentation
def test_seeded_augmentation_is_reproducible_and_changes_with_epoch(cifar100_root):
    root, _ = cifar100_root
    a = build_dataset("cifar100", root, "train", seed=5)
    b = build_dataset("cifar100", root, "train", seed=5)
    indices = list(range(24))
    rng_before = torch.get_rng_state()
    first = [a[i][0] for i in indices]
    assert torch.equal(torch.get_rng_state(), rng_before)  # the global RNG is not consumed
    # Another instance, another access order: the same tensors.
    for i in reversed(indices):
        assert torch.equal(b[i][0], first[i])
    a.set_epoch(1)
    second = [a[i][0] for i in indices]
    assert sum(not torch.equal(x, y) for x, y in zip(first, second)) > len(indices) // 2
    a.set_epoch(0)
    assert all(torch.equal(a[i][0], first[i]) for i in indices)
    other_seed = build_dataset("cifar100", root, "train", seed=6)
    assert sum(not torch.equal(other_seed[i][0], first[i]) for i in indices) > len(indices) // 2


def test_seeded_augmentation_ignores_workers_and_batch_order(cifar100_root):
    root, _ = cifar100_root
    ds = build_dataset("cifar100", root, "train", seed=11)
    ds.set_epoch(3)

    def collect(num_workers, batch_size):
        out = {}
        loader = DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=num_workers,
                            generator=torch.Generator().manual_seed(num_workers + batch_size))
        for imgs, _, idx in loader:
            out.update({int(i): img for i, img in zip(idx, imgs)})
        return out

    serial, parallel = collect(0, 16), collect(2, 7)
    assert sorted(serial) == list(range(len(ds)))
    assert all(torch.equal(serial[i], parallel[i]) for i in serial)


def test_unseeded_augmentation_uses_the_global_rng(cifar100_root):
    root, _ = cifar100_root
    ds = build_dataset("cifar100", root, "train")
    torch.manual_seed(0)
    first = [ds[i][0] for i in range(8)]
    torch.manual_seed(0)
    assert all(torch.equal(ds[i][0], first[i]) for i in range(8))
    assert sum(not torch.equal(ds[i][0], first[i]) for i in range(8)) > 0  # the RNG moved on


def test_invalid_seed_and_epoch_are_rejected(cifar100_root):
    root, _ = cifar100_root
    with pytest.raises(ValueError):
        build_dataset("cifar100", root, "train", seed=-1)
    with pytest.raises(ValueError):
        build_dataset("cifar100", root, "train").set_epoch(-2)


# ------------------------------------------------------------------------------------------------------------ CRD
@pytest.fixture(scope="module")
def unbalanced_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("unbalanced")
    write_tiny_cifar(root, num_classes=10, n_train=len(UNBALANCED), n_test=5, train_labels=UNBALANCED)
    return root


@pytest.mark.parametrize("mode", ["exact", "relax"])
def test_crd_positive_and_negatives_on_unbalanced_classes(unbalanced_root, mode):
    base = build_dataset("cifar10", unbalanced_root, "train", seed=2)
    labels = np.asarray(UNBALANCED)
    k = 7
    crd = crd_dataset(base, k, mode)
    assert isinstance(crd, CRDDataset) and len(crd) == len(base) and crd.targets == UNBALANCED
    relaxed_elsewhere = False
    for epoch in range(3):
        crd.set_epoch(epoch)
        assert base.epoch == epoch
        for i in range(len(crd)):
            img, target, index, contrast = crd[i]
            assert img.shape == (3, 32, 32) and (target, index) == (UNBALANCED[i], i)
            assert contrast.dtype == np.int64 and contrast.shape == (k + 1,)
            positive, negatives = contrast[0], contrast[1:]
            if mode == "exact":
                assert positive == i
            else:
                assert labels[positive] == target
                relaxed_elsewhere |= bool(positive != i)
            assert (labels[negatives] != target).all() and ((negatives >= 0) & (negatives < len(labels))).all()
            assert len(set(negatives.tolist())) == k  # K <= candidates (>= 15): without replacement
    assert mode == "exact" or relaxed_elsewhere


def test_crd_negatives_cover_exactly_the_other_classes(unbalanced_root):
    base = build_dataset("cifar10", unbalanced_root, "train")
    labels = np.asarray(UNBALANCED)
    for i in range(len(labels)):
        candidates = np.flatnonzero(labels != labels[i])
        crd = CRDDataset(base, len(candidates), "exact")
        assert sorted(crd.contrast_index(i)[1:].tolist()) == candidates.tolist()


def test_crd_draws_with_replacement_when_k_exceeds_the_candidates(unbalanced_root):
    base = build_dataset("cifar10", unbalanced_root, "train", seed=0)
    labels = np.asarray(UNBALANCED)
    crd = crd_dataset(base, 50, "relax")
    contrast = crd.contrast_index(len(labels) - 1)  # class 5: 15 candidates
    negatives = contrast[1:]
    assert len(negatives) == 50 and (labels[negatives] != 5).all()
    assert set(negatives.tolist()) == set(np.flatnonzero(labels != 5).tolist())  # 50 draws of 15: all seen


def test_crd_sampling_is_seeded_per_item_and_epoch(unbalanced_root):
    a = crd_dataset(build_dataset("cifar10", unbalanced_root, "train", seed=4), 5, "relax")
    b = crd_dataset(build_dataset("cifar10", unbalanced_root, "train", seed=4), 5, "relax")
    first = [a.contrast_index(i) for i in range(len(a))]
    assert all(np.array_equal(b.contrast_index(i), first[i]) for i in reversed(range(len(b))))
    a.set_epoch(1)
    assert sum(not np.array_equal(a.contrast_index(i), first[i]) for i in range(len(a))) > len(a) // 2
    img_a, _, _, idx_a = a[3]
    b.base.set_epoch(1)  # the wrapper follows its base's epoch
    img_b, _, _, idx_b = b[3]
    assert torch.equal(img_a, img_b) and np.array_equal(idx_a, idx_b)


def test_crd_rejects_bad_arguments(unbalanced_root):
    base = build_dataset("cifar10", unbalanced_root, "train")
    with pytest.raises(ValueError):
        crd_dataset(base, 4, "nearest")
    with pytest.raises(ValueError):
        crd_dataset(base, -1, "exact")


# -------------------------------------------------------------------------------------------------- Fashion-MNIST
def test_fashion_mnist_from_the_debian_folder():
    if not os.path.isdir(fmnist_module.SYSTEM_DIR):
        pytest.skip(f"{fmnist_module.SYSTEM_DIR} missing (apt-get install dataset-fashion-mnist)")
    train = build_dataset("fashion_mnist", None, "train", seed=0)
    test = build_dataset("fashion_mnist", fmnist_module.DEFAULT_ROOT, "test")  # the scripts' default root
    with pytest.raises(DatasetNotFound):  # a root the user named is not replaced by the system copy
        build_dataset("fashion_mnist", "/nonexistent", "test")
    assert (len(train), len(test)) == (60000, 10000) and num_classes("fashion_mnist") == 10
    assert sorted(set(train.targets)) == list(range(10))
    img, target, index = train[123]
    assert img.shape == (3, 32, 32) and img.dtype == torch.float32 and index == 123
    assert torch.equal(img[0], img[1]) and torch.equal(img[1], img[2])
    assert train.data.shape == (60000, 32, 32)
    border = np.concatenate([train.data[:, :2].ravel(), train.data[:, -2:].ravel(),
                             train.data[:, :, :2].ravel(), train.data[:, :, -2:].ravel()])
    assert not border.any()
    # The written constants are the statistics of the padded training images.
    pixels = train.data.astype(np.float64) / 255
    assert abs(pixels.mean() - fmnist_module.MEAN) < 1e-4 and abs(pixels.std() - fmnist_module.STD) < 1e-4


@pytest.mark.parametrize("gz, sub", [(True, "fashion-mnist"), (False, "FashionMNIST/raw"), (True, "")])
def test_fashion_mnist_from_tiny_idx_files(tmp_path, monkeypatch, gz, sub):
    monkeypatch.setattr(fmnist_module, "SYSTEM_DIR", str(tmp_path / "no-system-copy"))
    fake = write_tiny_fashion_mnist(tmp_path / sub, n_train=30, n_test=10, gz=gz, seed=7)
    for split, images, labels in (("train", fake.train_images, fake.train_labels),
                                  ("test", fake.test_images, fake.test_labels)):
        ds = build_dataset("fashion_mnist", str(tmp_path), split)
        assert len(ds) == len(labels) and ds.targets == labels
        np.testing.assert_array_equal(ds.data[:, 2:30, 2:30], images)
        img, target, index = ds[4]
        assert img.shape == (3, 32, 32) and (target, index) == (labels[4], 4)
    test = build_dataset("fashion_mnist", str(tmp_path), "test")
    expected = (torch.from_numpy(np.pad(fake.test_images[2], 2)).float() / 255 - fmnist_module.MEAN) / fmnist_module.STD
    torch.testing.assert_close(test[2][0], expected.expand(3, 32, 32))


def test_read_idx_checks_magic_and_size(tmp_path):
    path = str(tmp_path / "x-idx3-ubyte")
    write_idx(path, np.arange(24).reshape(2, 3, 4))
    np.testing.assert_array_equal(read_idx(path), np.arange(24).reshape(2, 3, 4))
    with open(path, "r+b") as f:
        f.write(b"\x08\x03")
    with pytest.raises(ValueError, match="magic"):
        read_idx(path)
    write_idx(path, np.zeros((2, 2), dtype=np.uint8))
    with open(path, "ab") as f:
        f.write(b"\x00")
    with pytest.raises(ValueError, match="size"):
        read_idx(path)


# --------------------------------------------------------------------------------------------- ImageNet / folders
@pytest.mark.parametrize("nested", [False, True])
def test_imagefolder_builder_reads_a_tiny_tree(tmp_path, nested):
    classes = write_tiny_imagefolder(tmp_path / "imagenet" if nested else tmp_path, num_classes=3,
                                     per_class_train=4, per_class_val=2, size=40)
    train = build_dataset("imagenet", tmp_path, "train", image_size=32, seed=0)
    val = build_dataset("imagenet", tmp_path, "val", image_size=32)
    assert train.classes == classes and num_classes("imagenet", tmp_path) == 3
    assert (len(train), len(val)) == (12, 6) and sorted(train.targets) == [0] * 4 + [1] * 4 + [2] * 4
    img, target, index = train[5]
    assert img.shape == (3, 32, 32) and (target, index) == (train.targets[5], 5)
    assert torch.equal(train[5][0], img)  # seeded
    img, target, index = val[3]
    assert img.shape == (3, 32, 32) and (target, index) == (val.targets[3], 3)
    # val: Resize(round(32*256/224)=37) + CenterCrop(32), deterministic; colours survive the JPEG round trip.
    assert torch.equal(val[3][0], img)
    mean_colour = img.mean((1, 2)) * torch.tensor(dataset.imagenet.STD) + torch.tensor(dataset.imagenet.MEAN)
    expected = torch.tensor(class_colours(3)[target] / 255, dtype=torch.float32)
    torch.testing.assert_close(mean_colour, expected, atol=0.03, rtol=0)


# ------------------------------------------------------------------------------------------------- missing data
def _one_line_error(excinfo):
    message = str(excinfo.value)
    assert isinstance(excinfo.value, FileNotFoundError) and "\n" not in message
    return message


@pytest.mark.parametrize("name", ["cifar100", "cifar10"])
def test_missing_cifar_raises_dataset_not_found(tmp_path, name):
    with pytest.raises(DatasetNotFound) as excinfo:
        build_dataset(name, tmp_path, "train")
    message = _one_line_error(excinfo)
    folder = "cifar-100-python" if name == "cifar100" else "cifar-10-batches-py"
    assert str(tmp_path / folder) in message and "--data_root" in message and "--download" in message


def test_missing_fashion_mnist_names_every_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(fmnist_module, "SYSTEM_DIR", str(tmp_path / "system"))
    with pytest.raises(DatasetNotFound) as excinfo:
        build_dataset("fashion_mnist", str(tmp_path), "train")
    message = _one_line_error(excinfo)
    for folder in ("fashion-mnist", "FashionMNIST/raw"):
        assert str(tmp_path / folder) in message
    assert str(tmp_path / "system") not in message
    assert "apt-get install dataset-fashion-mnist" in message and "--download" in message
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatasetNotFound) as excinfo:
        build_dataset("fashion_mnist", fmnist_module.DEFAULT_ROOT, "train")
    assert str(tmp_path / "system") in _one_line_error(excinfo)


def test_missing_imagefolder_raises_dataset_not_found(tmp_path):
    with pytest.raises(DatasetNotFound) as excinfo:
        build_dataset("imagenet", tmp_path, "val")
    message = _one_line_error(excinfo)
    assert str(tmp_path / "val") in message and str(tmp_path / "imagenet" / "val") in message
    with pytest.raises(DatasetNotFound):
        num_classes("imagenet", tmp_path)
    (tmp_path / "train" / "empty_class").mkdir(parents=True)
    with pytest.raises(DatasetNotFound) as excinfo:
        build_dataset("imagenet", tmp_path, "train")
    _one_line_error(excinfo)


def test_unknown_names_and_sizes_are_rejected(cifar100_root):
    root, _ = cifar100_root
    with pytest.raises(ValueError, match="unknown dataset"):
        build_dataset("svhn", root, "train")
    with pytest.raises(ValueError, match="unknown split"):
        build_dataset("cifar100", root, "holdout")
    with pytest.raises(ValueError, match="image_size"):
        build_dataset("cifar100", root, "train", image_size=64)
