"""A device-resident training loader for the in-memory 32x32 datasets (CIFAR-10/100, Fashion-MNIST).

The uint8 training set is copied once to the run's device; every batch is cropped, flipped and normalised there
with a few batched tensor ops, in the order of `EpochSampler`. The trainer drives it like the DataLoader of
`helper.loaders.loader.train_loader`: `loader.sampler.set_epoch(epoch, skip)`, `len(loader)`, and batches
`(images, targets, index)`, all three already on the device.

The augmentation has torchvision's distribution (RandomCrop with zero padding, RandomHorizontalFlip) but its own
random stream, so a run with this loader is reproducible and resumable, yet not bitwise equal to a DataLoader run.
"""
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torchvision import transforms

from helper.loaders.sampler import EpochSampler

_AUGMENT_STREAM = 2  # SeedSequence stream apart from dataset/common.py's transform (0) and CRD (1) streams


@dataclass(frozen=True)
class Augmentation:
    """The train transform as data: zero-pad `pad`, crop `size`, flip with `flip_p`, normalise, repeat channels."""

    pad: int
    size: tuple
    flip_p: float
    mean: tuple
    std: tuple
    repeat: int = 1  # Fashion-MNIST: normalise its one channel, then repeat it to 3 (RepeatChannels)


def augmentation_of(transform):
    """Read an Augmentation off a torchvision Compose; ValueError unless it is RandomCrop+Flip+ToTensor+Normalize."""
    from dataset.fashion_mnist import RepeatChannels

    steps = list(getattr(transform, "transforms", [transform]))
    kinds = (transforms.RandomCrop, transforms.RandomHorizontalFlip, transforms.ToTensor, transforms.Normalize)
    extra = steps[len(kinds):]
    if (len(steps) < len(kinds) or not all(isinstance(s, k) for s, k in zip(steps, kinds))
            or len(extra) > 1 or (extra and not isinstance(extra[0], RepeatChannels))):
        names = " + ".join(type(s).__name__ for s in steps) or repr(transform)
        raise ValueError(f"the train transform is {names}; the device loader reproduces only "
                         "RandomCrop + RandomHorizontalFlip + ToTensor + Normalize [+ RepeatChannels]")
    crop, flip, _, normalize = steps[:4]
    padding = crop.padding if isinstance(crop.padding, (list, tuple)) else [crop.padding or 0]
    if (len(set(padding)) != 1 or crop.padding_mode != "constant" or crop.fill != 0 or crop.pad_if_needed):
        raise ValueError(f"{crop} is not supported: the device loader pads every side equally with zeros")
    return Augmentation(pad=int(padding[0]), size=tuple(crop.size), flip_p=float(flip.p),
                        mean=tuple(map(float, normalize.mean)), std=tuple(map(float, normalize.std)),
                        repeat=extra[0].n if extra else 1)


@lru_cache(maxsize=None)
def _statistics(aug, device):
    # Made once per device: torch.tensor(..., device='cuda') copies from pageable memory, a host sync per batch.
    return (torch.tensor(aug.mean, device=device).view(-1, 1, 1), torch.tensor(aug.std, device=device).view(-1, 1, 1))


def crop_flip_normalize(images, dy, dx, flip, aug, channels_last=False):
    """Augment uint8 images B x H x W x C at per-sample crop offsets (dy, dx) and flips: float B x C' x h x w."""
    device = images.device
    h, w = aug.size
    # Padding the uint8 batch with 0 before normalising is what RandomCrop does to the PIL image.
    padded = F.pad(images, (0, 0, aug.pad, aug.pad, aug.pad, aug.pad))
    rows = dy[:, None] + torch.arange(h, device=device)
    cols = torch.arange(w, device=device)
    cols = dx[:, None] + torch.where(flip[:, None], w - 1 - cols, cols)  # a flipped crop reads its columns backwards
    batch = torch.arange(len(images), device=device)[:, None, None]
    crops = padded[batch, rows[:, :, None], cols[:, None, :]]  # one gather: B x h x w x C
    # NHWC permuted to NCHW is channels_last in memory; the arithmetic is ToTensor's and Normalize's, op for op.
    mean, std = _statistics(aug, device)
    x = crops.permute(0, 3, 1, 2).float().div_(255).sub_(mean).div_(std)
    if aug.repeat > 1:
        x = x.expand(-1, aug.repeat, -1, -1)
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


class DeviceLoader:
    """Augmented batches (images, targets, index) of a uint8 image tensor held on `runtime.device`.

    `sampler` is an EpochSampler: its `set_epoch(epoch, skip)` picks the epoch's order and the samples to skip.
    """

    def __init__(self, images, targets, batch_size, seed, runtime, aug, dataset=None):
        self.images = images.to(runtime.device)  # N x H x W x C uint8: one copy for the whole run
        self.targets = targets.to(runtime.device)
        self.batch_size, self.seed, self.aug, self.dataset = batch_size, seed, aug, dataset
        self.device, self.channels_last, self.rank = runtime.device, runtime.channels_last, runtime.rank
        self.sampler = EpochSampler(len(images), seed, True, runtime.rank, runtime.world_size)

    def __len__(self):
        # From per_rank and skip, not len(sampler): that raises when a resume skips past the end (skip > per_rank).
        return -(-max(self.sampler.per_rank - self.sampler.skip, 0) // self.batch_size)

    def epoch_draws(self, epoch):
        """(dy, dx, flip) of every position of this rank's epoch, from (seed, epoch, rank) alone."""
        state = np.random.SeedSequence((self.seed, epoch, self.rank, _AUGMENT_STREAM)).generate_state(1, np.uint64)
        # A CPU generator makes the stream the same on every device; it runs once per epoch, not per batch.
        generator = torch.Generator().manual_seed(int(state[0]))
        n, (h, w) = self.sampler.per_rank, self.aug.size
        dy = torch.randint(0, self.images.shape[1] + 2 * self.aug.pad - h + 1, (n,), generator=generator)
        dx = torch.randint(0, self.images.shape[2] + 2 * self.aug.pad - w + 1, (n,), generator=generator)
        flip = torch.rand(n, generator=generator) < self.aug.flip_p
        return dy, dx, flip

    def __iter__(self):
        sampler = self.sampler
        order = torch.tensor(list(iter(sampler)), dtype=torch.int64).to(self.device, non_blocking=True)
        # Draws are made for the whole epoch and indexed by position, so a resumed epoch (skip > 0) continues
        # with exactly the crops and flips of the uninterrupted one, whatever `skip` is.
        dy, dx, flip = (t[sampler.skip:].to(self.device, non_blocking=True) for t in self.epoch_draws(sampler.epoch))
        for start in range(0, len(order), self.batch_size):
            index = order[start:start + self.batch_size]
            part = slice(start, start + len(index))
            images = crop_flip_normalize(self.images[index], dy[part], dx[part], flip[part], self.aug,
                                         self.channels_last)
            yield images, self.targets[index], index


def device_loader_for(dataset, batch_size, seed, runtime):
    """A DeviceLoader serving `dataset` on `runtime.device`; ValueError saying why when the dataset cannot be."""
    from dataset.common import CRDDataset

    name = type(dataset).__name__
    if isinstance(dataset, CRDDataset):
        raise ValueError("CRD-sampled datasets are not supported on the device: their items carry contrast indices "
                         "drawn per item on the CPU; use the standard loader")
    data = getattr(dataset, "data", None)
    if data is not None and not isinstance(data, torch.Tensor):
        data = torch.from_numpy(np.ascontiguousarray(data))
    if data is None or data.dtype != torch.uint8 or data.ndim not in (3, 4) or (data.ndim == 4 and data.shape[-1] != 3):
        raise ValueError(f"{name} does not hold its images in memory as a uint8 N x H x W [x 3] array `.data` "
                         "(e.g. an ImageFolder decodes files per item); the device loader serves CIFAR-10/100 and "
                         "Fashion-MNIST only")
    if data.ndim == 3:
        data = data[..., None]  # Fashion-MNIST: one channel
    targets = torch.as_tensor(np.asarray(getattr(dataset, "targets", [])), dtype=torch.int64)
    if targets.shape != (len(data),):
        raise ValueError(f"{name}.targets must hold one label per image ({len(data)}), got {tuple(targets.shape)}")
    if seed is None:
        raise ValueError("the device loader needs an integer seed (its order and augmentation are seeded)")
    aug = augmentation_of(getattr(dataset, "transform", None))
    if len(aug.mean) != data.shape[-1]:
        raise ValueError(f"{name}: Normalize has {len(aug.mean)} channels but the images have {data.shape[-1]}")
    return DeviceLoader(data, targets, batch_size, seed, runtime, aug, dataset)
