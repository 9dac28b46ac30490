"""Distil an ImageNet (or any ImageFolder) student with NORM; one process, or DDP under torchrun.

python train_imagenet_student.py --model_t resnet34 --model_s resnet18S --distill NORM -r 1 -a 0 -b 1 -s 8 \
    --lr_decay cos --trial 1
torchrun --nproc_per_node=8 train_imagenet_student.py ... --batch_size 32   # 8 x 32 = the paper's 256
"""
import os

from dataset import num_classes
from helper.cli.entry import run_cli
from helper.cli.main import main as run_profile
from helper.cli.profile import Profile
from models import imagenet_model_dict

# torchvision's V1 weights, the ones the paper's teacher accuracies correspond to
TORCHVISION_TEACHER_FILES = {"resnet18": "resnet18-5c106cde.pth", "resnet34": "resnet34-333f7ec4.pth",
                             "resnet50": "resnet50-19c8e357.pth"}


def default_teacher_path(opt):
    """Where scripts/fetch_pretrained_imagenet_teacher.sh puts the torchvision weights of --model_t."""
    if opt.model_t not in TORCHVISION_TEACHER_FILES:
        return None
    return os.path.join(opt.save_root, "models", f"{opt.model_t}_imagenet_vanilla",
                        TORCHVISION_TEACHER_FILES[opt.model_t])


IMAGENET_PROFILE = Profile(
    script=os.path.abspath(__file__), role="student",
    description="Distil an ImageNet/ImageFolder student (NORM and the baselines); DDP under torchrun.",
    zoo=imagenet_model_dict, datasets=("imagenet",), dataset="imagenet",
    epochs=100, batch_size=256, learning_rate=0.1, weight_decay=1e-4, lr_decay_epochs=(30, 60, 90),
    num_workers=16, model="resnet18S", image_size=224, probe_size=224, schedule_kind="imagenet",
    official_num_cls="inert",  # officially forced to 1000
    num_classes=lambda opt: num_classes(opt.dataset, opt.data_root),
    own_models="folders",  # torchvision:/timm: names and user image folders (helper/cli/external.py)
    default_path_t=default_teacher_path,
    teacher_hint="fetch torchvision's weights with bash scripts/fetch_pretrained_imagenet_teacher.sh; without "
                 "--path_t the file is looked for in <--save_root>/models/<model_t>_imagenet_vanilla/",
)


def main(argv=None):
    """Entry point."""
    return run_profile(IMAGENET_PROFILE, argv)


if __name__ == "__main__":
    run_cli(main)
