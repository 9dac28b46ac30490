"""Data loaders: a seeded, resumable, rank-sharded epoch order; unpadded validation shards."""
import os

import torch
from torch.utils.data import DataLoader, Sampler, Subset


class EpochSampler(Sampler):
    """Indices for one epoch drawn from (seed, epoch) alone, padded and sharded over ranks; can skip a prefix.

    With `tag_epoch` it yields (epoch, index) pairs, which the datasets accept: persistent loader workers then
    augment with the right epoch's seeds without being told of the new epoch.
    """

    def __init__(self, size, seed, shuffle=True, rank=0, world_size=1, tag_epoch=False):
        self.size, self.seed, self.shuffle, self.tag_epoch = size, seed, shuffle, tag_epoch
        self.rank, self.world_size = rank, world_size
        self.per_rank = -(-size // world_size)
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch, skip=0):
        """Select the epoch's order and how many of this rank's leading samples to skip (resume)."""
        self.epoch, self.skip = epoch, min(skip, self.per_rank)  # an interrupted last step may overshoot

    def __iter__(self):
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
            order = torch.randperm(self.size, generator=generator)
        else:
            order = torch.arange(self.size)
        padding = self.per_rank * self.world_size - self.size
        if padding:  # as DistributedSampler: every rank gets the same number of steps
            order = torch.cat([order, order[:padding]])
        indices = order[self.rank::self.world_size][self.skip:].tolist()
        return iter([(self.epoch, i) for i in indices] if self.tag_epoch else indices)

    def __len__(self):
        return self.per_rank - self.skip


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


def load_datasets(opt, image_size=None, contrast=False):
    """Train and validation sets of `opt.dataset` (the train set seeded by `opt.seed`; CRD-sampled on request)."""
    from dataset import build_dataset, crd_dataset

    train = build_dataset(opt.dataset, opt.data_root, "train", download=opt.download, image_size=image_size,
                          seed=opt.seed)
    val = build_dataset(opt.dataset, opt.data_root, "val", download=opt.download, image_size=image_size)
    check_same_classes(train, val)
    if contrast:
        train = crd_dataset(train, opt.nce_k, opt.mode)
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
