"""Train a CIFAR teacher (plain cross-entropy) in RepDistiller's checkpoint format.

Example: python train_cifar_teacher.py --model resnet32x4 --trial 0
"""
import os

from dataset import num_classes
from helper.cli.entry import run_cli
from helper.cli.main import main as run_profile
from helper.cli.parser import check_num_cls, teacher_parser
from helper.cli.profile import Profile
from models import model_dict

TEACHER_PROFILE = Profile(
    script=os.path.abspath(__file__), role="teacher",
    description="Train a CIFAR-100/CIFAR-10/Fashion-MNIST model from scratch.",
    zoo=model_dict, datasets=("cifar100", "cifar10", "fashion_mnist"), dataset="cifar100",
    epochs=240, batch_size=64, learning_rate=0.05, weight_decay=5e-4, lr_decay_epochs=(150, 180, 210),
    save_freq=240, model="resnet110",
    num_classes=lambda opt: check_num_cls(opt, num_classes(opt.dataset, opt.data_root)),
)


def parser():
    """The official teacher flags plus dataset, seed and device choices."""
    return teacher_parser(TEACHER_PROFILE)


def main(argv=None):
    """Parse, build and train."""
    return run_profile(TEACHER_PROFILE, argv)


if __name__ == "__main__":
    run_cli(main)
