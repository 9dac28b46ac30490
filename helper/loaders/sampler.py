"""The training order: drawn from (seed, epoch) alone, so a resumed epoch sees the same order; sharded over ranks."""
import torch
from torch.utils.data import Sampler


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
