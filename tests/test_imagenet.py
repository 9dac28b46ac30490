"""ImageNet/ImageFolder distillation on CPU: single process, and DDP under torchrun (gloo) with 2 ranks."""
import json
import os
import subprocess
import sys

import pytest
import torch

import train_imagenet_student
from helper.runs.checkpoint import load_checkpoint
from models import imagenet_model_dict
from scripts import evaluate_student
from tests.datafakes import write_tiny_imagefolder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A 3-class ImageFolder of 64-pixel JPEGs and a random resnet34 teacher in torchvision's raw format."""
    root = tmp_path_factory.mktemp("imagefolder")
    write_tiny_imagefolder(str(root), num_classes=3, per_class_train=8, per_class_val=5, size=64)
    torch.manual_seed(0)
    teacher = root / "resnet34-random.pth"
    torch.save(imagenet_model_dict["resnet34"](num_classes=3).state_dict(), teacher)
    return root


def args(folder, save, *extra, distill="NORM"):
    return ["--path_t", str(folder / "resnet34-random.pth"), "--model_t", "resnet34", "--model_s", "resnet18S",
            "--distill", distill, "-r", "1", "-a", "0", "-b", "1", "-s", "2", "--data_root", str(folder),
            "--image_size", "64", "--epochs", "2", "--batch_size", "4", "--num_workers", "0",
            "--save_root", str(save), "--lr_decay", "cos", "--learning_rate", "0.01", *extra]


def test_single_process_norm_run_checkpoints_and_evaluates(folder, tmp_path):
    summary = train_imagenet_student.main(args(folder, tmp_path, "--seed", "5"))
    assert os.path.basename(summary["run"]).startswith("T_resnet34_S_resnet18S_imagenet_NORM_r_1.0_a_0.0_b_1.0")
    last = os.path.join(summary["run"], "resnet18S_last.pth")
    state = load_checkpoint(last)["model"]
    assert state["feature_transform.expand.0.weight"].shape == (2 * 512, 512, 1, 1)
    assert not any(k.startswith("module.") for k in state)
    result = evaluate_student.main(["--path", last, "--data_root", str(folder), "--num_workers", "0"])
    assert result["top1"] == pytest.approx(summary["last_acc"])


def test_torchrun_ddp_two_ranks_agree_with_single_process_evaluation(folder, tmp_path):
    env = {**os.environ, "DUMP_DIR": str(tmp_path), "OMP_NUM_THREADS": "1"}
    # no --seed: each rank draws one, and rank 0's must win so that the ranks shard one permutation;
    # NORM_CRD: the contrast memories must see every rank's samples
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           os.path.join(ROOT, "tests", "ddp_worker.py"), *args(folder, tmp_path, "--nce_k", "4", "--feat_dim", "8",
                                                              distill="NORM_CRD")]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    dump0 = torch.load(tmp_path / "rank0.pth", weights_only=True)
    dump1 = torch.load(tmp_path / "rank1.pth", weights_only=True)
    assert dump0["seed"] == dump1["seed"]
    rank0, rank1 = dump0["model"], dump1["model"]
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    for key in ("crd.contrast.memory_s", "crd.contrast.memory_t"):
        assert torch.equal(dump0["method"][key], dump1["method"][key]), key
    summary = json.loads((tmp_path / "results.jsonl").read_text().splitlines()[-1])
    assert out.stdout.count("summary:") == 1  # only rank 0 reports
    last = os.path.join(summary["run"], "resnet18S_last.pth")
    assert load_checkpoint(last)["config"]["world_size"] == 2
    for key, value in load_checkpoint(last)["model"].items():
        assert torch.equal(value, rank0[key]), key
    result = evaluate_student.main(["--path", last, "--data_root", str(folder), "--num_workers", "0"])
    assert result["top1"] == pytest.approx(summary["last_acc"])   # whole validation set, not rank 0's shard
