"""--seed fixes a run across processes: each training script, started twice as its own process with the same seed,
ends with the same weights bit for bit. torch seeds its generator at random in every new process, so anything random
drawn before the run's seed is set (a model built while the command line is checked) would show here."""
import glob
import os
import subprocess
import sys

import pytest
import torch

from helper.runs.checkpoint import load_checkpoint
from models import imagenet_model_dict
from tests.datafakes import write_tiny_imagefolder
from tests.test_own_data import write_photos

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMON = ["--epochs", "1", "--num_workers", "0", "--seed", "3", "--deterministic", "--device", "cpu"]


def cifar_teacher(tmp_path, tiny_cifar, teacher_file):
    return ["train_cifar_teacher.py", "--model", "resnet8", "--data_root", tiny_cifar, "--batch_size", "16"]


def cifar_student(tmp_path, tiny_cifar, teacher_file):
    return ["train_cifar_student.py", "--path_t", teacher_file("resnet8"), "--model_s", "resnet8", "--distill",
            "NORM", "-s", "2", "--data_root", tiny_cifar, "--batch_size", "16", "--no_inference_teacher"]


def imagenet_student(tmp_path, tiny_cifar, teacher_file):
    write_tiny_imagefolder(str(tmp_path / "folder"), num_classes=3, per_class_train=4, per_class_val=2, size=64)
    torch.save(imagenet_model_dict["resnet18"](num_classes=3).state_dict(), tmp_path / "t.pth")
    return ["train_imagenet_student.py", "--path_t", str(tmp_path / "t.pth"), "--model_t", "resnet18", "--model_s",
            "resnet18S", "--data_root", str(tmp_path / "folder"), "--image_size", "64", "--batch_size", "4",
            "--learning_rate", "0.01", "--no_inference_teacher"]


def folder_teacher(tmp_path, tiny_cifar, teacher_file):
    write_photos(tmp_path / "photos")
    return ["scripts/train_teacher.py", "--model", "torchvision:resnet18", "--data_root", str(tmp_path / "photos"),
            "--val_split", "0.2", "--image_size", "64", "--batch_size", "4", "--learning_rate", "0.01"]


@pytest.mark.parametrize("command", [cifar_teacher, cifar_student, imagenet_student, folder_teacher],
                         ids=lambda f: f.__name__)
def test_two_processes_with_one_seed_train_the_same_weights(command, tmp_path, tiny_cifar, teacher_file):
    script, *args = command(tmp_path, tiny_cifar, teacher_file)
    # one thread each: the two processes run side by side on the suite's two cores without oversubscribing them
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    runs = [subprocess.Popen([sys.executable, os.path.join(ROOT, script), *args, *COMMON, "--save_root",
                              str(tmp_path / f"save{i}")], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True) for i in (0, 1)]
    for run in runs:
        out, _ = run.communicate(timeout=300)
        assert run.returncode == 0, out[-2000:]
    finals = []
    for i in (0, 1):
        [last] = glob.glob(str(tmp_path / f"save{i}" / "*" / "*" / "*_last.pth"))
        finals.append(load_checkpoint(last)["model"])
    assert finals[0].keys() == finals[1].keys()
    different = [key for key in finals[0] if not torch.equal(finals[0][key], finals[1][key])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
