"""Where an epoch's time goes: the phase split measures what it claims, and reaches the log, history and ledger."""
import json
import time

import pytest
import torch
from torch import nn

from helper.training.engine import train_one_epoch
from helper.runtime.device import Runtime
from helper.training.timing import format_duration


class SlowParts(nn.Module):
    """A method whose teacher forward, student forward and backward each take a known time (sleeps)."""

    def __init__(self, teacher_s, student_s, backward_s):
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.teacher_s, self.student_s, self.backward_s = teacher_s, student_s, backward_s

    def teacher_forward(self, images):
        time.sleep(self.teacher_s)
        return images

    def forward(self, images, targets, index=None, contrast_index=None):
        self.teacher_forward(images)
        time.sleep(self.student_s)
        logits = self.fc(images)
        loss = nn.functional.cross_entropy(logits, targets)
        if self.backward_s:
            loss = SleepInBackward.apply(loss, self.backward_s)
        return logits, {"ce": loss}


class SleepInBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, seconds):
        ctx.seconds = seconds
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        time.sleep(ctx.seconds)
        return grad, None


class SlowLoader:
    """Three batches, each after a known wait."""

    def __init__(self, wait_s):
        self.wait_s = wait_s

    def __len__(self):
        return 3

    def __iter__(self):
        for _ in range(3):
            time.sleep(self.wait_s)
            yield torch.randn(2, 4), torch.tensor([0, 1])


def test_phase_split_matches_known_durations():
    method = SlowParts(teacher_s=0.05, student_s=0.03, backward_s=0.04)
    stats = train_one_epoch(method, SlowLoader(0.02), torch.optim.SGD(method.parameters(), lr=0.1),
                            Runtime(torch.device("cpu")), 1, progress=False)
    expected = {"data": 0.02, "teacher": 0.05, "student": 0.03, "backward": 0.04}
    for phase, seconds in expected.items():
        measured = stats[f"time/{phase}_s"]
        # 3 steps; overheads stay well below one misattributed sleep (>= 0.06 s over the epoch)
        assert 3 * seconds <= measured < 3 * seconds + 0.1, (phase, measured)
    assert "teacher_forward" not in vars(method)  # the timing wrapper is removed after the epoch


def test_without_timing_no_phase_is_reported():
    method = SlowParts(0, 0, 0)
    stats = train_one_epoch(method, SlowLoader(0), torch.optim.SGD(method.parameters(), lr=0.1),
                            Runtime(torch.device("cpu")), 1, progress=False, timing=False)
    assert not [k for k in stats if k.startswith("time/")]


def test_a_run_logs_the_split_and_eta_and_keeps_them_in_history_and_results(tiny_cifar, teacher_file, tmp_path,
                                                                             capsys):
    import train_cifar_student
    from helper.runs.checkpoint import load_checkpoint

    summary = train_cifar_student.main(["--path_t", teacher_file("resnet8"), "--model_t", "resnet8", "--model_s",
                                        "resnet8", "--data_root", tiny_cifar, "--save_root", str(tmp_path),
                                        "--epochs", "2", "--batch_size", "32", "--num_workers", "0", "--seed", "1"])
    out = capsys.readouterr().out
    epoch_lines = [line for line in out.splitlines() if line.startswith("epoch 1/2")]
    assert epoch_lines and "teacher " in epoch_lines[0] and "ETA " in epoch_lines[0]
    history = load_checkpoint(summary["run"] + "/resnet8_last.pth")["history"]
    for row in history:
        phases = sum(row[f"time/{p}_s"] for p in ("data", "teacher", "student", "backward"))
        assert 0 < phases <= row["train_s"] * 1.01 and row["time/teacher_s"] > 0
        assert {"lr", "loss/ce", "loss/norm", "beta1", "test_acc"} <= set(row)
    line = json.loads((tmp_path / "results.jsonl").read_text().splitlines()[-1])
    assert line["teacher_time_s"] == pytest.approx(round(sum(r["time/teacher_s"] for r in history), 1))
    assert line["train_time_s"] == pytest.approx(round(sum(r["train_s"] for r in history), 1))


@pytest.mark.parametrize("seconds,text", [(42, "42s"), (450, "7m30s"), (7500, "2h05m"), (-3, "0s")])
def test_durations_read_as_a_person_would(seconds, text):
    assert format_duration(seconds) == text


def test_timing_benchmark_compares_both_settings():
    from benchmarks.bench_timing import main

    on, off = main(["--device", "cpu", "--pair", "resnet8:resnet8", "--steps", "1", "--rounds", "1",
                    "--batch_size", "4"])
    assert on > 0 and off > 0


class FakeEvent:
    """A CUDA event stand-in on a fake device clock that advances 1 ms per recorded event; 'finished' on demand."""

    clock, finished_until = 0, 0

    def __init__(self, enable_timing=True):
        self.time = None

    def record(self):
        FakeEvent.clock += 1
        self.time = FakeEvent.clock

    def query(self):
        return self.time <= FakeEvent.finished_until

    def synchronize(self):
        FakeEvent.finished_until = max(FakeEvent.finished_until, self.time)

    def elapsed_time(self, end):
        return float(end.time - self.time)  # milliseconds, as CUDA's


def test_cuda_marks_are_read_without_waiting_and_an_epoch_keeps_few_of_them(monkeypatch):
    from helper.training.timing import StepTimer

    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    timer = StepTimer(torch.device("cuda"))
    steps = 1000
    for _ in range(steps):  # marks 1..5 per step: start, teacher start, teacher end, forward done, step end
        timer.start_step()
        timer.teacher(timer.mark(), timer.mark())
        timer.forward_done()
        timer.end_step()
        FakeEvent.finished_until = FakeEvent.clock - 5 * 10  # the device runs ten steps behind the host
        assert len(timer.steps) <= 2 * StepTimer.PENDING_STEPS  # finished steps are read and let go
    totals = timer.totals()
    # per step: teacher end - start = 1 ms, start -> forward done = 3 ms (teacher included), then 1 ms
    assert totals["teacher"] == pytest.approx(steps * 0.001)
    assert totals["student"] == pytest.approx(steps * 0.002)
    assert totals["backward"] == pytest.approx(steps * 0.001)
