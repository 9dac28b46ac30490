"""Distil a CIFAR student from a CIFAR teacher with NORM (or any registered method).

Example (the paper's README): python train_cifar_student.py --path_t ./save/models/resnet32x4_vanilla/ckpt_epoch_240.pth \
    --distill NORM --model_t resnet32x4 --model_s resnet8x4 -r 0.1 -a 0 -b 1.0 -s 8 --trial 1
"""
import os

from dataset import num_classes
from helper.cli.entry import run_cli
from helper.cli.main import main as run_profile
from helper.cli.parser import check_num_cls
from helper.cli.profile import Profile
from models import model_dict

CIFAR_PROFILE = Profile(
    script=os.path.abspath(__file__), role="student",
    description="Distil a CIFAR-100/CIFAR-10/Fashion-MNIST student (NORM, NORM_CRD and the baselines).",
    zoo=model_dict, datasets=("cifar100", "cifar10", "fashion_mnist"), dataset="cifar100",
    epochs=240, batch_size=64, learning_rate=0.05, weight_decay=5e-4, lr_decay_epochs=(150, 180, 210),
    model="resnet8x4", probe_size=32, schedule_kind="cifar", official_num_cls="checked",  # the official --num_cls
    num_classes=lambda opt: check_num_cls(opt, num_classes(opt.dataset, opt.data_root)),
    own_models="models",  # torchvision:/timm: names on the 32-px sets (helper/cli/external.py)
    default_path_t=lambda opt: None,
    teacher_hint="fetch RepDistiller's teachers with bash scripts/fetch_pretrained_teachers.sh, or train one "
                 "with python train_cifar_teacher.py --model <name>",
)


def main(argv=None):
    """Entry point."""
    return run_profile(CIFAR_PROFILE, argv)


if __name__ == "__main__":
    run_cli(main)
