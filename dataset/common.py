"""Pieces shared by every dataset: the not-found error, seeded augmentation, CIFAR-style transforms, the CRD wrapper."""
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms

# Separate SeedSequence streams so the transform RNG and the CRD sampling RNG of one item are independent.
_TRANSFORM_STREAM = 0
_CRD_STREAM = 1


class DatasetError(Exception):
    """The data cannot be used as it is on disk; the one-line message names the file or folder and what to do."""


class DatasetNotFound(DatasetError, FileNotFoundError):
    """The data is not on disk (and was not downloaded); the one-line message says where we looked and what to do."""


class CorruptDataFile(DatasetError, ValueError):
    """A data file is truncated or holds something other than its format; the message names it and the fix."""


def not_found(what, paths, hint):
    """Build a DatasetNotFound naming `what`, the `paths` looked in, and the `hint` on how to get the data."""
    looked = ", ".join(str(p) for p in paths)
    return DatasetNotFound(f"{what} not found (looked in: {looked}); {hint}")


def corrupt_file(path, problem, hint="delete it and get the dataset again (run once online with --download)"):
    """Build a CorruptDataFile: '<path>: <problem>; <hint>'."""
    return CorruptDataFile(f"{path}: {problem}; {hint}")


def check_seed(seed):
    """Return `seed` if it is None or a non-negative int, else raise ValueError."""
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
        raise ValueError(f"seed must be None or a non-negative int, got {seed!r}")
    return None if seed is None else int(seed)


def item_seed_sequence(seed, epoch, index, stream):
    """The SeedSequence of one item: a function of (seed, epoch, index, stream) only."""
    return np.random.SeedSequence((seed, epoch, index, stream))


class EpochSeeded:
    """Mixin adding `seed`, `epoch`, `set_epoch()` and a transform reproducible per (seed, epoch, index)."""

    def _init_seed(self, seed):
        self.seed = check_seed(seed)
        self.epoch = 0

    def set_epoch(self, epoch):
        """Select the epoch whose augmentation (and CRD sampling) the next items use."""
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative int, got {epoch!r}")
        self.epoch = int(epoch)

    def _item(self, key):
        """(epoch, index) of a key: an index, or an (epoch, index) pair from an epoch-tagging sampler."""
        return (int(key[0]), int(key[1])) if isinstance(key, tuple) else (self.epoch, key)

    def _augment(self, img, index, epoch=None):
        if self.transform is None:
            return img
        if self.seed is None:
            return self.transform(img)
        epoch = self.epoch if epoch is None else epoch
        state = item_seed_sequence(self.seed, epoch, index, _TRANSFORM_STREAM).generate_state(1, np.uint64)[0]
        # fork_rng restores the CPU generator afterwards, so the caller's RNG stream is untouched. We seed only the
        # CPU generator: torch.manual_seed would also reseed CUDA, whose state fork_rng(devices=[]) does not restore.
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(int(state))
            return self.transform(img)


class InMemoryImages(EpochSeeded, Dataset):
    """A dataset of uint8 images in memory (`data`, N x H x W [x C]) and int `targets`; items (img, target, index)."""

    def __len__(self):
        return len(self.data)

    def __getitem__(self, key):
        epoch, index = self._item(key)
        img = self._augment(Image.fromarray(self.data[index]), index, epoch)
        return img, self.targets[index], index


def cifar_style_transforms(mean, std, train):
    """RandomCrop(32, padding=4) + flip + ToTensor + Normalize for train; ToTensor + Normalize otherwise."""
    tail = [transforms.ToTensor(), transforms.Normalize(mean, std)]
    if not train:
        return transforms.Compose(tail)
    return transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()] + tail)


class CRDDataset(Dataset):
    """Wrap a dataset of (img, target, index) items into CRD items (img, target, index, contrast_index).

    contrast_index is an int64 array [positive, K negatives]; 'exact' uses the item itself as the positive, 'relax' a
    random item of the same class; negatives come from the other classes, without replacement when K allows it.
    """

    def __init__(self, base, k, mode="exact", seed="base"):
        if mode not in ("exact", "relax"):
            raise ValueError(f"CRD mode must be 'exact' or 'relax', got {mode!r}")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
            raise ValueError(f"CRD k must be a non-negative int, got {k!r}")
        self.base = base
        self.k = int(k)
        self.mode = mode
        self.seed = check_seed(getattr(base, "seed", None) if seed == "base" else seed)
        targets = np.asarray(base.targets, dtype=np.int64)
        if targets.ndim != 1 or len(targets) != len(base):
            raise ValueError("base.targets must be one int per item")
        self.targets = base.targets
        # Items grouped by class: class c occupies [start, start + count) of `_by_class`. Negatives are never
        # stored (that is O(N x classes)); rank r among "not class c" is position r, or r + count past the class
        # block. Works for unbalanced classes, unlike RepDistiller's np.asarray of per-class lists.
        self._targets = targets
        self._by_class = np.argsort(targets, kind="stable")
        labels, starts, counts = np.unique(targets[self._by_class], return_index=True, return_counts=True)
        self._blocks = {int(c): (int(a), int(n)) for c, a, n in zip(labels, starts, counts)}
        if self.k > 0 and len(self._blocks) < 2:
            raise ValueError("CRD needs at least two classes to draw negatives from")

    def __len__(self):
        return len(self.base)

    @property
    def epoch(self):
        """The wrapped dataset's epoch (one source of truth, so either object's set_epoch works)."""
        return getattr(self.base, "epoch", 0)

    def set_epoch(self, epoch):
        """Set the epoch of the wrapped dataset (which this wrapper reads)."""
        self.base.set_epoch(epoch)

    def _rng(self, index, epoch):
        if self.seed is None:
            # Draw the generator's seed from NumPy's global RNG, which DataLoader workers reseed per worker.
            return np.random.default_rng(np.random.randint(0, 2**63 - 1))
        return np.random.default_rng(item_seed_sequence(self.seed, epoch, index, _CRD_STREAM))

    def contrast_index(self, index, epoch=None):
        """The [positive, K negatives] int64 array of item `index` for `epoch` (default: the current one)."""
        rng = self._rng(index, self.epoch if epoch is None else epoch)
        start, count = self._blocks[int(self._targets[index])]
        positive = index if self.mode == "exact" else self._by_class[start + rng.integers(count)]
        n_candidates = len(self._targets) - count
        ranks = rng.choice(n_candidates, self.k, replace=self.k > n_candidates)
        negatives = self._by_class[ranks + count * (ranks >= start)]
        return np.concatenate(([positive], negatives)).astype(np.int64)

    def __getitem__(self, key):
        epoch = int(key[0]) if isinstance(key, tuple) else None  # an epoch-tagged key passes through to the base
        img, target, index = self.base[key]
        return img, target, index, self.contrast_index(index, epoch)
