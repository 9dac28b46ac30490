"""Distil a CIFAR student from a CIFAR teacher with NORM (or any registered method).

Example (the paper's README): python train_cifar_student.py --path_t ./save/models/resnet32x4_vanilla/ckpt_epoch_240.pth \
    --distill NORM --model_t resnet32x4 --model_s resnet8x4 -r 0.1 -a 0 -b 1.0 -s 8 --trial 1
"""
import os

from dataset import num_classes
from helper.distill_run import student_main
from helper.errors import run_cli
from helper.options import check_num_cls
from models import model_dict

CIFAR_PROFILE = {
    "script": os.path.abspath(__file__),
    "description": "Distil a CIFAR-100/CIFAR-10/Fashion-MNIST student (NORM, NORM_CRD and the baselines).",
    "zoo": model_dict, "datasets": ["cifar100", "cifar10", "fashion_mnist"], "dataset": "cifar100",
    "epochs": 240, "batch_size": 64, "learning_rate": 0.05, "weight_decay": 5e-4, "lr_decay": "step",
    "lr_decay_epochs": [150, 180, 210], "num_workers": 8, "model_s": "resnet8x4", "image_size": None,
    "probe_size": 32, "schedule_kind": "cifar", "official_num_cls": "checked",  # the official CIFAR script's --num_cls
    "num_classes": lambda opt: check_num_cls(opt, num_classes(opt.dataset, opt.data_root)),
    "default_path_t": lambda opt: None,
    "own_models": "models",  # torchvision:/timm: names on the 32-px sets (helper/external_run.py)
    "teacher_hint": "fetch RepDistiller's teachers with bash scripts/fetch_pretrained_teachers.sh, or train one "
                    "with python train_cifar_teacher.py --model <name>",
}


def main(argv=None):
    """Entry point."""
    return student_main(argv, CIFAR_PROFILE)


if __name__ == "__main__":
    run_cli(main)
