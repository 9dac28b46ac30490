"""Runs that survive: bit-exact resume after an interruption (mid-epoch and at an epoch boundary), signals."""
import os
import signal
import subprocess
import sys

import pytest
import torch

import train_cifar_student
from helper.training import signals
from helper.runs.checkpoint import load_checkpoint, save_atomic
from helper.errors import UsageError

ARGS = ["--model_t", "resnet8", "--model_s", "resnet8", "--distill", "NORM_CRD", "-s", "2", "--nce_k", "8",
        "--epochs", "2", "--batch_size", "16", "--num_workers", "0", "--seed", "7", "--print_freq", "1",
        "--deterministic", "--lr_decay", "cos"]


def argv(tiny_cifar, teacher, save, *extra):
    return ["--path_t", teacher, "--data_root", tiny_cifar, "--save_root", str(save), *ARGS, *extra]


def final_state(summary):
    ckpt = load_checkpoint(os.path.join(summary["run"], "resnet8_last.pth"))
    return ckpt["model"], ckpt["method"], ckpt["optimizer"]["state"]


def interrupt_after(monkeypatch, steps):
    """Make the run stop (as on SIGTERM) once `steps` training steps have been taken in this process."""
    count = {"n": 0}

    def should_stop(self, step, runtime, every=20):
        count["n"] += 1
        if count["n"] == steps:
            self.signum = signal.SIGTERM
        return self.signum is not None

    monkeypatch.setattr(signals.StopRequest, "should_stop", should_stop)


def assert_same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], dict):
            assert_same(a[key], b[key])
        elif isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


@pytest.fixture(scope="module")
def uninterrupted(tiny_cifar, teacher_file, tmp_path_factory):
    save = tmp_path_factory.mktemp("full")
    return final_state(train_cifar_student.main(argv(tiny_cifar, teacher_file("resnet8"), save)))


@pytest.mark.parametrize("stop_after", [2, 4], ids=["mid-epoch", "epoch-boundary"])  # 4 steps per epoch
def test_interrupted_and_resumed_run_is_bit_identical(tiny_cifar, teacher_file, tmp_path, monkeypatch, capsys,
                                                      uninterrupted, stop_after):
    teacher = teacher_file("resnet8")
    with monkeypatch.context() as patch:
        interrupt_after(patch, stop_after)
        with pytest.raises(SystemExit) as stopped:
            train_cifar_student.main(argv(tiny_cifar, teacher, tmp_path))
    assert stopped.value.code == 128 + signal.SIGTERM
    assert "--resume" in capsys.readouterr().err  # the how-to-resume line goes to stderr
    resumed = train_cifar_student.main(argv(tiny_cifar, teacher, tmp_path, "--resume"))
    model, method, optimizer = final_state(resumed)
    assert_same(model, uninterrupted[0])
    assert_same(method, uninterrupted[1])      # CRD embeddings and both memories
    assert_same(optimizer, uninterrupted[2])   # momentum buffers


def test_resume_refuses_a_changed_configuration(tiny_cifar, teacher_file, tmp_path, monkeypatch):
    teacher = teacher_file("resnet8")
    with monkeypatch.context() as patch:
        interrupt_after(patch, 1)
        with pytest.raises(SystemExit):
            train_cifar_student.main(argv(tiny_cifar, teacher, tmp_path))
    run = next((tmp_path / "student_model").iterdir())
    before = (run / "resnet8_last.pth").read_bytes()
    with pytest.raises(UsageError, match="learning_rate"):
        train_cifar_student.main(argv(tiny_cifar, teacher, tmp_path, "--resume", "--learning_rate", "0.1"))
    with pytest.raises(UsageError, match="already holds a run"):
        train_cifar_student.main(argv(tiny_cifar, teacher, tmp_path))
    assert (run / "resnet8_last.pth").read_bytes() == before


def test_resume_accepts_spelled_out_defaults_and_a_moved_teacher_and_stops_when_finished(
        tiny_cifar, teacher_file, tmp_path, monkeypatch, capsys):
    teacher = teacher_file("resnet8")
    with monkeypatch.context() as patch:
        interrupt_after(patch, 1)
        with pytest.raises(SystemExit):
            train_cifar_student.main(argv(tiny_cifar, teacher, tmp_path))
    capsys.readouterr()
    with pytest.raises(UsageError, match="learning_rate") as refused:  # refused before the teacher is evaluated
        train_cifar_student.main(argv(tiny_cifar, teacher, tmp_path, "--resume", "--learning_rate", "0.1"))
    assert "teacher resnet8 accuracy" not in capsys.readouterr().out and "--trial" in str(refused.value)
    run = next((tmp_path / "student_model").iterdir())
    ckpt = load_checkpoint(str(run / "resnet8_last.pth"))  # as saved before the weights were resolved
    ckpt["config"].update(gamma=None, alpha=None, beta=None, ceta=None)
    save_atomic(ckpt, str(run / "resnet8_last.pth"))
    moved = tmp_path / "elsewhere.pth"
    moved.write_bytes(open(teacher, "rb").read())
    spelled_out = ["--resume", "-r", "1", "-a", "0", "-b", "1", "-c", "2.5"]  # NORM_CRD's defaults, typed out
    args = ["--path_t", str(moved), *argv(tiny_cifar, teacher, tmp_path, *spelled_out)[2:]]
    summary = train_cifar_student.main(args)
    assert summary["epochs"] == 2 and len(summary["config"]) > 0
    results = tmp_path / "results.jsonl"
    lines = results.read_text().splitlines()
    again = train_cifar_student.main(args)  # a finished run: nothing to do, nothing appended
    assert "already finished its 2 epochs" in capsys.readouterr().out
    assert again["best_acc"] == summary["best_acc"] and results.read_text().splitlines() == lines


def test_sigterm_writes_a_resumable_checkpoint(tiny_cifar, teacher_file, tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cmd = [sys.executable, os.path.join(root, "train_cifar_student.py"),
           *argv(tiny_cifar, teacher_file("resnet8"), tmp_path)]
    cmd[cmd.index("--epochs") + 1] = "50"
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=root)
    for line in proc.stdout:  # wait until training is under way
        if line.startswith("epoch 1 ["):
            break
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert "--resume" in out
    run = next((tmp_path / "student_model").iterdir())
    ckpt = load_checkpoint(str(run / "resnet8_last.pth"))
    assert ckpt["epoch"] >= 1 and ckpt["config"]["epochs"] == 50


def test_non_finite_loss_names_epoch_step_and_term_and_keeps_last_checkpoint(tiny_cifar, tmp_path, monkeypatch):
    import train_cifar_teacher
    from distiller_zoo import Vanilla
    from helper.training.engine import NonFiniteLoss

    forward = Vanilla.forward
    calls = {"n": 0}

    def poisoned(self, images, targets, index=None, contrast_index=None):
        logits, losses = forward(self, images, targets, index, contrast_index)
        calls["n"] += 1
        if calls["n"] == 6:   # epoch 2, step 2 (4 steps per epoch)
            losses["ce"] = losses["ce"] * float("nan")
        return logits, losses

    monkeypatch.setattr(Vanilla, "forward", poisoned)
    with pytest.raises(NonFiniteLoss, match=r"epoch 2, step 2 in term\(s\) ce"):
        train_cifar_teacher.main(["--model", "resnet8", "--data_root", tiny_cifar, "--save_root", str(tmp_path),
                                  "--epochs", "2", "--batch_size", "16", "--num_workers", "0", "--seed", "1",
                                  "--print_freq", "100"])
    run = next((tmp_path / "models").iterdir())
    assert load_checkpoint(str(run / "resnet8_last.pth"))["epoch"] == 1


def test_persistent_workers_augment_each_epoch_like_the_main_process(tiny_cifar):
    from dataset import build_dataset, crd_dataset
    from helper.loaders.loader import train_loader
    from helper.runtime.device import Runtime

    def epochs(workers):
        data = crd_dataset(build_dataset("cifar100", tiny_cifar, "train", seed=11), k=4)
        loader = train_loader(data, 16, seed=11, runtime=Runtime(torch.device("cpu")), num_workers=workers)
        seen = []
        for epoch in (1, 2):
            loader.sampler.set_epoch(epoch, 16 if epoch == 2 else 0)  # epoch 2 resumes after one batch
            seen.append([batch for batch in loader])
        return seen

    in_process, workers = epochs(0), epochs(2)
    assert not torch.equal(in_process[0][1][0], in_process[1][0][0])  # the epochs differ
    for a_epoch, b_epoch in zip(in_process, workers):
        assert len(a_epoch) == len(b_epoch)
        for a, b in zip(a_epoch, b_epoch):
            for x, y in zip(a, b):
                assert torch.equal(x, y)


@pytest.mark.parametrize("method", ["abound", "factor"])
def test_an_interrupted_init_stage_resumes_bit_exactly(tiny_cifar, teacher_file, tmp_path, monkeypatch, method):
    teacher = teacher_file("resnet8")
    args = ["--path_t", teacher, "--data_root", tiny_cifar, "--model_t", "resnet8", "--model_s", "resnet8",
            "--distill", method, "--init_epochs", "2", "--epochs", "1", "--batch_size", "16", "--num_workers", "0",
            "--seed", "4", "--deterministic", "--print_freq", "100"]
    full = final_state(train_cifar_student.main([*args, "--save_root", str(tmp_path / "full")]))
    with monkeypatch.context() as patch:
        interrupt_after(patch, 6)  # 4 steps per init epoch: the middle of the second one
        with pytest.raises(SystemExit):
            train_cifar_student.main([*args, "--save_root", str(tmp_path / "part")])
    run = next((tmp_path / "part" / "student_model").iterdir())
    ckpt = load_checkpoint(str(run / "resnet8_last.pth"))
    assert (ckpt["init_done"], ckpt["init_epoch"], ckpt["init_step"]) == (False, 2, 2)
    resumed = final_state(train_cifar_student.main([*args, "--save_root", str(tmp_path / "part"), "--resume"]))
    for got, expected in zip(resumed, full):
        assert_same(got, expected)


def test_a_checkpoint_of_the_previous_format_still_resumes_bit_exactly(tiny_cifar, teacher_file, tmp_path,
                                                                       monkeypatch, uninterrupted):
    teacher = teacher_file("resnet8")
    with monkeypatch.context() as patch:
        interrupt_after(patch, 2)
        with pytest.raises(SystemExit):
            train_cifar_student.main(argv(tiny_cifar, teacher, tmp_path))
    run = next((tmp_path / "student_model").iterdir())
    ckpt = load_checkpoint(str(run / "resnet8_last.pth"))
    for key in ("rng_per_rank", "init_epoch", "init_step", "init_optimizer", "init_scaler"):
        ckpt.pop(key, None)  # written only since the trainer was split
    del ckpt["config"]["batch_size_per_process"]
    save_atomic(ckpt, str(run / "resnet8_last.pth"))
    model, method, optimizer = final_state(train_cifar_student.main(argv(tiny_cifar, teacher, tmp_path, "--resume")))
    assert_same(model, uninterrupted[0])
    assert_same(optimizer, uninterrupted[2])


def test_saved_configs_of_earlier_versions_read_in_todays_terms():
    from helper.runs.config import normalise_saved_config

    # --batch_size was per process: 2 processes of 32 are today's global 64
    old = normalise_saved_config({"batch_size": 32, "world_size": 2})
    assert (old["batch_size"], old["batch_size_per_process"]) == (64, 32)
    new = {"batch_size": 64, "world_size": 2, "batch_size_per_process": 32}
    assert normalise_saved_config(new) == new
    # --sync_bn in one process did nothing; today's configs record it as off
    assert normalise_saved_config({"batch_size": 64, "sync_bn": True})["sync_bn"] is False
