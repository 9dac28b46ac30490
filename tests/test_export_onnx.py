"""Deployment: every student family exported to ONNX and checked by ONNX Runtime, refusals, the cost report."""
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from benchmarks import bench_deploy
from dataset import build_dataset
from helper import deploy
from helper.runs.checkpoint import load_checkpoint
from helper.errors import UsageError
from models import imagenet_model_dict, model_dict
from models.norm import attach_feature_transform
from scripts import evaluate_student, export_student
from tests.datafakes import write_tiny_cifar, write_tiny_imagefolder
from tests.test_bad_input import fails

QUIET = ["--num_workers", "0", "--batch_size", "16"]


def randomise_batchnorm_layers(module, g):
    """Non-trivial statistics and affine parameters in every BatchNorm2d of `module`, drawn from generator `g`."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(0.4 * torch.rand(m.num_features, generator=g) - 0.2)
    return module


def randomise_batchnorm(model, seed):
    """Non-trivial BatchNorm statistics and affine parameters, and a classifier bias, so the folds have work to do."""
    g = torch.Generator().manual_seed(seed)
    randomise_batchnorm_layers(model, g)
    with torch.no_grad():
        classifier = model.get_submodule(model.classifier_name)
        classifier.bias.copy_(torch.randn(classifier.bias.shape, generator=g))


def make_student(folder, name, dataset, classes, image_size=None, seed=0):
    """A NORM student (random FT, N=2, C_t=8) in eval mode, saved as the student script's *_best.pth payload."""
    zoo = imagenet_model_dict if dataset == "imagenet" else model_dict
    torch.manual_seed(seed)
    model = attach_feature_transform(zoo[name](num_classes=classes), 8, 2)
    randomise_batchnorm(model, seed)
    model.eval()
    config = {"model_s": name, "model_t": "resnet14", "co_sponge": 2, "ft": "residual", "distill": "NORM",
              "dataset": dataset}
    if image_size:
        config["image_size"] = image_size
    path = os.path.join(folder, f"{name}_{dataset}_best.pth")
    torch.save({"epoch": 3, "model": model.state_dict(), "best_acc": 12.5, "accuracy": 12.5, "config": config}, path)
    return model, path


@pytest.fixture(scope="module")
def real_images(tmp_path_factory):
    """Factory: 5 test images of `dataset` written by tests/datafakes and read through the dataset's own eval path."""
    root = tmp_path_factory.mktemp("deploy_data")
    write_tiny_cifar(str(root / "c100"), num_classes=100, n_train=10, n_test=5, seed=3)
    write_tiny_cifar(str(root / "c10"), num_classes=10, n_train=10, n_test=5, seed=4)
    write_tiny_imagefolder(str(root / "inet"), num_classes=3, per_class_train=1, per_class_val=2, size=80, seed=5)
    roots = {"cifar100": root / "c100", "cifar10": root / "c10", "imagenet": root / "inet"}

    def images(dataset, image_size=None):
        val = build_dataset(dataset, str(roots[dataset]), "val", image_size=image_size)
        return torch.stack([val[i][0] for i in range(5)])

    return images


def conv_count(graph_or_model):
    """Convolutions in an ONNX graph or in a PyTorch model."""
    if isinstance(graph_or_model, nn.Module):
        return sum(isinstance(m, nn.Conv2d) for m in graph_or_model.modules())
    return sum(node.op_type == "Conv" for node in graph_or_model.node)


# --- every family, checked by ONNX Runtime directly ------------------------------------------------------------

FAMILIES = [("resnet8", "cifar100", 100, None), ("vgg8", "cifar100", 100, None),
            ("MobileNetV2", "cifar10", 10, None),  # NORM's variant: no ReLU after conv1/conv2
            ("ShuffleV2", "cifar100", 100, None), ("wrn_16_1", "cifar100", 100, None),  # WRN: FT kept
            ("resnet18S", "imagenet", 3, 64)]  # ImageNet student at a small size (adaptive pooling)


@pytest.mark.parametrize("name, dataset, classes, image_size", FAMILIES)
def test_each_family_exports_an_onnx_model_that_onnx_runtime_runs_like_the_student(
        tmp_path, real_images, capsys, name, dataset, classes, image_size):
    model, path = make_student(str(tmp_path), name, dataset, classes, image_size)
    foldable = name != "wrn_16_1"
    onnx_path, pt_path = tmp_path / "deploy" / "student.onnx", tmp_path / "deploy" / "student.pth"
    export_student.main(["--path", path, "--onnx", str(onnx_path)] + (["--out", str(pt_path)] if foldable else []))
    printed = capsys.readouterr().out
    assert ("cannot be folded" in printed) == (not foldable)

    images = real_images(dataset, image_size)
    with torch.no_grad():
        expected = model(images)  # the student as trained, with its FT
    scale = max(1.0, expected.abs().max().item())
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    feed = session.get_inputs()[0].name
    for batch in (1, 5):  # one file, two batch sizes: the batch axis is dynamic
        logits = session.run(None, {feed: images[:batch].numpy()})[0]
        assert logits.shape == (batch, classes)
        np.testing.assert_allclose(logits, expected[:batch].numpy(), rtol=0, atol=1e-4 * scale)
        assert (logits.argmax(1) == expected[:batch].argmax(1).numpy()).all()

    zoo = imagenet_model_dict if dataset == "imagenet" else model_dict
    plain = zoo[name](num_classes=classes)
    graph = onnx.load(str(onnx_path)).graph
    # folded: exactly the plain architecture's convolutions; WRN: one more (the FT as one 1x1 convolution)
    assert conv_count(graph) == conv_count(plain) + (0 if foldable else 1)
    if foldable:
        if name == "MobileNetV2":
            plain.prepare_norm_student()
        plain.load_state_dict(load_checkpoint(str(pt_path))["model"], strict=True)
        with torch.no_grad():
            torch.testing.assert_close(plain.eval()(images), expected, rtol=0, atol=1e-4 * scale)
    else:
        assert not pt_path.exists()


def test_wrn_as_pth_is_refused_with_both_formats(tmp_path, capsys):
    _, path = make_student(str(tmp_path), "wrn_16_1", "cifar100", 100)
    err = fails(export_student.main, ["--path", path, "--format", "both", "--out", str(tmp_path / "w.pth")], capsys)
    assert "cannot be folded" in err and "--onnx" in err
    assert sorted(os.listdir(tmp_path)) == [os.path.basename(path)]


# --- evaluate_student.py on the .onnx ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported_resnet8(tmp_path_factory):
    """A resnet8 NORM student for CIFAR-100, exported with --format both (the .onnx name derived from --out)."""
    folder = tmp_path_factory.mktemp("exported")
    _, path = make_student(str(folder), "resnet8", "cifar100", 100, seed=1)
    export_student.main(["--path", path, "--format", "both", "--out", str(folder / "deploy.pth")])
    return {"student": path, "pth": str(folder / "deploy.pth"), "onnx": str(folder / "deploy.onnx")}


def test_evaluate_reports_the_same_accuracy_for_the_onnx_file(exported_resnet8, tiny_cifar):
    results = {kind: evaluate_student.main(["--path", exported_resnet8[kind], "--data_root", tiny_cifar, *QUIET])
               for kind in ("student", "pth", "onnx")}
    onnx_result = results["onnx"]
    assert onnx_result["dataset"] == "cifar100" and onnx_result["model_s"] == "resnet8"  # read off the file
    assert onnx_result["saved_accuracy"] == 12.5
    for kind in ("student", "pth"):
        assert onnx_result["top1"] == results[kind]["top1"] and onnx_result["top5"] == results[kind]["top5"]
        assert onnx_result["loss"] == pytest.approx(results[kind]["loss"], rel=1e-4)


@pytest.mark.parametrize("extra, message", [(["-s", "2"], "-s apply to .pth checkpoints"),
                                            (["--device", "cuda"], "drop --device cuda"),
                                            (["--image_size", "64"], "takes 32x32 inputs")])
def test_evaluate_onnx_refuses_flags_of_checkpoints(exported_resnet8, capsys, extra, message):
    err = fails(evaluate_student.main, ["--path", exported_resnet8["onnx"], *extra], capsys)
    assert message in err


def test_evaluate_unreadable_onnx(tmp_path, capsys):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"not an onnx model")
    err = fails(evaluate_student.main, ["--path", str(bad)], capsys)
    assert "cannot read" in err and "export it again" in err


# --- refusals: nothing written, existing files untouched --------------------------------------------------------


def existing_outputs(folder):
    """An --out and an --onnx file that already exist, with the bytes they hold."""
    pt, onnx_path = folder / "keep.pth", folder / "keep.onnx"
    pt.write_bytes(b"previous checkpoint")
    onnx_path.write_bytes(b"previous onnx")
    return pt, onnx_path


def test_an_onnx_graph_that_disagrees_is_refused(tmp_path, capsys, monkeypatch):
    _, path = make_student(str(tmp_path), "resnet8", "cifar100", 100)
    out = tmp_path / "out"
    out.mkdir()
    pt, onnx_path = existing_outputs(out)
    real = deploy.onnx_bytes

    def corrupted(model, example, metadata=None):  # the classifier's bias off by one in the graph only
        proto = onnx.load_from_string(real(model, example, metadata))
        gemm = next(node for node in proto.graph.node if node.op_type == "Gemm")
        bias = next(init for init in proto.graph.initializer if init.name == gemm.input[2])
        bias.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(bias) + 1.0, bias.name))
        return proto.SerializeToString()

    monkeypatch.setattr(deploy, "onnx_bytes", corrupted)
    err = fails(export_student.main, ["--path", path, "--out", str(pt), "--onnx", str(onnx_path)], capsys)
    assert "export refused, nothing written" in err and "ONNX Runtime" in err and "tolerance 1e-04" in err
    assert pt.read_bytes() == b"previous checkpoint" and onnx_path.read_bytes() == b"previous onnx"
    assert sorted(os.listdir(out)) == ["keep.onnx", "keep.pth"]  # no temporary file left behind


def test_a_fold_that_disagrees_is_refused(tmp_path, capsys, monkeypatch):
    import models.norm

    _, path = make_student(str(tmp_path), "resnet8", "cifar100", 100)
    pt, onnx_path = existing_outputs(tmp_path)
    real = models.norm.fold_transform_into_classifier

    def wrong_fold(model):
        state = real(model)
        state["fc.bias"] = state["fc.bias"] + 1.0
        return state

    monkeypatch.setattr(models.norm, "fold_transform_into_classifier", wrong_fold)
    err = fails(export_student.main, ["--path", path, "--out", str(pt)], capsys)
    assert "export refused, nothing written" in err and "folded .pth" in err
    assert pt.read_bytes() == b"previous checkpoint"


def test_top1_must_agree_on_every_image_even_within_the_logit_tolerance():
    reference = torch.tensor([[1.0, 0.99999], [0.0, 2.0]])
    swapped = torch.tensor([[0.99999, 1.0], [0.0, 2.0]])  # 5e-6 apart relative to the largest logit
    check = deploy.compare(reference, swapped)
    assert check == deploy.Check(pytest.approx(5e-6, rel=0.01), 1, 2)
    with pytest.raises(UsageError, match="top-1 agrees on 1/2"):
        deploy.require(check, deploy.ONNX_TOLERANCE, "x")
    assert deploy.require(deploy.compare(reference, reference + 1e-5), 1e-4, "x").agree == 2
    with pytest.raises(UsageError, match="tolerance 1e-06"):
        deploy.require(deploy.compare(reference, reference + 1e-5), 1e-6, "x")


def test_verification_batch_is_fixed_and_in_the_test_format():
    first, again = deploy.verification_batch("cifar100", 32), deploy.verification_batch("cifar100", 32)
    assert first.shape == (deploy.VERIFY_IMAGES, 3, 32, 32) and torch.equal(first, again)
    # CIFAR-100's normalisation: channel means of [0, 255] images land within the normalised range
    assert -2.0 < first.mean().item() < 2.0 and first.std().item() > 0.3
    grey = deploy.verification_batch("fashion_mnist", 32)
    assert torch.equal(grey[:, 0], grey[:, 1])  # one channel repeated, as the Fashion-MNIST transform does
    assert deploy.verification_batch("imagenet", 64, count=2).shape == (2, 3, 64, 64)


# --- output flags -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv, message", [
    ([], "nothing to export"),
    (["--format", "onnx", "--out", "a.pth"], "drop --out"),
    (["--format", "pt", "--onnx", "a.onnx"], "drop --onnx"),
    (["--format", "onnx"], "give --onnx"),
    (["--out", "same", "--onnx", "same"], "name the same file"),
])
def test_export_output_flags(tmp_path, capsys, argv, message):
    err = fails(export_student.main, ["--path", str(tmp_path / "never_read.pth"), *argv], capsys)
    assert message in err
    assert os.listdir(tmp_path) == []


def test_export_never_writes_over_its_input_or_into_a_run_folder(tmp_path, capsys):
    _, path = make_student(str(tmp_path), "resnet8", "cifar100", 100)
    before = open(path, "rb").read()
    for argv in (["--out", path], ["--onnx", path, "--format", "onnx"],
                 ["--out", os.path.join(str(tmp_path), ".", os.path.basename(path))]):
        err = fails(export_student.main, ["--path", path, *argv], capsys)
        assert "checkpoint itself" in err
    assert open(path, "rb").read() == before
    # a training run's folder (config.json and its lock) is the trainer's: no export lands there
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    (run / ".lock").write_text("")
    err = fails(export_student.main, ["--path", path, "--out", str(run / "deploy.pth")], capsys)
    assert "inside the training run folder" in err
    assert sorted(os.listdir(run)) == [".lock", "config.json"]
    # a run folder copied without its lock is still one: its config.json and <model>_last.pth say so
    (run / ".lock").unlink()
    (run / "resnet8_last.pth").write_bytes(b"a run's checkpoint")
    err = fails(export_student.main, ["--path", path, "--out", str(run / "deploy.pth")], capsys)
    assert "inside the training run folder" in err
    # a --path that does not exist is reported as missing, even when --out names the same file
    err = fails(export_student.main, ["--path", str(tmp_path / "gone.pth"), "--out", str(tmp_path / "gone.pth")],
                capsys)
    assert "does not exist" in err, err


def test_format_both_derives_the_onnx_name(exported_resnet8):
    assert os.path.isfile(exported_resnet8["pth"]) and os.path.isfile(exported_resnet8["onnx"])
    metadata = {p.key: p.value for p in onnx.load(exported_resnet8["onnx"]).metadata_props}
    assert metadata["model_s"] == "resnet8" and metadata["dataset"] == "cifar100"
    assert metadata["deployed"] == "folded"


# --- the cost report ----------------------------------------------------------------------------------------------


def test_cost_report_counts_the_transform_as_hand_computed(tmp_path, capsys):
    model, path = make_student(str(tmp_path), "resnet8", "cifar100", 100)
    export_student.main(["--path", path, "--report", "--model_t", "resnet14"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| model | role | parameters | FLOPs (1x3x32x32) | FLOPs vs resnet14 |"
    assert [line.split(" | ")[1] for line in lines[2:]] == [
        "teacher", "student as trained (with FT)", "deployed student"]
    assert os.listdir(tmp_path) == [os.path.basename(path)]  # --report alone writes nothing

    deployed = deploy.deployed_student(model, model_dict, "resnet8")
    (_, _, p_ft, f_ft), (_, _, p_plain, f_plain) = deploy.cost_rows(
        [("ft", "", model), ("plain", "", deployed.module)], (1, 3, 32, 32))
    # FT on resnet8's 64-channel 8x8 map, N*C_t = 16: two 1x1 convolutions and two BatchNorms
    assert p_ft - p_plain == 64 * 16 + 16 * 64 + 2 * 16 + 2 * 64
    assert f_ft - f_plain == 2 * (64 * 16 + 16 * 64) * 8 * 8
    assert p_plain == sum(p.numel() for p in model_dict["resnet8"](num_classes=100).parameters())


def test_cost_of_the_kept_wrn_transform(tmp_path):
    model, _ = make_student(str(tmp_path), "wrn_16_1", "cifar100", 100)
    deployed = deploy.deployed_student(model, model_dict, "wrn_16_1")
    assert deployed.kind == "kept_ft"
    (_, _, p_kept, f_kept), (_, _, p_plain, f_plain) = deploy.cost_rows(
        [("kept", "", deployed.module), ("plain", "", model_dict["wrn_16_1"](num_classes=100))], (1, 3, 32, 32))
    assert p_kept - p_plain == 64 * 64 + 64  # one 64->64 1x1 convolution with bias
    assert f_kept - f_plain == 2 * 64 * 64 * 8 * 8


# --- the benchmark, one tiny run (its numbers are never asserted) ----------------------------------------------


def test_bench_deploy_prints_a_row_per_model(capsys):
    bench_deploy.main(["--pairs", "resnet8:resnet8", "--batch_sizes", "1,2", "--repeats", "1", "--warmup", "0"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| resnet8")]
    assert [row.split(" | ")[0] for row in rows] == ["| resnet8 (teacher)", "| resnet8 with FT (as trained)",
                                                     "| resnet8 (deployed)"]
    assert all(len(row.strip("|").split("|")) == 7 for row in rows)  # model, params, FLOPs, 2 x PyTorch, 2 x ORT
