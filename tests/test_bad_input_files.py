"""Bad input files and flags: every numeric flag's range, corrupt data files, doctored pickles, NORM students
given where a plain model belongs, MobileNet at any input size. Each gives one line on stderr and exit code 2."""
import gzip
import io
import os
import pickle
import struct

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader
from torchvision import transforms

import train_cifar_student
import train_cifar_teacher
from dataset import CIFAR, FashionMNIST, ImageFolderWithIndex
from helper.runs.checkpoint import load_checkpoint
from helper.errors import UsageError
from helper.teachers.loading import load_model_file, load_student
from models import model_dict
from models.imagenet.mobilenet import MobileNet
from models.norm import attach_feature_transform, fold_transform_into_classifier
from tests.datafakes import write_idx, write_tiny_cifar, write_tiny_fashion_mnist, write_tiny_imagefolder
from tests.test_bad_input import QUICK, fails


# ---------------------------------------------------------------------------------------------------------------
# numeric flags: refused at parse time, before any data or model is touched

@pytest.mark.parametrize("flag,bad,edge", [
    ("--seed", "-1", "0"), ("--seed", "4294967296", "4294967295"),
    ("--momentum", "-1", "0"), ("--momentum", "1", "0.99"),
    ("--weight_decay", "-1", "0"), ("--weight_decay", "nan", "0.0005"),
    ("--learning_rate", "inf", "0.05"), ("--lr_decay_rate", "0", "0.1"), ("--lr_decay_rate", "-0.1", "2"),
    ("--lr_decay_epochs", "150,abc", "150,180"), ("--lr_decay_epochs", "150,-1", "1"),
    ("--lr_decay_epochs", "1.5", "30,60,90"), ("--lr_decay_epochs", "0", "1,2"),
    ("-r", "-1", "0"), ("-a", "-0.5", "0"), ("-b", "-1", "0"), ("-c", "-1", "0"), ("-b", "inf", "100"),
    ("--kd_T", "0", "0.5"), ("--kd_T", "-4", "4"),
    ("--nce_k", "-1", "1"), ("--nce_k", "0", "16384"), ("--nce_t", "0", "0.07"),
    ("--nce_m", "1", "0"), ("--nce_m", "-0.1", "0.5"), ("--feat_dim", "0", "1"),
    ("--init_epochs", "-1", "0"), ("--crd_weight", "-2.5", "0"),
])
def test_numeric_flags_are_range_checked(capsys, tmp_path, flag, bad, edge):
    from helper.cli.parser import student_parser

    with pytest.raises(SystemExit) as exit_info:  # the real script, which would load data and models next
        train_cifar_student.main([flag, bad, "--data_root", str(tmp_path / "none"), "--save_root", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"argument {flag}" in err and repr(bad) in err, err
    assert not os.listdir(tmp_path)
    parsed = student_parser(train_cifar_student.CIFAR_PROFILE).parse_args([flag, edge])  # the edge is allowed
    dest = {"-r": "gamma", "-a": "alpha", "-b": "beta", "-c": "ceta"}.get(flag, flag.lstrip("-"))
    expected = [int(x) for x in edge.split(",")] if flag == "--lr_decay_epochs" else float(edge)
    assert getattr(parsed, dest) == expected


def test_teacher_script_checks_the_shared_flags(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        train_cifar_teacher.main(["--model", "resnet8", "--momentum", "-1", "--save_root", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "argument --momentum: invalid number in [0, 1) value: '-1'" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------
# CIFAR pickle batches

class _Py2Pickler(pickle._Pickler):
    """Pickles str and bytes as Python 2 strings (BINSTRING), as the real CIFAR batches (Python 2 cPickle) hold them."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj):
        raw = obj.encode("latin-1") if isinstance(obj, str) else obj
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_py2_str


def _py2_pickle(obj, numpy_module):
    """Protocol-2 bytes of `obj` as Python 2 wrote them, naming numpy's array builder in `numpy_module`."""
    buffer = io.BytesIO()
    _Py2Pickler(buffer, protocol=2).dump(obj)
    raw = buffer.getvalue()
    for module in (b"numpy._core.multiarray\n", b"numpy.core.multiarray\n"):
        raw = raw.replace(module, numpy_module.encode() + b"\n")
    return raw


class _RunsACommand:
    """What a doctored data file holds: unpickling it calls os.system."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def _cifar100(tmp_path, n_train=20, n_test=10):
    root = tmp_path / "cifar"
    write_tiny_cifar(str(root), num_classes=100, n_train=n_train, n_test=n_test)
    return root, root / "cifar-100-python" / "train"


def _load_fails(capsys, load):
    """The one stderr line of `load()` run as a script's main."""
    return fails(lambda argv: load(), [], capsys)


@pytest.mark.parametrize("numpy_module", ["numpy.core.multiarray", "numpy._core.multiarray"])
def test_cifar_unpickler_loads_real_batches_and_runs_no_code(capsys, tmp_path, numpy_module):
    root, train = _cifar100(tmp_path)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(6, 3072), dtype=np.uint8)
    labels = [3, 1, 4, 1, 5, 9]
    entry = {b"batch_label": b"training batch 1 of 1", b"fine_labels": labels, b"coarse_labels": [0] * 6,
             b"data": images, b"filenames": [f"img_{i}.png".encode() for i in range(6)]}
    train.write_bytes(_py2_pickle(entry, numpy_module))  # numpy 1 (numpy.core) or numpy 2 (numpy._core) writers
    data = CIFAR(str(root), 100, train=True)
    np.testing.assert_array_equal(data.data, images.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    assert data.targets == labels

    marker = tmp_path / "ran"
    train.write_bytes(pickle.dumps({b"data": _RunsACommand(f"touch {marker}")}, protocol=2))
    err = _load_fails(capsys, lambda: CIFAR(str(root), 100, train=True))
    assert str(train) in err and "refused" in err and "system" in err and "download" in err
    assert not marker.exists()


def _truncated(path):
    raw = path.read_bytes()
    path.write_bytes(raw[:len(raw) // 2])


@pytest.mark.parametrize("damage,needle", [
    (_truncated, "truncated or corrupt"),
    (lambda p: p.write_bytes(pickle.dumps([1, 2, 3], protocol=2)), "holds a list"),
    (lambda p: p.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]})),
     "no 'fine_labels' entry"),
    (lambda p: p.write_bytes(pickle.dumps({"data": np.zeros((2, 100), np.uint8), "fine_labels": [0, 1]})),
     "not uint8 rows of 3072"),
    (lambda p: p.write_bytes(pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "fine_labels": [0]})),
     "2 images but 1 fine_labels"),
    (lambda p: p.write_bytes(pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "fine_labels": [0, 100]})),
     "not integers in [0, 100)"),
])
def test_corrupt_cifar_batch_is_one_line_naming_the_file(capsys, tmp_path, damage, needle):
    root, train = _cifar100(tmp_path)
    damage(train)
    err = _load_fails(capsys, lambda: CIFAR(str(root), 100, train=True))
    assert err.startswith(f"error: {train}: ") and needle in err and "delete it" in err, err


def test_corrupt_cifar_through_the_teacher_script_writes_nothing(capsys, tmp_path):
    root, train = _cifar100(tmp_path)
    _truncated(train)
    save = tmp_path / "save"
    err = fails(train_cifar_teacher.main, ["--model", "resnet8", "--data_root", str(root), "--save_root",
                                           str(save), *QUICK], capsys)
    assert str(train) in err
    assert not save.exists() or not any(save.rglob("*.pth"))


# ---------------------------------------------------------------------------------------------------------------
# Fashion-MNIST idx files

def _fashion(tmp_path, gz):
    folder = tmp_path / "fashion-mnist"
    write_tiny_fashion_mnist(str(folder), n_train=6, n_test=4, gz=gz)
    suffix = ".gz" if gz else ""
    return folder / f"train-images-idx3-ubyte{suffix}", folder / f"train-labels-idx1-ubyte{suffix}"


def _rewrite_gz(path, edit):
    with gzip.open(path, "rb") as f:
        raw = f.read()
    with gzip.open(path, "wb") as f:
        f.write(edit(raw))


@pytest.mark.parametrize("gz,target,damage,needle", [
    (True, 0, _truncated, "truncated or not gzip data"),
    (True, 1, lambda p: p.write_bytes(b"plain bytes, not gzip"), "truncated or not gzip data"),
    (True, 0, lambda p: _rewrite_gz(p, lambda raw: b"\x00\x00\x0d" + raw[3:]), "bad magic number"),
    (False, 0, lambda p: p.write_bytes(p.read_bytes()[:-5]), "does not match the header shape"),
    (False, 1, lambda p: p.write_bytes(p.read_bytes() + b"\x00"), "does not match the header shape"),
    (False, 1, lambda p: write_idx(str(p), np.zeros(5, np.uint8)), "for the 6 images"),
    (False, 1, lambda p: write_idx(str(p), np.full(6, 10, np.uint8)), "label 10"),
    (False, 0, lambda p: write_idx(str(p), np.zeros((6, 32, 32), np.uint8)), "not 28x28 images"),
])
def test_corrupt_fashion_mnist_file_is_one_line_naming_it(capsys, tmp_path, gz, target, damage, needle):
    path = _fashion(tmp_path, gz)[target]
    damage(path)
    err = _load_fails(capsys, lambda: FashionMNIST(str(tmp_path), train=True))
    assert err.startswith(f"error: {path}: ") and needle in err and "--download" in err, err


# ---------------------------------------------------------------------------------------------------------------
# ImageFolder: a bad file shows only when a loader (worker) opens it

@pytest.mark.parametrize("num_workers", [0, 1])
@pytest.mark.parametrize("damage", ["not an image", "truncated"])
def test_unreadable_image_in_a_loader_worker_is_one_line(capsys, tmp_path, num_workers, damage):
    write_tiny_imagefolder(str(tmp_path), num_classes=1, per_class_train=2, per_class_val=1, size=64)
    bad = tmp_path / "train" / "class_0" / "class_0_1.jpg"
    if damage == "truncated":
        _truncated(bad)
    else:
        bad.write_text("these are notes, not a JPEG")
    data = ImageFolderWithIndex(str(tmp_path / "train"), transform=transforms.ToTensor())

    def main(argv):
        for _ in DataLoader(data, batch_size=1, num_workers=num_workers):
            pass

    err = fails(main, [], capsys)
    assert err.startswith(f"error: {bad}: cannot be read as an image") and "delete or replace it" in err, err
    assert "worker" not in err


def _imagenet_argv(root, save):
    from models import imagenet_model_dict

    teacher = os.path.join(str(save), "resnet18-random.pth")
    if not os.path.exists(teacher):
        torch.save(imagenet_model_dict["resnet18"](num_classes=2).state_dict(), teacher)
    return ["--path_t", teacher, "--model_t", "resnet18", "--model_s", "resnet18S", "--data_root", str(root),
            "--image_size", "64", "--epochs", "1", "--batch_size", "2", "--num_workers", "0",
            "--save_root", str(save / "runs")]


def test_imagefolder_train_split_without_class_folders(capsys, tmp_path):
    import train_imagenet_student

    (tmp_path / "inet" / "train").mkdir(parents=True)
    (tmp_path / "inet" / "val").mkdir()
    err = fails(train_imagenet_student.main, _imagenet_argv(tmp_path / "inet", tmp_path), capsys)
    assert err == (f"error: {tmp_path / 'inet' / 'train'} holds no class folders; put the training images in one "
                   "folder per class there (train/<class>/*.jpg), or point --data_root at a folder laid out so"), err
    assert not (tmp_path / "runs").exists()


def test_imagefolder_splits_with_different_classes_are_refused(capsys, tmp_path):
    # val misses class_1: ImageFolder would label val's class_2 images as 1 and every val accuracy would be wrong
    import shutil

    import train_imagenet_student

    write_tiny_imagefolder(str(tmp_path / "inet"), num_classes=3, per_class_train=1, per_class_val=1, size=64)
    shutil.rmtree(tmp_path / "inet" / "val" / "class_1")
    err = fails(train_imagenet_student.main, _imagenet_argv(tmp_path / "inet", tmp_path), capsys)
    assert "different class folders" in err and "only in train: class_1" in err, err
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------------------------------------------------------
# NORM students where a plain model is expected

def _our_student(tmp_path, name="resnet8", c_t=64, n=2):
    torch.manual_seed(0)
    student = attach_feature_transform(model_dict[name](num_classes=100), c_t, n)
    path = tmp_path / f"{name}_best.pth"
    torch.save({"epoch": 1, "model": student.state_dict(), "best_acc": 1.0,
                "config": {"model_s": name, "co_sponge": n, "distill": "NORM", "dataset": "cifar100"}}, path)
    return path, student


def _official_student(tmp_path, name="resnet8", c_t=64, n=2):
    _, student = _our_student(tmp_path, name, c_t, n)
    state = {}
    for key, value in student.state_dict().items():  # the official names, DataParallel prefix and extras
        key = key.replace("feature_transform.expand.", "layer31.").replace("feature_transform.contract.", "layer32.")
        state["module." + key] = value
    state["module.alpha"] = torch.ones(4)
    path = tmp_path / "official_student.pth"
    torch.save({"epoch": 240, "model": state, "best_acc": torch.tensor(70.0)}, path)
    return path


@pytest.mark.parametrize("named", [True, False], ids=["with --model_t", "architecture inferred"])
@pytest.mark.parametrize("kind", ["ours", "official"])
def test_norm_student_given_as_teacher(capsys, tiny_cifar, tmp_path, kind, named):
    path = _our_student(tmp_path)[0] if kind == "ours" else _official_student(tmp_path)
    model_t = ["--model_t", "resnet8"] if named else []
    err = fails(train_cifar_student.main, ["--path_t", str(path), *model_t, "--model_s", "resnet8",
                                           "--data_root", tiny_cifar, "--save_root", str(tmp_path / "s"), *QUICK],
                capsys)
    described = "a NORM student checkpoint" if kind == "ours" else "an officially released NORM student"
    assert f"{path} is {described} (resnet8 with a feature transform)" in err, err
    assert "scripts/export_student.py" in err and ("--official" in err) == (kind == "official")


def test_official_student_without_official_flag_says_pass_official(tmp_path):
    path = _official_student(tmp_path)
    with pytest.raises(UsageError, match="officially released NORM student .resnet8 with a feature transform.; "
                                         "pass --official"):
        load_student(model_dict, load_checkpoint(str(path)), str(path), model_s="resnet8", n=2)


@pytest.mark.parametrize("kind", ["ours", "official"])
def test_student_of_another_architecture_names_the_one_it_holds(capsys, tmp_path, kind):
    from scripts import evaluate_student

    path = _our_student(tmp_path, "resnet8x4", c_t=32)[0] if kind == "ours" else _official_student(
        tmp_path, "resnet8x4", c_t=32)
    official = ["--official"] if kind == "official" else []
    err = fails(evaluate_student.main, ["--path", str(path), *official, "--model_s", "resnet20", "-s", "2"], capsys)
    assert "does not fit --model_s resnet20" in err, err
    assert "it holds a resnet8x4 with a feature transform: pass --model_s resnet8x4" in err, err


def test_file_of_another_class_count_names_its_architecture_and_classes(tmp_path):
    path = tmp_path / "resnet8_10.pth"
    torch.save({"model": model_dict["resnet8"](num_classes=10).state_dict()}, path)
    with pytest.raises(UsageError, match="it holds a resnet8 with 10 classes .not 100.: pass --model_t resnet8 and "
                                         "the --dataset it was trained on"):
        load_model_file(model_dict, "resnet20", str(path), 100)

# ---------------------------------------------------------------------------------------------------------------
# ImageNet MobileNet at any --image_size

def _randomise_bn(model):
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.8, 1.2)


def test_mobilenet_pools_the_whole_map_at_any_size():
    torch.manual_seed(0)
    model = MobileNet(num_classes=10).eval()
    folded_from = attach_feature_transform(MobileNet(num_classes=10), 16, 2).eval()
    _randomise_bn(folded_from)
    plain = MobileNet(num_classes=10).eval()
    plain.load_state_dict(fold_transform_into_classifier(folded_from))
    for size, side in ((224, 7), (160, 5), (256, 8)):
        x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(size))
        with torch.no_grad():
            feats, _ = model(x, is_feat=True)
            assert feats[1].shape[-2:] == (side, side)
            if size == 224:  # the official AvgPool2d(7), bit for bit
                assert torch.equal(feats[2], torch.nn.AvgPool2d(7)(feats[1]).flatten(1))
            torch.testing.assert_close(feats[2], feats[1].mean((2, 3)))  # the whole map, at every size
            # the FT folds into fc exactly (up to float rounding) at every size, as at 224
            torch.testing.assert_close(plain(x), folded_from(x), rtol=1e-5, atol=1e-5)
