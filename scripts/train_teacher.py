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

from helper.cli.entry import run_cli  # noqa: E402
from helper.cli.main import main as run_profile  # noqa: E402
from helper.cli.profile import Profile  # noqa: E402

FOLDER_TEACHER_PROFILE = Profile(
    script=os.path.abspath(__file__), role="folder_teacher", description=__doc__.splitlines()[0],
    zoo={},  # torchvision:/timm: names only (models.external), no zoo of ours
    datasets=("imagenet",), dataset="imagenet",  # ImageFolder data: the folder given by --data_root
    epochs=30, batch_size=64, learning_rate=0.1,  # from scratch; --pretrained fine-tunes at 0.01
    weight_decay=1e-4, lr_decay="cos", lr_decay_epochs=(20, 25), save_freq=10, image_size=224, probe_size=224,
    schedule_kind="imagenet", own_models="folders",
)


def main(argv=None):
    """Entry point: resolve (helper.cli.folder_teacher), build (and load the published backbone), train; returns the
    run summary."""
    return run_profile(FOLDER_TEACHER_PROFILE, argv)


if __name__ == "__main__":
    run_cli(main)
