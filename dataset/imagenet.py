"""ImageNet (or any ImageFolder tree with train/ and val/) with indexed, reproducibly augmented items."""
import os

from PIL import Image, UnidentifiedImageError
from torchvision import datasets, transforms

from .common import DatasetNotFound, EpochSeeded, corrupt_file, not_found

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def candidate_dirs(root, split):
    """The split folders tried, in order: <root>/<split>, then <root>/imagenet/<split>."""
    return [os.path.join(root, split), os.path.join(root, "imagenet", split)]


def find_split_dir(root, split):
    """The first existing split folder for `split` ('train' or 'val') under `root`, else DatasetNotFound."""
    tried = candidate_dirs(root, split)
    for folder in tried:
        if os.path.isdir(folder):
            return folder
    raise not_found(f"ImageFolder '{split}' split", tried,
                    "pass --data_root pointing to a folder with train/<class>/ and val/<class>/ images "
                    "(ImageNet cannot be downloaded automatically)")


def imagenet_transforms(train, image_size=224, mean=MEAN, std=STD):
    """RandomResizedCrop + flip (train) or Resize(size*256/224) + CenterCrop (val), then Normalize(mean, std)
    (ImageNet's statistics unless a user folder's --mean/--std are given)."""
    tail = [transforms.ToTensor(), transforms.Normalize(mean, std)]
    if train:
        head = [transforms.RandomResizedCrop(image_size), transforms.RandomHorizontalFlip()]
    else:
        head = [transforms.Resize(round(image_size * 256 / 224)), transforms.CenterCrop(image_size)]
    return transforms.Compose(head + tail)


def folder_num_classes(root):
    """The number of class folders in the train split under `root`."""
    folder = find_split_dir(root, "train")
    try:
        classes, _ = datasets.folder.find_classes(folder)
    except FileNotFoundError as err:  # a train/ without class folders
        raise DatasetNotFound(f"{folder} holds no class folders; put the training images in one folder per class "
                              "there (train/<class>/*.jpg), or point --data_root at a folder laid out so") from err
    return len(classes)


class ImageFolderWithIndex(EpochSeeded, datasets.ImageFolder):
    """torchvision ImageFolder whose items are (img, target, index)."""

    def __init__(self, root, transform=None, seed=None):
        try:
            datasets.ImageFolder.__init__(self, root, transform=transform)
        except FileNotFoundError as err:  # ImageFolder's "no class folders / no valid files" errors
            raise not_found("ImageFolder images", [root], f"{err}; pass --data_root") from err
        self._init_seed(seed)

    def __getitem__(self, key):
        epoch, index = self._item(key)
        path, target = self.samples[index]
        try:
            image = self.loader(path)
        except (OSError, Image.DecompressionBombError) as err:  # not an image, truncated, unreadable
            # raised in a loader worker too: run_cli prints this one line from the worker's re-raise
            raise corrupt_file(path, f"cannot be read as an image ({_reason(err)})",
                               "delete or replace it (every file in the class folders must be an image)") from None
        img = self._augment(image, index, epoch)
        return img, target, index


def _reason(err):
    """PIL's complaint in a few words, without the path it repeats."""
    if isinstance(err, UnidentifiedImageError):
        return "not an image file PIL knows"
    return str(err).splitlines()[0] if str(err).strip() else type(err).__name__
