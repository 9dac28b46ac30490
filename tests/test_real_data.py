"""Real images offline: Fashion-MNIST (Debian's dataset-fashion-mnist) teacher and NORM student learn."""
import os

import pytest

import train_cifar_student
import train_cifar_teacher
from dataset.fashion_mnist import find_idx_files, read_idx
from tests.datafakes import write_idx

DEBIAN = "/usr/share/datasets/fashion-mnist"
pytestmark = pytest.mark.skipif(not os.path.isdir(DEBIAN), reason="apt-get install dataset-fashion-mnist")
COMMON = ["--dataset", "fashion_mnist", "--epochs", "3", "--batch_size", "32", "--num_workers", "0", "--seed", "0",
          "--lr_decay", "cos", "--print_freq", "1000"]


@pytest.fixture(scope="module")
def fashion_subset(tmp_path_factory):
    """The first 2000 training and 500 test images of the real Fashion-MNIST, in its own idx format."""
    root = tmp_path_factory.mktemp("fmnist")
    folder = root / "fashion-mnist"
    folder.mkdir()
    for split, prefix, n in ((True, "train", 2000), (False, "t10k", 500)):
        images, labels = find_idx_files(DEBIAN, split)
        write_idx(str(folder / f"{prefix}-images-idx3-ubyte.gz"), read_idx(images)[:n])
        write_idx(str(folder / f"{prefix}-labels-idx1-ubyte.gz"), read_idx(labels)[:n])
    return str(root)


def test_teacher_then_norm_student_learn_fashion_mnist(fashion_subset, tmp_path):
    teacher = train_cifar_teacher.main(["--model", "resnet8", "--data_root", fashion_subset,
                                        "--save_root", str(tmp_path), *COMMON])
    assert teacher["best_acc"] > 50, teacher  # chance is 10%
    student = train_cifar_student.main([
        "--path_t", os.path.join(teacher["run"], "resnet8_best.pth"), "--model_t", "resnet8",
        "--model_s", "resnet8", "--distill", "NORM", "-r", "1", "-a", "0", "-b", "1", "-s", "4",
        "--data_root", fashion_subset, "--save_root", str(tmp_path), *COMMON])
    assert student["best_acc"] > 50, student
