"""helper/loaders/device.py: the device loader's order, resume and sharding, and its augmentation against torchvision."""
import itertools

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms
from torchvision.transforms import functional as TF

from dataset import build_dataset, crd_dataset
from helper.loaders.sampler import EpochSampler
from helper.loaders.device import augmentation_of, crop_flip_normalize, device_loader_for
from helper.runtime.device import Runtime
from tests.datafakes import write_tiny_cifar, write_tiny_fashion_mnist, write_tiny_imagefolder

SEED = 11
BATCH = 32
N_TRAIN = 201  # odd, so that sharding over 2 ranks pads


def cpu(rank=0, world_size=1, channels_last=False):
    return Runtime(torch.device("cpu"), rank, world_size, channels_last=channels_last)


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar_device")
    write_tiny_cifar(str(root), num_classes=100, n_train=N_TRAIN, n_test=10, seed=2)
    return str(root)


@pytest.fixture(scope="module")
def fmnist_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("fmnist_device")
    write_tiny_fashion_mnist(str(root / "fashion-mnist"), n_train=20, n_test=4, seed=2)
    return str(root)


def train_set(name, root):
    return build_dataset(name, root, "train", seed=SEED)


def run_epoch(loader, epoch, skip=0):
    loader.sampler.set_epoch(epoch, skip)
    return list(loader)


def joined(batches, item):
    return torch.cat([b[item] for b in batches])


# ------------------------------------------------------------------------------------ augmentation, offset by offset
@pytest.mark.parametrize("name", ["cifar100", "fashion_mnist"])
def test_explicit_offsets_match_torchvision_exactly(name, cifar_root, fmnist_root):
    ds = train_set(name, cifar_root if name == "cifar100" else fmnist_root)
    aug = augmentation_of(ds.transform)
    assert (aug.pad, aug.size, aug.flip_p, aug.repeat) == (4, (32, 32), 0.5, 1 if name == "cifar100" else 3)
    tail = transforms.Compose(ds.transform.transforms[2:])  # ToTensor + Normalize [+ RepeatChannels]
    grid = list(itertools.product(range(9), range(9), (False, True)))
    dy, dx, flip = (torch.tensor(v) for v in zip(*grid))
    for i in (0, 5):
        raw = torch.from_numpy(ds.data[i])
        raw = raw[..., None] if raw.ndim == 2 else raw
        out = crop_flip_normalize(raw.expand(len(grid), -1, -1, -1), dy, dx, flip, aug)
        assert out.shape == (len(grid), 3, 32, 32) and out.dtype == torch.float32
        pil = Image.fromarray(ds.data[i])
        # No randomness: the centre crop, unflipped, is the image itself through ToTensor + Normalize.
        torch.testing.assert_close(out[grid.index((4, 4, False))], tail(pil), rtol=0, atol=1e-6)
        for k, (y, x, f) in enumerate(grid):
            crop = TF.crop(TF.pad(pil, 4, fill=0), y, x, 32, 32)  # what RandomCrop does for offsets (y, x)
            expected = tail(TF.hflip(crop) if f else crop)
            torch.testing.assert_close(out[k], expected, rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------ augmentation, in distribution
def probe_image():
    """Red = 10 + row, green = 10 + column: every pixel says where it came from."""
    rows, cols = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    return np.stack([10 + rows, 10 + cols, np.full_like(rows, 200)], axis=-1).astype(np.uint8)


def decode(images, aug):
    """(dy, dx, flipped) of augmented probe images, read from the pixels at the centre (always inside the image)."""
    std, mean = torch.tensor(aug.std).view(1, 3, 1, 1), torch.tensor(aug.mean).view(1, 3, 1, 1)
    raw = torch.round((images * std + mean) * 255).long() - 10
    row, col, next_col = raw[:, 0, 16, 16], raw[:, 1, 16, 16], raw[:, 1, 16, 17]
    flipped = next_col < col
    # Output (16, 16) reads padded (dy + 16, dx + 16), i.e. image (dy + 12, dx + 12); flipped, image column dx + 11.
    dy, dx = row - 12, col - 12 + flipped.long()
    assert ((next_col - col).abs() == 1).all() and dy.min() >= 0 and dy.max() <= 8 and dx.min() >= 0 and dx.max() <= 8
    return dy, dx, flipped


def assert_uniform_crops_and_fair_flips(dy, dx, flipped):
    n = len(dy)
    counts = torch.bincount(dy * 9 + dx, minlength=81).double()
    expected = n / 81
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    # 80 degrees of freedom: mean 80, sd 12.6; 160 is more than 6 sd out, so only a real bias fails it.
    assert counts.min() > 0 and chi2 < 160, (chi2, counts.view(9, 9))
    assert abs(flipped.double().mean().item() - 0.5) < 0.03  # sd 0.008 at n = 4020: 3.8 sd


def test_random_crops_and_flips_are_distributed_as_torchvision(cifar_root):
    ds = train_set("cifar100", cifar_root)
    image = probe_image()
    ds.data = np.repeat(image[None], len(ds), axis=0)
    loader = device_loader_for(ds, 256, SEED, cpu())
    ours = torch.cat([joined(run_epoch(loader, epoch), 0) for epoch in range(20)])  # 4020 samples
    assert_uniform_crops_and_fair_flips(*decode(ours, loader.aug))

    torch.manual_seed(0)
    pil = Image.fromarray(image)
    theirs = torch.stack([ds.transform(pil) for _ in range(len(ours))])
    assert_uniform_crops_and_fair_flips(*decode(theirs, loader.aug))


# ------------------------------------------------------------------------------------ order, resume, sharding
def test_index_order_is_epoch_samplers(cifar_root):
    ds = train_set("cifar100", cifar_root)
    loader = device_loader_for(ds, BATCH, SEED, cpu())
    targets = torch.tensor(ds.targets)
    for epoch in (0, 1, 7):
        batches = run_epoch(loader, epoch)
        assert len(batches) == len(loader) == -(-N_TRAIN // BATCH)
        sampler = EpochSampler(N_TRAIN, SEED, shuffle=True)
        sampler.set_epoch(epoch)
        index = joined(batches, 2)
        assert index.dtype == torch.int64 and index.tolist() == list(sampler)
        assert torch.equal(joined(batches, 1), targets[index])
        assert all(b[0].shape == (len(b[2]), 3, 32, 32) and b[0].dtype == torch.float32 for b in batches)


def test_epochs_are_reproducible_and_differ(cifar_root):
    ds = train_set("cifar100", cifar_root)
    first = run_epoch(device_loader_for(ds, BATCH, SEED, cpu()), 2)
    again = run_epoch(device_loader_for(ds, BATCH, SEED, cpu()), 2)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, again))
    other = run_epoch(device_loader_for(ds, BATCH, SEED, cpu()), 3)
    assert not torch.equal(joined(first, 2), joined(other, 2))


def test_resume_gives_the_tail_of_the_uninterrupted_epoch(cifar_root):
    ds = train_set("cifar100", cifar_root)
    loader = device_loader_for(ds, BATCH, SEED, cpu())
    full = run_epoch(loader, 4)
    for steps in (1, 3, len(full) - 1, len(full)):  # the trainer skips whole steps: skip = steps * batch_size
        tail = run_epoch(loader, 4, steps * BATCH)
        assert len(tail) == len(loader) == len(full) - steps
        for got, want in zip(tail, full[steps:]):
            assert all(torch.equal(g, w) for g, w in zip(got, want))
    tail = run_epoch(loader, 4, 37)  # any skip is exact: the draws belong to positions, not batches
    for item in range(3):
        assert torch.equal(joined(tail, item), joined(full, item)[37:])


def test_two_ranks_cover_the_epoch(cifar_root):
    ds = train_set("cifar100", cifar_root)
    shards = []
    for rank in range(2):
        loader = device_loader_for(ds, BATCH, SEED, cpu(rank, 2))
        batches = run_epoch(loader, 5)
        sampler = EpochSampler(N_TRAIN, SEED, True, rank, 2)
        sampler.set_epoch(5)
        assert joined(batches, 2).tolist() == list(sampler) and len(batches) == len(loader)
        shards.append(batches)
    index = [joined(s, 2) for s in shards]
    assert len(index[0]) == len(index[1]) == -(-N_TRAIN // 2)
    assert set(torch.cat(index).tolist()) == set(range(N_TRAIN))
    # Ranks draw their own augmentation (seeded by rank), so shared padding items are not augmented alike.
    r0, r1 = (torch.stack(loader_draws) for loader_draws in
              (device_loader_for(ds, BATCH, SEED, cpu(r, 2)).epoch_draws(5) for r in range(2)))
    assert not torch.equal(r0, r1)


def test_channels_last_and_fashion_mnist_batches(cifar_root, fmnist_root):
    ds = train_set("cifar100", cifar_root)
    plain = run_epoch(device_loader_for(ds, BATCH, SEED, cpu()), 1)
    last = run_epoch(device_loader_for(ds, BATCH, SEED, cpu(channels_last=True)), 1)
    assert last[0][0].is_contiguous(memory_format=torch.channels_last)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(plain, last))
    fm = run_epoch(device_loader_for(train_set("fashion_mnist", fmnist_root), 8, SEED, cpu()), 1)
    images = joined(fm, 0)
    assert images.shape == (20, 3, 32, 32) and torch.equal(images[:, 0], images[:, 2])


# ------------------------------------------------------------------------------------ what it refuses
def test_unsupported_datasets_are_refused_with_a_reason(cifar_root, tmp_path):
    ds = train_set("cifar100", cifar_root)
    with pytest.raises(ValueError, match="CRD"):
        device_loader_for(crd_dataset(ds, 4), BATCH, SEED, cpu())
    write_tiny_imagefolder(str(tmp_path), num_classes=2, per_class_train=2, per_class_val=1)
    with pytest.raises(ValueError, match="in memory"):
        device_loader_for(build_dataset("imagenet", str(tmp_path), "train", seed=SEED), BATCH, SEED, cpu())
    with pytest.raises(ValueError, match="RandomCrop"):
        device_loader_for(build_dataset("cifar100", cifar_root, "val"), BATCH, SEED, cpu())
    with pytest.raises(ValueError, match="seed"):
        device_loader_for(ds, BATCH, None, cpu())
