"""Train a CIFAR teacher (plain cross-entropy) in RepDistiller's checkpoint format.

Example: python train_cifar_teacher.py --model resnet32x4 --trial 0
"""
import argparse
import os
import sys

from dataset import num_classes
from distiller_zoo import Vanilla
from helper.loaders.loader import load_datasets
from helper.errors import run_cli
from helper.cli.gids import apply_gids
from helper.teachers.loading import build_model
from helper.cli.parser import add_num_cls_flag, base_parser, check_num_cls, finite_float, resolve_seed
from helper.runtime.device import cleanup, seed_everything, setup_runtime, shared_seed
from helper.training.trainer import Trainer, prepare_run_dir
from models import model_dict

SMALL_LR_MODELS = ("MobileNetV2", "ShuffleV1", "ShuffleV2")  # trained at lr 0.01 by the official scripts


def parser():
    """The official teacher flags plus dataset, seed and device choices."""
    p = base_parser("Train a CIFAR-100/CIFAR-10/Fashion-MNIST model from scratch.", epochs=240, batch_size=64,
                    learning_rate=None, weight_decay=5e-4, lr_decay="step", lr_decay_epochs=[150, 180, 210],
                    dataset="cifar100", datasets=["cifar100", "cifar10", "fashion_mnist"], save_freq=240)
    p.add_argument("--model", default="resnet110", help=f"architecture: {', '.join(model_dict)}")
    add_num_cls_flag(p)
    p.add_argument("-c", "--ceta", type=finite_float, default=argparse.SUPPRESS,
                   help="inert, accepted for compatibility: the official teacher script scales the logits by it "
                        "only when validating, which changes no accuracy; the teacher trains on raw logits")
    return p


def main(argv=None):
    """Parse, build and train."""
    opt = parser().parse_args(argv)
    if opt.learning_rate is None:
        opt.learning_rate = 0.01 if opt.model in SMALL_LR_MODELS else 0.05
    classes = check_num_cls(opt, num_classes(opt.dataset, opt.data_root))
    if opt.model not in model_dict:
        build_model(model_dict, opt.model, classes, "--model")  # raises the one-line error
    run_dir = os.path.join(opt.save_root, "models", f"{opt.model}_{opt.dataset}_lr_{opt.learning_rate}_decay_"
                                                    f"{opt.weight_decay}_trial_{opt.trial}")
    store = prepare_run_dir(run_dir, opt.model, opt)
    try:
        apply_gids(opt, os.path.abspath(__file__), sys.argv[1:] if argv is None else argv, before_spawn=store.close)
        resolve_seed(opt, run_dir)
        runtime = setup_runtime(opt.device, opt.amp, opt.channels_last, opt.deterministic, keep_host_memory=True)
        opt.seed = shared_seed(opt.seed, runtime)
        seed_everything(opt.seed + runtime.rank)
        train_set, val_set = load_datasets(opt)
        model = build_model(model_dict, opt.model, classes, "--model")
        trainer = Trainer(Vanilla(model), model, opt, runtime, run_dir=run_dir, name=opt.model, store=store,
                          train_set=train_set, val_set=val_set,
                          record={"teacher": None, "student": opt.model, "method": "vanilla",
                                  "dataset": opt.dataset, "trial": opt.trial})
        return trainer.fit()
    finally:
        store.close()
        cleanup()


if __name__ == "__main__":
    run_cli(main)
