"""A teacher for a user's classes (scripts/train_teacher.py) resolved: a torchvision/timm classifier fine-tuned from
its published weights with a new head for the folder's classes (--pretrained), or trained from scratch.

The run folder (<save_root>/models/<model>_<data>_<ft|scratch>_lr_<lr>_trial_<t>/) holds config.json with the class
names and split.json when --val_split drew the validation images; train_imagenet_student.py checks a student's
classes against them and validates on the same split.
"""
import os
from types import MappingProxyType

import torch.nn.functional as F

from distiller_zoo import Vanilla
from helper.argtypes import fraction_below_one, non_negative_int, positive_int
from helper.cli.external import (UserFolder, add_data_flags, check_split_seed, external_errors, file_tag,
                                 load_backbone, user_data)
from helper.cli.parser import profile_parser
from helper.cli.profile import Job
from helper.errors import UsageError
from models import external

FINE_TUNE_LR = 0.01  # SGD with momentum 0.9 at batch 64: a new head on a pretrained backbone moves little
# (a random network trains at the profile's learning rate, the usual ImageNet 0.1)


class FineTune(Vanilla):
    """Cross-entropy on the folder's labels, with optional label smoothing (off by default)."""

    def __init__(self, model, label_smoothing=0.0):
        super().__init__(model)
        self.label_smoothing = label_smoothing

    def forward(self, images, targets, index=None, contrast_index=None):
        """(logits, {"ce": the smoothed cross-entropy}) of a batch, as every method returns them."""
        logits = self.student(images)
        return logits, {"ce": F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing)}


def parser(profile):
    """The folder teacher's flags: the shared ones, the model and its recipe, and the data flags of user folders."""
    p = profile_parser(profile)
    g = p.add_argument_group("model and recipe")
    g.add_argument("--model", required=True, help="torchvision:NAME or timm:NAME (e.g. torchvision:resnet50)")
    g.add_argument("--pretrained", action="store_true", default=None,
                   help="start from the published weights (torch's cache), with a new classifier for the classes")
    g.add_argument("--image_size", type=positive_int, default=profile.image_size, help="training crop size")
    g.add_argument("--warmup_epochs", type=non_negative_int, default=1,
                   help="linear learning-rate warm-up over the first epochs (0: none)")
    g.add_argument("--label_smoothing", type=fraction_below_one, default=0.0, help="label smoothing (default 0: off)")
    add_data_flags(p.add_argument_group("data as you have it"))
    return p


def resolve(profile, opt):
    """The job of the parsed command line `opt`; every user error surfaces as a one-line UsageError or DatasetError.

    The folder, the architecture and the published weights are all checked before the run folder is."""
    if not external.is_external(opt.model):
        raise UsageError(f"--model {opt.model!r}: name a torchvision:NAME or timm:NAME classifier (the paper's CIFAR "
                         "teachers are trained by train_cifar_teacher.py)")
    with external_errors():
        external.check_name(opt.model)
    options = dict(vars(opt))
    check_split_seed(options)
    if opt.learning_rate is None:
        options["learning_rate"] = FINE_TUNE_LR if opt.pretrained else profile.learning_rate
    classes = user_data(options, None)[0].classes  # refuses a folder without images before anything
    with external_errors():
        external.build_plain(opt.model, len(classes), opt.image_size)  # refuses a size the architecture cannot take
        published = external.published_state(opt.model, "--pretrained") if opt.pretrained else None
    options.update(classes=list(classes), num_classes=len(classes))  # saved: the student run checks them by name
    data_tag = file_tag(os.path.basename(os.path.normpath(opt.data_root)) or "data")
    name = file_tag(opt.model)
    run_dir = os.path.join(opt.save_root, "models", f"{name}_{data_tag}_{'ft' if opt.pretrained else 'scratch'}_lr_"
                                                    f"{options['learning_rate']}_trial_{opt.trial}")
    data = UserFolder(run_dir)

    def build(options, n_data):
        """The classifier (its published backbone loaded) and its supervised training; the split saved and the new
        tensors logged before training."""
        nonlocal published
        # built here, after the run's seed is set (resolve runs before it): --seed fixes the initial weights
        model = external.build_plain(opt.model, len(classes), opt.image_size)
        fresh = load_backbone(model, published, opt.model) if published is not None else None
        published = None  # the model holds the weights now

        def check(trainer, runtime):
            data.save(options, runtime)
            if fresh is not None:
                trainer.log(f"{opt.model}: published weights loaded; new for the {len(classes)} classes: "
                            f"{', '.join(fresh) if fresh else 'nothing (same class count)'}")

        record = {"teacher": None, "student": opt.model, "method": "finetune" if opt.pretrained else "vanilla",
                  "dataset": data_tag, "trial": opt.trial}
        return FineTune(model, opt.label_smoothing), model, record, check

    return Job(MappingProxyType(options), run_dir, name, None, 0, opt.image_size, build, datasets=data)
