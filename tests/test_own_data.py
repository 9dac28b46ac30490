"""Your own images and torchvision models from the command line: the README walkthrough end to end (teacher
fine-tune -> NORM student -> export -> evaluation of the ONNX file), the data conversions and splits, and the
one-line refusals."""
import json
import os
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import train_imagenet_student
from dataset.user_folder import folder_datasets, rgb_image, split_samples
from helper.runs.checkpoint import load_checkpoint
from helper.deploy import ONNX_TOLERANCE, relative_difference
from helper.cli.entry import run_cli
from helper.deploy.external import folder_eval_set
from models import external
from scripts import evaluate_student, export_student, train_teacher

ROOT = Path(__file__).resolve().parent.parent
CLASSES = ["bolt", "nut", "washer"]
SPEED = ["--image_size", "64", "--epochs", "1", "--batch_size", "4", "--num_workers", "0", "--device", "cpu",
         "--seed", os.environ.get("OWN_DATA_SEED", "0")]
SCRIPTS = {"scripts/train_teacher.py": train_teacher.main, "train_imagenet_student.py": train_imagenet_student.main,
           "scripts/export_student.py": export_student.main, "scripts/evaluate_student.py": evaluate_student.main}


def write_photos(root, per_class=6, seed=0):
    """Class folders of photos as users have them: JPEG and PNG, several sizes, grey and RGBA among them."""
    rng = np.random.default_rng(seed)
    colours = {"bolt": (200, 40, 40), "nut": (40, 200, 40), "washer": (40, 40, 200)}
    for name in CLASSES:
        folder = Path(root) / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            h, w = (50 + 7 * i, 80 - 3 * i)
            pixels = np.clip(np.array(colours[name]) + rng.integers(-30, 31, (h, w, 3)), 0, 255).astype(np.uint8)
            image = Image.fromarray(pixels)
            if i == 1:
                image.convert("L").save(folder / f"{name}_{i}.png")
            elif i == 2:
                image.convert("RGBA").save(folder / f"{name}_{i}.png")
            else:
                image.save(folder / f"{name}_{i}.jpg", quality=90)


def readme_commands():
    """The commands of the README's "Your own data" section, in order."""
    section = (ROOT / "README.md").read_text().split("## Your own data", 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    return [shlex.split(line) for line in block.strip().splitlines()]


def fake_published_weights(torch_home, arch):
    """A random state dict of `arch` where torchvision's published weights would be (torch's cache)."""
    _, path, _ = external.torchvision_weights_file(arch)
    assert path.startswith(str(torch_home))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.manual_seed(1)
    torch.save(torchvision.models.get_model(arch).state_dict(), path)
    return path


def test_the_readme_walkthrough_runs_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    write_photos(tmp_path / "photos")  # 6 per class: batches of 4, 4, 4, 3 (none of one, whose BatchNorm
    commands = readme_commands()        # statistics would leave a network too ill-conditioned for the export check)
    assert [c[:2] for c in commands] == [["python", s] for s in SCRIPTS]
    fake_published_weights(tmp_path / "torch_home", "resnet50")
    results = []
    for command in commands:
        extra = SPEED if "train" in command[1] else ["--num_workers", "0"] if "evaluate" in command[1] else []
        if command[1] == "train_imagenet_student.py":  # one epoch on 15 images: lr 0.1 would blow the student up;
            extra = extra + ["--learning_rate", "0.01", "--no_inference_teacher"]  # and no layout timing
        results.append(SCRIPTS[command[1]](command[2:] + extra))
    teacher_run = tmp_path / "save/models/torchvision-resnet50_photos_ft_lr_0.01_trial_0"
    split = json.loads((teacher_run / "split.json").read_text())
    assert split["classes"] == CLASSES and len(split["val"]) == 3 and len(split["train"]) == 15
    student_run = Path(results[1]["run"])
    assert json.loads((student_run / "split.json").read_text())["val"] == split["val"]  # the teacher's split
    # the folded .pth loads into torchvision's own model; the ONNX file names the classes
    deployed = load_checkpoint(tmp_path / "student.pth")
    model = torchvision.models.mobilenet_v2(num_classes=3)
    model.load_state_dict(deployed["model"], strict=True)
    assert deployed["config"]["classes"] == CLASSES
    onnx = evaluate_student.OnnxStudent(str(tmp_path / "student.onnx"))
    assert json.loads(onnx.metadata["classes"]) == CLASSES
    evaluation = results[3]
    assert sorted(evaluation["per_class"]) == CLASSES
    # the ONNX file names the run it came from: a flat folder is evaluated on that run's validation images only
    assert evaluation["split"] == os.path.abspath(student_run / "split.json")
    assert {name: row["images"] for name, row in evaluation["per_class"].items()} == {name: 1 for name in CLASSES}
    correct = sum(row["correct"] for row in evaluation["per_class"].values())
    assert evaluation["top1"] == pytest.approx(100 * correct / 3)
    # the deployed torchvision model agrees with ONNX Runtime on the folder's images
    val = folder_eval_set(str(tmp_path / "photos"), deployed["config"], 64)
    images = torch.stack([val[i][0] for i in range(4)])
    with torch.no_grad():  # relative to the largest logit, as the export's own check
        assert relative_difference(model.eval()(images), onnx(images)) <= ONNX_TOLERANCE


def test_a_resumed_teacher_keeps_its_split_and_ends_bit_identical(tmp_path, monkeypatch, capsys):
    """Killed mid-run, more photos added to the folder, resumed: the saved split.json is read back (the new photos
    join neither set) and the run ends exactly where an uninterrupted one does."""
    from tests.test_resume import interrupt_after
    write_photos(tmp_path / "photos")
    args = ["--model", "torchvision:resnet18", "--data_root", str(tmp_path / "photos"), "--val_split", "0.2",
            *SPEED, "--epochs", "2", "--deterministic", "--learning_rate", "0.01"]
    whole = train_teacher.main(args + ["--save_root", str(tmp_path / "whole")])
    killed = args + ["--save_root", str(tmp_path / "killed")]
    with monkeypatch.context() as patch:
        interrupt_after(patch, 6)  # 4 steps per epoch (15 training images, batches of 4): stop in the second epoch
        with pytest.raises(SystemExit):
            train_teacher.main(killed)
    assert "--resume" in capsys.readouterr().err
    run = next((tmp_path / "killed" / "models").iterdir())
    split_before = (run / "split.json").read_text()
    for name in CLASSES:  # one more photo per class: a fresh split of the folder would differ
        shutil.copy(tmp_path / "photos" / name / f"{name}_0.jpg", tmp_path / "photos" / name / f"{name}_new.jpg")
    resumed = train_teacher.main(killed + ["--resume"])
    assert (run / "split.json").read_text() == split_before
    assert len(json.loads(split_before)["train"]) == 15
    final = [load_checkpoint(os.path.join(summary["run"], "torchvision-resnet18_last.pth"))["model"]
             for summary in (whole, resumed)]
    assert final[0].keys() == final[1].keys()
    assert all(torch.equal(final[0][key], final[1][key]) for key in final[0])


def test_evaluating_on_other_class_folders_is_refused_by_name(tmp_path, capsys):
    """A deployed model that names its classes is evaluated only on folders of those classes."""
    torch.manual_seed(0)
    plain = torchvision.models.resnet18(num_classes=3)
    config = {"model": "torchvision:resnet18", "classes": CLASSES, "num_classes": 3, "dataset": "imagenet",
              "image_size": 64}
    torch.save({"model": plain.state_dict(), "config": config}, tmp_path / "deployed.pth")
    write_photos(tmp_path / "photos", per_class=2)
    (tmp_path / "photos" / "washer").rename(tmp_path / "photos" / "screw")
    err = one_line_error(capsys, evaluate_student.main, ["--path", str(tmp_path / "deployed.pth"), "--data_root",
                                                         str(tmp_path / "photos"), "--num_workers", "0"])
    assert "predicts other classes" in err and "screw" in err


def test_grey_and_rgba_images_become_rgb_with_transparency_on_white(tmp_path):
    grey = tmp_path / "g.png"
    Image.fromarray(np.full((4, 4), 77, np.uint8)).save(grey)
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:2, :, 3] = 255  # top half opaque red, bottom half transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    assert np.array_equal(np.asarray(rgb_image(grey)), np.full((4, 4, 3), 77))
    out = np.asarray(rgb_image(tmp_path / "a.png"))
    assert out[0, 0].tolist() == [255, 0, 0] and out[3, 0].tolist() == [255, 255, 255]


def test_the_split_is_stratified_seeded_and_read_back(tmp_path):
    samples = [(f"c{c}/{i}.jpg", c) for c in range(3) for i in range(10)]
    train, val = split_samples(samples, 0.2, seed=3)
    assert sorted(train + val) == sorted(samples) and not set(train) & set(val)
    assert [sum(1 for _, c in val if c == k) for k in range(3)] == [2, 2, 2]
    assert split_samples(samples, 0.2, seed=3) == (train, val) and split_samples(samples, 0.2, seed=4)[1] != val
    write_photos(tmp_path / "photos", per_class=5)
    from dataset.user_folder import split_json

    first_train, first_val, split = folder_datasets(str(tmp_path / "photos"), image_size=32, val_split=0.2)
    (tmp_path / "split.json").write_text(split_json(str(tmp_path / "photos"), split, 0.2, 0))
    write_photos(tmp_path / "photos", per_class=9, seed=1)  # new files after the split: they join no saved split
    again_train, again_val, _ = folder_datasets(str(tmp_path / "photos"), image_size=32,
                                                saved_split=str(tmp_path / "split.json"))
    assert again_val.samples == first_val.samples and again_train.samples == first_train.samples
    image, target, index = again_val[0]
    assert image.shape == (3, 32, 32) and again_val.classes == CLASSES


def one_line_error(capsys, main, argv):
    """Run a script's entry point through run_cli; returns its one-line error (exit 2 asserted)."""
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.fixture
def small_setup(tmp_path):
    """photos/ of 3 classes and a resnet18 teacher file for them."""
    write_photos(tmp_path / "photos")
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), tmp_path / "t.pth")
    return tmp_path


def student_args(root, *extra, model_t="torchvision:resnet18", path_t="t.pth", model_s="torchvision:resnet18"):
    return ["--model_t", model_t, "--path_t", str(root / path_t), "--model_s", model_s, "--data_root",
            str(root / "photos"), "--val_split", "0.2", "--save_root", str(root / "save"), *SPEED, *extra]


def test_bad_input_is_refused_in_one_line(small_setup, capsys):
    root = small_setup
    err = one_line_error(capsys, train_imagenet_student.main, student_args(root, model_s="torchvision:resnet19"))
    assert "unknown torchvision classifier 'resnet19'" in err and "torchvision:resnet18" in err
    err = one_line_error(capsys, train_imagenet_student.main, student_args(root, model_s="timm:resnet18"))
    assert "pip install timm" in err
    err = one_line_error(capsys, train_imagenet_student.main, student_args(root, "--classifier_s", "avgpool"))
    assert "AdaptiveAvgPool2d" in err and "nn.Linear" in err
    err = one_line_error(capsys, train_imagenet_student.main, student_args(root, model_s="torchvision:squeezenet1_0"))
    assert "no nn.Linear classifier" in err
    torch.save(torchvision.models.resnet34(num_classes=3).state_dict(), root / "r34.pth")
    err = one_line_error(capsys, train_imagenet_student.main, student_args(root, path_t="r34.pth"))
    assert "is not a torchvision:resnet18 state dict" in err
    torch.save(torchvision.models.resnet18(num_classes=5).state_dict(), root / "five.pth")
    err = one_line_error(capsys, train_imagenet_student.main, student_args(root, path_t="five.pth"))
    assert "with 5 classes, but the data has 3" in err
    err = one_line_error(capsys, train_imagenet_student.main, student_args(root, "--distill", "attention"))
    assert "--feature_modules" in err
    for name in CLASSES:
        (root / "empty" / name).mkdir(parents=True)
    err = one_line_error(capsys, train_teacher.main, ["--model", "torchvision:resnet18", "--data_root",
                                                      str(root / "empty"), "--val_split", "0.1", *SPEED])
    assert "hold no images" in err
    assert not (root / "save").exists()  # nothing refused left a run folder


def test_a_teacher_of_other_classes_is_refused_by_name(small_setup, capsys):
    root = small_setup
    state = torch.load(root / "t.pth", weights_only=True)
    torch.save({"model": state, "config": {"model": "torchvision:resnet18", "classes": ["bolt", "nut", "screw"]}},
               root / "other.pth")
    err = one_line_error(capsys, train_imagenet_student.main, student_args(root, path_t="other.pth"))
    assert "other classes" in err and "screw" in err and "washer" in err


def test_pretrained_teacher_comes_from_torchs_cache_or_says_where_to_put_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    url, path, categories = external.torchvision_weights_file("resnet18")
    assert path == os.path.join(str(tmp_path / "home"), "hub", "checkpoints", os.path.basename(url))
    with pytest.raises(external.ExternalModelError, match=f"put {url} at {path}"):
        external.published_state("torchvision:resnet18")
    written = fake_published_weights(tmp_path / "home", "resnet18")
    state = external.published_state("torchvision:resnet18")
    assert torch.equal(state["fc.weight"], torch.load(written, weights_only=True)["fc.weight"])
    assert categories == 1000
    write_photos(tmp_path / "photos")  # 3 classes: ImageNet's 1000-class head cannot teach them
    err = one_line_error(capsys, train_imagenet_student.main,
                         ["--model_t", "torchvision:resnet18", "--pretrained_t", "--model_s", "torchvision:resnet18",
                          "--data_root", str(tmp_path / "photos"), "--val_split", "0.2", *SPEED])
    assert "predict 1000 classes" in err and "train_teacher.py" in err


def test_the_cifar_script_takes_torchvision_names(tmp_path):
    """A paper teacher distilled into torchvision's resnet18 on CIFAR-100, then exported and evaluated."""
    import train_cifar_student
    from models import model_dict
    from tests.datafakes import write_tiny_cifar

    write_tiny_cifar(str(tmp_path / "data"), num_classes=100, n_train=64, n_test=32)
    torch.manual_seed(0)
    torch.save({"model": model_dict["resnet8x4"](num_classes=100).state_dict()}, tmp_path / "t.pth")
    summary = train_cifar_student.main(["--path_t", str(tmp_path / "t.pth"), "--model_s", "torchvision:resnet18",
                                        "--data_root", str(tmp_path / "data"), "--save_root", str(tmp_path / "save"),
                                        "--epochs", "1", "--batch_size", "16", "--num_workers", "0", "--seed", "0",
                                        "--device", "cpu", "--learning_rate", "0.01", "-s", "2"])
    run = Path(summary["run"])
    assert run.name.startswith("T_resnet8x4_S_torchvision-resnet18_cifar100_NORM")
    config = json.loads((run / "config.json").read_text())
    assert config["image_size"] == 32 and config["num_classes"] == 100 and config["classes"] is None
    last = str(run / "torchvision-resnet18_last.pth")
    export_student.main(["--path", last, "--out", str(tmp_path / "r18.pth")])
    deployed = torchvision.models.resnet18(num_classes=100)
    deployed.load_state_dict(load_checkpoint(tmp_path / "r18.pth")["model"], strict=True)
    result = evaluate_student.main(["--path", str(tmp_path / "r18.pth"), "--data_root", str(tmp_path / "data"),
                                    "--num_workers", "0", "--device", "cpu"])
    assert result["dataset"] == "cifar100" and result["top1"] == pytest.approx(summary["last_acc"], abs=1e-3)


@pytest.mark.parametrize("distill", ["reviewkd", "semckd", "ofd", "NORM+attention"])
def test_every_stage_method_asks_for_its_stage_modules_with_an_external_model(distill):
    from distiller_zoo import method_class
    from helper.cli.external import check_stage_flags
    from helper.errors import UsageError

    options = {"distill": distill, "model_s": "torchvision:resnet18", "model_t": "resnet32x4", "feature_modules": None,
               "feature_modules_t": None}
    with pytest.raises(UsageError, match="--feature_modules a,b,c"):
        check_stage_flags(options, method_class(distill))
    check_stage_flags({**options, "feature_modules": ["layer2", "layer3"]}, method_class(distill))  # named: fine
    check_stage_flags({**options, "distill": "NORM+dkd"}, method_class("NORM+dkd"))  # last map and logits: fine
