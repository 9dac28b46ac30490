"""Train a teacher for your own classes: a torchvision/timm classifier fine-tuned (or trained from scratch) on a folder.

python scripts/train_teacher.py --model torchvision:resnet50 --pretrained --data_root photos --val_split 0.1
python scripts/train_teacher.py --model torchvision:resnet18 --data_root photos --epochs 90 --learning_rate 0.1

`--pretrained` loads torchvision's published weights from torch's cache and gives the model a new classifier for
the folder's classes. The run folder (<save_root>/models/<model>_<data>_..._trial_<t>/) holds config.json with the
class names, split.json when --val_split drew the validation images, and <model>_best.pth / _last.pth whose 'model'
is a plain state dict that loads into torchvision.models.NAME(num_classes=K) and into train_imagenet_student.py's
--path_t (which checks the class names).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch.nn.functional as F  # noqa: E402

from distiller_zoo import Vanilla  # noqa: E402
from helper.errors import UsageError, run_cli  # noqa: E402
from helper.external_run import (add_data_flags, file_tag, load_backbone, user_data)  # noqa: E402
from helper.launch import apply_gids  # noqa: E402
from helper.options import base_parser, non_negative_int, positive_int, resolve_seed  # noqa: E402
from helper.runtime import cleanup, seed_everything, setup_runtime, shared_seed  # noqa: E402
from helper.trainer import Trainer, prepare_run_dir  # noqa: E402

FINE_TUNE_LR, SCRATCH_LR = 0.01, 0.1  # SGD with momentum 0.9 at batch 64: a new head on a pretrained backbone
# moves little, a random network needs the usual ImageNet rate


class FineTune(Vanilla):
    """Cross-entropy on the folder's labels, with optional label smoothing (off by default)."""

    def __init__(self, model, label_smoothing=0.0):
        super().__init__(model)
        self.label_smoothing = label_smoothing

    def forward(self, images, targets, index=None, contrast_index=None):
        logits = self.student(images)
        return logits, {"ce": F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing)}


def smoothing(text):
    """A label-smoothing factor in [0, 1)."""
    import argparse

    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"label smoothing must be in [0, 1), got {text}")
    return value


def parser():
    """The teacher script's flags."""
    p = base_parser(__doc__.splitlines()[0], epochs=30, batch_size=64, learning_rate=None, weight_decay=1e-4,
                    lr_decay="cos", lr_decay_epochs=[20, 25], dataset="imagenet", datasets=["imagenet"], save_freq=10)
    g = p.add_argument_group("model and recipe")
    g.add_argument("--model", required=True, help="torchvision:NAME or timm:NAME (e.g. torchvision:resnet50)")
    g.add_argument("--pretrained", action="store_true", default=None,
                   help="start from the published weights (torch's cache), with a new classifier for the classes")
    g.add_argument("--image_size", type=positive_int, default=224, help="training crop size")
    g.add_argument("--warmup_epochs", type=non_negative_int, default=1,
                   help="linear learning-rate warm-up over the first epochs (0: none)")
    g.add_argument("--label_smoothing", type=smoothing, default=0.0, help="label smoothing (default 0: off)")
    add_data_flags(p.add_argument_group("data as you have it"))
    return p


def main(argv=None):
    """Parse, build (and load the published backbone), train; returns the run summary."""
    from models import external

    opt = parser().parse_args(argv)
    if not external.is_external(opt.model):
        raise UsageError(f"--model {opt.model!r}: name a torchvision:NAME or timm:NAME classifier (the paper's CIFAR "
                         "teachers are trained by train_cifar_teacher.py)")
    try:
        external.check_name(opt.model)
    except external.ExternalModelError as err:
        raise UsageError(str(err)) from None
    if opt.split_seed is not None and opt.val_split is None:
        raise UsageError("--split_seed only applies with --val_split")
    if opt.learning_rate is None:
        opt.learning_rate = FINE_TUNE_LR if opt.pretrained else SCRATCH_LR
    train_probe, _, _ = user_data(opt, opt.image_size, None)  # refuses a folder without images before anything
    classes = train_probe.classes
    try:
        model = external.build_plain(opt.model, len(classes), opt.image_size)
        published = external.published_state(opt.model, "--pretrained") if opt.pretrained else None
    except external.ExternalModelError as err:
        raise UsageError(str(err)) from None
    opt.classes, opt.num_classes = list(classes), len(classes)
    data_tag = file_tag(os.path.basename(os.path.normpath(opt.data_root)) or "data")
    name = file_tag(opt.model)
    run_dir = os.path.join(opt.save_root, "models", f"{name}_{data_tag}_{'ft' if opt.pretrained else 'scratch'}_lr_"
                                                    f"{opt.learning_rate}_trial_{opt.trial}")
    store = prepare_run_dir(run_dir, name, opt)
    try:
        apply_gids(opt, os.path.abspath(__file__), sys.argv[1:] if argv is None else argv, before_spawn=store.close)
        resolve_seed(opt, run_dir)
        runtime = setup_runtime(opt.device, opt.amp, opt.channels_last, opt.deterministic, keep_host_memory=True)
        opt.seed = shared_seed(opt.seed, runtime)
        seed_everything(opt.seed + runtime.rank)
        from dataset.user_folder import SPLIT_FILE, write_split

        own_split = os.path.join(run_dir, SPLIT_FILE)
        train_set, val_set, split = user_data(opt, opt.image_size, own_split if os.path.isfile(own_split) else None)
        if published is not None:
            fresh = load_backbone(model, published, opt.model)
            del published
        trainer = Trainer(FineTune(model, opt.label_smoothing), model, opt, runtime, run_dir=run_dir, name=name,
                          store=store, train_set=train_set, val_set=val_set,
                          record={"teacher": None, "student": opt.model, "method": "finetune" if opt.pretrained
                                  else "vanilla", "dataset": data_tag, "trial": opt.trial})
        if split is not None and runtime.is_main and not os.path.isfile(own_split):
            os.makedirs(run_dir, exist_ok=True)
            write_split(own_split, opt.data_root, split, opt.val_split, opt.split_seed or 0)
        if opt.pretrained:
            trainer.log(f"{opt.model}: published weights loaded; new for the {len(classes)} classes: "
                        f"{', '.join(fresh) if fresh else 'nothing (same class count)'}")
        return trainer.fit()
    finally:
        store.close()
        cleanup()


if __name__ == "__main__":
    run_cli(main)
