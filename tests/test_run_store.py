"""The run folder under faults: a lock against a second process, leftovers of a kill, a full disk, honest advice."""
import errno
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

import pytest
import torch

import train_cifar_student
import train_cifar_teacher
from helper.runs import checkpoint
from helper.training import signals
from helper.runs.checkpoint import load_checkpoint
from helper.cli.entry import run_cli
from helper.errors import UsageError
from helper.runs.store import RunLock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def teacher_args(tiny_cifar, save, *extra):
    return ["--model", "resnet8", "--data_root", tiny_cifar, "--save_root", str(save), "--epochs", "1",
            "--batch_size", "16", "--num_workers", "0", "--seed", "1", "--print_freq", "100", *extra]


def run_folder(save):
    return next((save / "models").iterdir())


def test_a_lock_refuses_a_second_holder_and_is_released_by_the_kernel_on_kill(tiny_cifar, tmp_path, capsys):
    train_cifar_teacher.main(teacher_args(tiny_cifar, tmp_path, "--epochs", "2"))
    run = run_folder(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; sys.path.insert(0, sys.argv[1]); "
                               "from helper.runs.store import RunLock; lock = RunLock(sys.argv[2]); lock.acquire(); "
                               "print('locked', flush=True); time.sleep(60)", ROOT, str(run)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
        with pytest.raises(UsageError, match=rf"is in use by process {holder.pid}; wait"):
            train_cifar_teacher.main(teacher_args(tiny_cifar, tmp_path, "--epochs", "2", "--resume"))
        assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == before  # nothing touched
    finally:
        holder.kill()  # SIGKILL: no clean-up code runs, the kernel drops the lock
        holder.wait()
    summary = train_cifar_teacher.main(teacher_args(tiny_cifar, tmp_path, "--epochs", "2", "--resume"))
    assert summary["run"] == str(run)


def test_two_runs_started_at_once_into_one_folder_leave_one_clean_run(tiny_cifar, tmp_path):
    cmd = [sys.executable, os.path.join(ROOT, "train_cifar_teacher.py"), *teacher_args(tiny_cifar, tmp_path)]
    procs = [subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    codes = sorted(code for code, _, _ in outs)
    assert codes == [0, 2], outs
    refused = next(err for code, _, err in outs if code == 2)
    assert len(refused.strip().splitlines()) == 1
    # the holder's pid is in the lock file a moment after the lock is taken: "another process" until then
    assert re.search(r"is in use by (process \d+|another process);", refused) or "already holds a run" in refused
    assert len((tmp_path / "results.jsonl").read_text().splitlines()) == 1
    run = run_folder(tmp_path)
    assert load_checkpoint(str(run / "resnet8_last.pth"))["epoch"] == 1
    assert not [p for p in os.listdir(run) if p.startswith(".tmp-")]


def interrupted_run(tiny_cifar, save, monkeypatch, *extra):
    """A teacher run (`extra`: more flags) stopped (as by SIGTERM) after its first step; returns its folder."""
    with monkeypatch.context() as patch:
        def should_stop(self, step, runtime, every=20):
            self.signum = signal.SIGTERM
            return True

        patch.setattr(signals.StopRequest, "should_stop", should_stop)
        with pytest.raises(SystemExit):
            train_cifar_teacher.main(teacher_args(tiny_cifar, save, *extra))
    return run_folder(save)


def test_temporary_files_of_a_killed_writer_are_removed_at_the_next_start(tiny_cifar, tmp_path, monkeypatch):
    run = interrupted_run(tiny_cifar, tmp_path, monkeypatch)
    (run / ".tmp-k1ll3d.pth").write_bytes(b"half a checkpoint")
    (run / ".tmp-c0nf1g.json").write_text("{")
    train_cifar_teacher.main(teacher_args(tiny_cifar, tmp_path, "--resume"))
    assert not [p for p in os.listdir(run) if p.startswith(".tmp-")]
    assert (run / "resnet8_last.pth").is_file()


def disk_full(monkeypatch):
    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tempfile, "mkstemp", no_space)  # the atomic writers (helper.runs.files) make their temporary here


@pytest.mark.parametrize("fail_at", ["config.json", "checkpoint"])
def test_a_full_disk_before_the_first_checkpoint_says_so_and_does_not_suggest_resume(tiny_cifar, tmp_path,
                                                                                      monkeypatch, capsys, fail_at):
    if fail_at == "config.json":
        disk_full(monkeypatch)
    else:  # config.json is written, the first checkpoint at the end of epoch 1 is not
        write = checkpoint.save_atomic

        def failing(obj, path):
            disk_full(monkeypatch)
            write(obj, path)

        monkeypatch.setattr("helper.runs.store.save_atomic", failing)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(train_cifar_teacher.main, teacher_args(tiny_cifar, tmp_path))
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1
    assert "the disk is full" in err and "no checkpoint of this run was written yet" in err
    assert "--resume" not in err and "intact" not in err


def test_a_full_disk_after_a_checkpoint_keeps_it_and_says_resume(tiny_cifar, tmp_path, monkeypatch, capsys):
    run = interrupted_run(tiny_cifar, tmp_path, monkeypatch)
    before = (run / "resnet8_last.pth").read_bytes()
    capsys.readouterr()
    disk_full(monkeypatch)
    with pytest.raises(SystemExit):
        run_cli(train_cifar_teacher.main, teacher_args(tiny_cifar, tmp_path, "--resume"))
    err = capsys.readouterr().err
    assert "the disk is full" in err and "is intact" in err and "--resume" in err
    assert (run / "resnet8_last.pth").read_bytes() == before


def test_a_non_finite_loss_before_any_checkpoint_does_not_claim_one(tiny_cifar, tmp_path, monkeypatch):
    from distiller_zoo import Vanilla
    from helper.training.engine import NonFiniteLoss

    forward = Vanilla.forward

    def poisoned(self, images, targets, index=None, contrast_index=None):
        logits, losses = forward(self, images, targets, index, contrast_index)
        return logits, {"ce": losses["ce"] * float("inf")}

    monkeypatch.setattr(Vanilla, "forward", poisoned)
    with pytest.raises(NonFiniteLoss) as refused:
        train_cifar_teacher.main(teacher_args(tiny_cifar, tmp_path))
    assert "no checkpoint was written" in str(refused.value) and "--resume" not in str(refused.value)
    assert "--trial" in str(refused.value)


def test_resume_with_a_changed_folder_name_option_names_it(tiny_cifar, teacher_file, tmp_path, monkeypatch):
    args = ["--path_t", teacher_file("resnet8"), "--model_t", "resnet8", "--model_s", "resnet8", "--data_root",
            tiny_cifar, "--save_root", str(tmp_path), "--epochs", "1", "--batch_size", "16", "--num_workers", "0",
            "--seed", "2", "-s", "2"]
    train_cifar_student.main(args)
    changed = [*args, "-s", "4", "--resume"]
    with pytest.raises(UsageError, match=r"co_sponge \(saved 2, now 4\).*rerun with the saved options"):
        train_cifar_student.main(changed)
    assert len(list((tmp_path / "student_model").iterdir())) == 1  # no folder made for the mistyped run


def test_sigterm_line_goes_to_stderr(tiny_cifar, tmp_path, monkeypatch, capsys):
    def should_stop(self, step, runtime, every=20):
        self.signum = signal.SIGTERM
        return True

    monkeypatch.setattr(signals.StopRequest, "should_stop", should_stop)
    with pytest.raises(SystemExit):
        train_cifar_teacher.main(teacher_args(tiny_cifar, tmp_path))
    captured = capsys.readouterr()
    assert "--resume" in captured.err and "--resume" not in captured.out


class InfOnFirstStep(torch.nn.Module):
    """A linear classifier whose loss is infinite on its first step only."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)
        self.calls = 0

    def forward(self, images, targets, index=None, contrast_index=None):
        self.calls += 1
        logits = self.fc(images)
        loss = torch.nn.functional.cross_entropy(logits.float(), targets)
        return logits, {"ce": loss * float("inf") if self.calls == 1 else loss}


def test_an_overflow_the_fp16_scaler_skips_is_not_a_non_finite_loss():
    from helper.training.engine import NonFiniteLoss, train_one_epoch
    from helper.runtime.device import Runtime

    batches = [(torch.randn(8, 4), torch.randint(0, 3, (8,))) for _ in range(3)]
    runtime = Runtime(torch.device("cpu"), amp_dtype=torch.float16)
    model = InfOnFirstStep()
    before = model.fc.weight.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    stats = train_one_epoch(model, batches, optimizer, runtime, 1, scaler=runtime.grad_scaler(), progress=False,
                            timing=False)
    assert stats["skipped_steps"] >= 1 and torch.isfinite(torch.tensor(stats["loss/ce"]))
    assert not torch.equal(model.fc.weight, before)  # the later steps were applied
    with pytest.raises(NonFiniteLoss, match="step 1 in term"):  # without a scaler the same step is applied
        model = InfOnFirstStep()
        train_one_epoch(model, batches, torch.optim.SGD(model.parameters(), lr=0.1), Runtime(torch.device("cpu")),
                        1, progress=False)


def test_a_full_disk_at_the_results_line_leaves_no_half_line(tiny_cifar, tmp_path, monkeypatch, capsys):
    import helper.runs.store as run_store

    results = tmp_path / "results.jsonl"
    results.write_text('{"run": "earlier"}\n')
    real_write = os.write

    def half_write(fd, data):
        return real_write(fd, data[: len(data) // 2])  # what a filling disk does: a short write

    monkeypatch.setattr(run_store.os, "write", half_write)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(train_cifar_teacher.main, teacher_args(tiny_cifar, tmp_path))
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and "the disk is full" in err
    assert results.read_text() == '{"run": "earlier"}\n'
    assert (run_folder(tmp_path) / "resnet8_last.pth").is_file()  # the run itself is complete


def test_a_loss_that_stays_non_finite_under_fp16_is_caught_although_the_scaler_skips_it():
    from helper.training.engine import MAX_SKIPPED_RUN, NonFiniteLoss, train_one_epoch
    from helper.runtime.device import Runtime

    class AlwaysInf(InfOnFirstStep):
        def forward(self, images, targets, index=None, contrast_index=None):
            self.calls = 0  # every call is the "first"
            return super().forward(images, targets, index, contrast_index)

    batches = [(torch.randn(4, 4), torch.randint(0, 3, (4,)))] * (MAX_SKIPPED_RUN + 8)
    runtime = Runtime(torch.device("cpu"), amp_dtype=torch.float16)
    model = AlwaysInf()
    with pytest.raises(NonFiniteLoss, match=r"epoch 1, step 1 in term\(s\) ce"):
        train_one_epoch(model, batches, torch.optim.SGD(model.parameters(), lr=0.1), runtime, 1,
                        scaler=runtime.grad_scaler(), progress=False, print_freq=10 ** 6)


def test_a_refused_command_releases_the_folder_at_once(tiny_cifar, tmp_path):
    train_cifar_teacher.main(teacher_args(tiny_cifar, tmp_path))
    with pytest.raises(UsageError, match="already holds a run") as first:
        train_cifar_teacher.main(teacher_args(tiny_cifar, tmp_path))
    assert first.value is not None  # the failed call's objects are still alive here
    with pytest.raises(UsageError, match="already holds a run"):  # not "in use by process <this one>"
        train_cifar_teacher.main(teacher_args(tiny_cifar, tmp_path))


class KilledEarly(BaseException):
    """Stands in for SIGKILL before the first checkpoint: no clean-up code of the run catches it."""


def test_resume_of_a_run_killed_before_its_first_checkpoint_starts_it_over(tiny_cifar, tmp_path, monkeypatch,
                                                                          capsys):
    # the command a scheduler reruns after a kill: the same one plus --resume, whenever the kill came
    reference = train_cifar_teacher.main(teacher_args(tiny_cifar, tmp_path / "reference"))
    with monkeypatch.context() as patch:
        def killed(*args, **kwargs):
            raise KilledEarly

        patch.setattr("helper.runs.store.save_atomic", killed)
        with pytest.raises(KilledEarly):
            train_cifar_teacher.main(teacher_args(tiny_cifar, tmp_path / "save"))
    run = next((tmp_path / "save" / "models").iterdir())
    assert (run / "config.json").is_file() and not list(run.glob("*.pth"))
    capsys.readouterr()
    summary = train_cifar_teacher.main(teacher_args(tiny_cifar, tmp_path / "save", "--resume"))
    assert "has no checkpoint yet; starting the run from its beginning" in capsys.readouterr().out
    assert (summary["best_acc"], summary["last_acc"]) == (reference["best_acc"], reference["last_acc"])
    # nothing of this command anywhere (killed before its folder existed): --resume starts it as well
    fresh = train_cifar_teacher.main(teacher_args(tiny_cifar, tmp_path / "never", "--resume"))
    assert fresh["best_acc"] == reference["best_acc"]


def test_resume_without_a_checkpoint_refuses_what_looks_like_a_typo(tiny_cifar, tmp_path):
    # a finished run with --learning_rate 0.05 beside the one asked for: --resume with 0.1 names the difference
    train_cifar_teacher.main(teacher_args(tiny_cifar, tmp_path, "--learning_rate", "0.05"))
    with pytest.raises(UsageError, match=r"holds a run of this command with other options: learning_rate"):
        train_cifar_teacher.main(teacher_args(tiny_cifar, tmp_path, "--learning_rate", "0.1", "--resume"))
    assert len(list((tmp_path / "models").iterdir())) == 1  # nothing started


def test_a_new_run_into_an_occupied_folder_names_the_options_it_changed(tiny_cifar, tmp_path):
    train_cifar_teacher.main(teacher_args(tiny_cifar, tmp_path))
    with pytest.raises(UsageError, match=r"already holds a run with other options: epochs \(saved 1, now 2\)"):
        train_cifar_teacher.main(teacher_args(tiny_cifar, tmp_path, "--epochs", "2"))
    with pytest.raises(UsageError, match="already holds a run; add --resume"):
        train_cifar_teacher.main(teacher_args(tiny_cifar, tmp_path))


def test_an_unset_seed_is_not_reported_as_a_difference(tiny_cifar, teacher_file, tmp_path):
    args = ["--path_t", teacher_file("resnet8"), "--model_t", "resnet8", "--model_s", "resnet8", "--data_root",
            tiny_cifar, "--save_root", str(tmp_path), "--epochs", "1", "--batch_size", "32", "--num_workers", "0"]
    train_cifar_student.main([*args, "-s", "2"])  # the seed is drawn and saved
    with pytest.raises(UsageError) as refused:
        train_cifar_student.main([*args, "-s", "4", "--resume"])
    assert "co_sponge (saved 2, now 4)" in str(refused.value) and "seed (saved" not in str(refused.value)


def test_gids_refuses_what_its_processes_would_refuse_in_one_line(tiny_cifar, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(train_cifar_teacher.main, teacher_args(tiny_cifar, tmp_path, "--batch_size", "15", "--gids", "0,1",
                                                       "--device", "cpu"))
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and "does not divide over 2 processes" in err


def refused_in_one_line(capsys, main, args):
    """Run `main` as its script's entry point does; the one stderr line it is refused with (exit status 2)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, args)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1, err
    return err


def snapshot(folder):
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else None) for p in folder.iterdir()}


def test_a_read_only_run_folder_is_refused_in_one_line(tiny_cifar, tmp_path, monkeypatch, capsys):
    run = interrupted_run(tiny_cifar, tmp_path, monkeypatch)
    (run / ".lock").unlink()  # as after a copy of the run that left out the lock file
    before = snapshot(run)
    os.chmod(run, 0o555)
    try:
        if os.access(run, os.W_OK):
            pytest.skip("chmod does not stop this user (root) from writing")
        err = refused_in_one_line(capsys, train_cifar_teacher.main, teacher_args(tiny_cifar, tmp_path, "--resume"))
    finally:
        os.chmod(run, 0o755)
    assert f"the run folder {run} is not writable" in err and "make it writable" in err
    assert snapshot(run) == before


def test_an_unwritable_lock_file_is_refused_in_one_line_naming_the_folder(tiny_cifar, tmp_path, monkeypatch, capsys):
    import helper.runs.store as run_store

    run = interrupted_run(tiny_cifar, tmp_path, monkeypatch)
    before = snapshot(run)
    real_open = os.open

    def read_only_open(path, *args, **kwargs):  # what a read-only folder does for a user without root's override
        if os.path.basename(str(path)) == ".lock":
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(run_store.os, "open", read_only_open)
    err = refused_in_one_line(capsys, train_cifar_teacher.main, teacher_args(tiny_cifar, tmp_path, "--resume"))
    assert err.startswith(f"error: the run folder {run} is not writable (cannot write {run / '.lock'}: "
                          "Permission denied); make it writable")
    assert snapshot(run) == before
    monkeypatch.undo()  # once writable again, the run resumes and finishes
    assert train_cifar_teacher.main(teacher_args(tiny_cifar, tmp_path, "--resume"))["epochs"] == 1


@pytest.mark.parametrize("code", [errno.ENOLCK, errno.EINVAL])
def test_a_file_system_without_file_locks_is_refused_in_one_line(tiny_cifar, tmp_path, monkeypatch, capsys, code):
    import fcntl

    import helper.runs.store as run_store

    run = interrupted_run(tiny_cifar, tmp_path, monkeypatch)
    before = snapshot(run)
    real_flock = fcntl.flock

    def no_locks(handle, operation):
        name = os.readlink(f"/proc/self/fd/{handle}") if isinstance(handle, int) else getattr(handle, "name", "")
        if os.path.basename(name) == ".lock":
            raise OSError(code, os.strerror(code))
        return real_flock(handle, operation)

    monkeypatch.setattr(run_store.fcntl, "flock", no_locks)
    err = refused_in_one_line(capsys, train_cifar_teacher.main, teacher_args(tiny_cifar, tmp_path, "--resume"))
    assert f"cannot lock {run / '.lock'} ({os.strerror(code)})" in err and "--save_root on a local disk" in err
    assert snapshot(run) == before


def test_glob_characters_in_trial_and_save_root_are_taken_literally(tiny_cifar, teacher_file, tmp_path, monkeypatch):
    save = tmp_path / "runs[x]"
    run = interrupted_run(tiny_cifar, save, monkeypatch, "--trial", "[x]")
    assert run.name.endswith("_trial_[x]")
    (run / ".tmp-k1ll3d.pth").write_bytes(b"half a checkpoint")
    train_cifar_teacher.main(teacher_args(tiny_cifar, save, "--trial", "[x]", "--resume"))
    assert not [p for p in os.listdir(run) if p.startswith(".tmp-")]

    args = ["--path_t", teacher_file("resnet8"), "--model_t", "resnet8", "--model_s", "resnet8", "--data_root",
            tiny_cifar, "--save_root", str(save), "--epochs", "1", "--batch_size", "16", "--num_workers", "0",
            "--seed", "2", "--trial", "[x]", "-s", "2"]
    train_cifar_student.main(args)
    with pytest.raises(UsageError, match=r"co_sponge \(saved 2, now 4\).*rerun with the saved options"):
        train_cifar_student.main([*args, "-s", "4", "--resume"])  # the sibling run is found
