"""A full disk, whatever the free space when a run starts, ends the run with one line and exit code 2, never a traceback.

The real thing: a tiny tmpfs in a private mount namespace, filled to leave 0, 1, 2, 3 ... pages free, so that each of
the run's writes (the lock, config.json, the TensorBoard log, the checkpoints, the results line) in turn is the one that
fails. Skipped where the machine allows no private mount namespace; the stand-ins below run everywhere.
"""
import errno
import json
import os
import shutil
import subprocess
import sys

import pytest

import train_cifar_teacher
from helper.errors import UsageError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "diskfull_worker.py")


def namespace_command():
    """The prefix that runs a command as root of a private mount namespace, or None where that is not allowed."""
    unshare = shutil.which("unshare")
    if unshare is None or not sys.platform.startswith("linux"):
        return None
    command = [unshare, "--mount", "--map-root-user", "--propagation", "private"]
    probe = subprocess.run([*command, "true"], capture_output=True)
    return command if probe.returncode == 0 else None


def run_cases(tmp_path, tiny_cifar, *cases):
    """The worker's result for each case of free pages ('plenty' for enough)."""
    command = namespace_command()
    if command is None:
        pytest.skip("no private mount namespace here (unshare --mount --map-root-user is not permitted)")
    mount = tmp_path / "mnt"
    mount.mkdir(exist_ok=True)
    out = subprocess.run([*command, sys.executable, WORKER, str(mount), tiny_cifar, *map(str, cases)],
                         capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if out.returncode != 0 and "mount" in out.stderr and "permission denied" in out.stderr.lower():
        pytest.skip("tmpfs cannot be mounted here")
    assert out.returncode == 0, out.stderr[-3000:]
    return [json.loads(line) for line in out.stdout.splitlines()]


def test_every_write_of_a_run_turns_a_full_disk_into_one_line(tmp_path, tiny_cifar):
    (plenty,) = run_cases(tmp_path, tiny_cifar, "plenty")
    assert plenty["code"] == 0 and plenty["stderr"] == "", plenty["stderr"]
    used = plenty["used_by_run"]  # pages the whole run writes
    cases = sorted({0, 1, 2, 3, used // 2, used - 2, used - 1})
    failed_at = set()
    for result in run_cases(tmp_path, tiny_cifar, *cases):
        lines = result["stderr"].strip().splitlines()
        assert result["code"] == 2, result
        assert len(lines) == 1 and lines[0].startswith("error: "), result["stderr"]
        assert "the disk is full (No space left on device)" in lines[0], lines[0]
        line = lines[0]
        failed_at.add(".lock" if ".lock" in line else "config.json" if "config.json" in line else
                      "tensorboard" if "TensorBoard" in line else "results.jsonl" if "results.jsonl" in line else
                      "checkpoint" if ".pth" in line else line)
    # each of the run's kinds of write was the failing one in some case, and each said so in its one line
    assert failed_at == {".lock", "config.json", "tensorboard", "checkpoint", "results.jsonl"}, failed_at


def test_a_lock_file_that_cannot_be_written_is_one_line(tiny_cifar, tmp_path, monkeypatch):
    import helper.runs.store as run_store

    def disk_full(fd, data, offset):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(run_store.os, "pwrite", disk_full)
    argv = ["--model", "resnet8", "--data_root", tiny_cifar, "--save_root", str(tmp_path), "--epochs", "1",
            "--batch_size", "16", "--num_workers", "0", "--seed", "1"]
    with pytest.raises(UsageError, match=r"cannot write the lock file .*\.lock: the disk is full \(No space left on "
                                         r"device\); free space"):
        train_cifar_teacher.main(argv)
    monkeypatch.undo()
    assert train_cifar_teacher.main(argv)["epochs"] == 1  # the refused start held no lock and left nothing in the way


def test_a_full_disk_under_the_event_log_is_one_line(tmp_path):
    from helper.training.event_log import EventLog
    from helper.errors import CheckpointWriteError

    log = EventLog(str(tmp_path / "tb"), lambda: "what is on disk")

    def disk_full(*args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    log.writer.add_scalar = disk_full
    with pytest.raises(CheckpointWriteError, match=r"could not write the TensorBoard log in .*tb: the disk is full "
                                                   r"\(No space left on device\); what is on disk"):
        log.add_scalar("loss", 1.0, 1)
    log.writer.close()
