"""Datasets to loaders: a seeded, resumable, rank-sharded epoch order; unpadded validation shards; --gpu_data."""
import os
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch.utils.data import DataLoader, Subset

from helper.errors import UsageError
from helper.loaders.device import device_loader_for
from helper.loaders.sampler import EpochSampler


@dataclass(frozen=True)
class LoaderSettings:
    """What the data side of a run needs from the command line (and from the method: its contrast sampling)."""

    dataset: str
    data_root: str
    download: bool
    image_size: Optional[int]  # the training crop (ImageNet); None: the dataset's own size
    contrast: Optional[Tuple[int, str]]  # CRD's (negatives per sample, mode) when the method samples contrasts
    seed: int  # the training order's and augmentation's seed
    num_workers: Optional[int]  # None: the script's official count, capped by the CPUs
    official_num_workers: int
    gpu_data: bool  # keep CIFAR/Fashion-MNIST on the device and augment there


def train_loader(dataset, batch_size, seed, runtime, num_workers=8):
    """The training loader: per-rank batch size `batch_size`, seeded order, persistent workers, pinned on CUDA."""
    sampler = EpochSampler(len(dataset), seed, True, runtime.rank, runtime.world_size, tag_epoch=True)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      pin_memory=runtime.device.type == "cuda", drop_last=False,
                      persistent_workers=num_workers > 0, generator=_loader_generator(seed, runtime.rank))


def eval_loader(dataset, batch_size, runtime, num_workers=4):
    """A validation loader over this rank's unpadded shard (rank, rank+W, ...), so the ranks cover the set once."""
    if runtime.distributed:
        dataset = Subset(dataset, range(runtime.rank, len(dataset), runtime.world_size))
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      pin_memory=runtime.device.type == "cuda", generator=_loader_generator(0, runtime.rank))


def _loader_generator(seed, rank):
    """The loader's own generator: each new iterator draws its worker base seed from it, not from the global RNG,
    so a resumed epoch (which starts a new iterator) leaves the process's RNG stream where the original run had it."""
    return torch.Generator().manual_seed((seed or 0) * 1009 + rank)


def load_datasets(settings):
    """Train and validation sets of `settings.dataset` (the train set seeded; CRD-sampled when the method asks)."""
    from dataset import build_dataset, crd_dataset

    train = build_dataset(settings.dataset, settings.data_root, "train", download=settings.download,
                          image_size=settings.image_size, seed=settings.seed)
    val = build_dataset(settings.dataset, settings.data_root, "val", download=settings.download,
                        image_size=settings.image_size)
    check_same_classes(train, val)
    if settings.contrast is not None:
        train = crd_dataset(train, *settings.contrast)
    return train, val


def check_same_classes(train, val):
    """Folder-built splits must name the same classes: ImageFolder numbers each split's folders on its own, so a
    class missing from one split would silently shift every later label of the other."""
    from dataset.common import DatasetError

    train_classes, val_classes = getattr(train, "class_to_idx", None), getattr(val, "class_to_idx", None)
    if train_classes is None or val_classes is None or train_classes == val_classes:
        return
    def only_in(split, names, others):
        extra = sorted(set(names) - set(others))
        return f"only in {split}: {', '.join(extra[:3])}{' ...' if len(extra) > 3 else ''}" if extra else None

    differ = "; ".join(filter(None, (only_in("train", train_classes, val_classes),
                                      only_in("val", val_classes, train_classes))))
    raise DatasetError(f"the train and val splits have different class folders ({differ}); give both splits the "
                       "same class folders")


def worker_count(requested, official, runtime):
    """--num_workers, or the official count capped by this process's share of the CPUs."""
    if requested is not None:
        return requested
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(0, min(official, cpus // local_ranks))


def build_loaders(train_set, val_set, settings, runtime, batch):
    """(training loader, validation loader) with `batch` samples per process: the CPU DataLoader, or with --gpu_data
    the device-resident loader (CIFAR and Fashion-MNIST)."""
    workers = worker_count(settings.num_workers, settings.official_num_workers, runtime)
    if settings.gpu_data:
        try:
            train = device_loader_for(train_set, batch, settings.seed, runtime)
        except ValueError as err:
            raise UsageError(f"--gpu_data: {err}; drop --gpu_data") from None
    else:
        train = train_loader(train_set, batch, settings.seed, runtime, workers)
    return train, eval_loader(val_set, batch, runtime, workers // 2)
