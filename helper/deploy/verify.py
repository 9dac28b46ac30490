"""Checking an export: a fixed verification batch in the dataset's real test format, and the comparison of an
export's logits with the student's, refused beyond the tolerances."""
from collections import namedtuple

import numpy as np
import torch
from PIL import Image

from helper.errors import UsageError

# max |logit difference| over the verification batch divided by max(1, max |reference logit|). float32 rounding
# through a deep network stays near 1e-6; a wrong fold or a broken graph is off by 1e-2 or more.
FOLD_TOLERANCE = 1e-4   # the folded PyTorch model (.pth) against the student with its FT
ONNX_TOLERANCE = 1e-4   # ONNX Runtime (CPU) on the exported file against the student with its FT
VERIFY_IMAGES = 16      # images in the fixed verification batch
VERIFY_SEED = 0

Check = namedtuple("Check", "error agree total")


def input_dataset(dataset, imagenet):
    """The dataset whose test transform shapes the inputs: imagenet, fashion_mnist, cifar10 or cifar100."""
    if imagenet or dataset == "imagenet":
        return "imagenet"
    return dataset if dataset in ("cifar10", "cifar100", "fashion_mnist") else "cifar100"


def eval_transform(dataset, image_size):
    """The dataset's own test-time transform (PIL image -> normalised 3-channel tensor)."""
    from dataset import cifar_transforms, fashion_mnist_transforms, imagenet_transforms

    if dataset == "imagenet":
        return imagenet_transforms(False, image_size)
    if dataset == "fashion_mnist":
        return fashion_mnist_transforms(False)
    return cifar_transforms(10 if dataset == "cifar10" else 100, False)


def _smooth_image(rng, height, width, channels):
    """uint8 H x W [x C]: a bilinearly upsampled 4x4 random colour field plus pixel noise (image-like statistics)."""
    coarse = rng.integers(0, 256, size=(4, 4, channels), dtype=np.uint8)
    mode = "L" if channels == 1 else "RGB"
    field = np.asarray(Image.fromarray(coarse.squeeze(-1) if channels == 1 else coarse, mode)
                       .resize((width, height), Image.BILINEAR), dtype=np.int64)
    noise = rng.integers(-24, 25, size=field.shape)
    return np.clip(field + noise, 0, 255).astype(np.uint8)


def verification_images(dataset, image_size, count=VERIFY_IMAGES, seed=VERIFY_SEED):
    """`count` deterministic PIL images in the dataset's stored format (CIFAR 32x32 RGB, Fashion-MNIST 28x28 grey
    zero-padded to 32, ImageNet-like RGB photos larger than the crop and not square)."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        if dataset == "fashion_mnist":
            images.append(Image.fromarray(np.pad(_smooth_image(rng, 28, 28, 1), 2), "L"))
        elif dataset == "imagenet":
            height = round(image_size * 1.25)
            images.append(Image.fromarray(_smooth_image(rng, height, round(height * 4 / 3), 3), "RGB"))
        else:
            images.append(Image.fromarray(_smooth_image(rng, 32, 32, 3), "RGB"))
    return images


def verification_batch(dataset, image_size, count=VERIFY_IMAGES, seed=VERIFY_SEED):
    """The fixed batch every export is checked on: `verification_images` through the real test transform."""
    transform = eval_transform(dataset, image_size)
    return torch.stack([transform(image) for image in verification_images(dataset, image_size, count, seed)])


def relative_difference(reference, candidate):
    """max|candidate - reference| relative to the largest reference logit magnitude (at least 1)."""
    difference = (candidate.float() - reference.float()).abs().max().item()
    return difference / max(1.0, reference.abs().max().item())


def compare(reference, candidate):
    """Check(relative logit difference, images whose top-1 class agrees, images)."""
    agree = int((reference.argmax(1) == candidate.argmax(1)).sum().item())
    return Check(relative_difference(reference, candidate), agree, reference.shape[0])


def require(check, tolerance, what):
    """Refuse (UsageError, nothing written) unless top-1 agrees on every image and the logits are within tolerance."""
    if check.agree == check.total and check.error <= tolerance:
        return check
    raise UsageError(f"export refused, nothing written: {what} differs from the student with its feature transform "
                     f"(largest logit difference {check.error:.2e} relative to the largest logit, tolerance "
                     f"{tolerance:.0e}; top-1 agrees on {check.agree}/{check.total} verification images); "
                     "report this with the checkpoint")


def describe(check, tolerance):
    """One phrase for the output: the measured difference, the tolerance and the top-1 agreement."""
    return (f"largest logit difference to the student with its FT {check.error:.2e} relative to its largest logit "
            f"(tolerance {tolerance:.0e}), top-1 agrees on {check.agree}/{check.total} verification images")
