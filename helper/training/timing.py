"""Where a training epoch's time goes: data wait, teacher forward, student forward + loss, backward + step.

On CPU the phases are host timers (the work is synchronous). On CUDA they are CUDA events, recorded without waiting;
finished ones are read with a non-blocking `query()` once 128 steps are pending, and the rest at the end of the
epoch (one wait), so the step gains no host synchronisation.
"""
import time

import torch

PHASES = ("data", "teacher", "student", "backward")


class StepTimer:
    """Collects per-step phase marks; `totals()` sums them per phase in seconds."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"
        self.data_s = 0.0
        # on CUDA, the unread steps: (forward start, [(teacher start, teacher end), ...], forward end, step end)
        self.steps = []
        self._current = None
        self._folded = dict.fromkeys(PHASES, 0.0)  # the phases of steps already read and let go

    # on CUDA the finished steps are read (non-blocking) once 2 * PENDING_STEPS steps are unread, so an epoch
    # holds at most a few hundred events
    PENDING_STEPS = 64

    def mark(self):
        """A point in time on the device's clock (a recorded CUDA event, or a host timestamp)."""
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def add_data_wait(self, seconds):
        """Host time spent waiting for the next batch (and handing it to the device)."""
        self.data_s += seconds

    def start_step(self):
        """The forward pass begins."""
        self._current = [self.mark(), [], None, None]

    def teacher(self, start, end):
        """A teacher forward pass of this step ran between the marks `start` and `end`."""
        if self._current is not None:
            self._current[1].append((start, end))

    def forward_done(self):
        """The forward pass (teacher, student and loss) is issued."""
        self._current[2] = self.mark()

    def end_step(self):
        """Backward pass and optimizer step are issued."""
        self._current[3] = self.mark()
        if not self.cuda:  # host times are known at once
            self._add(self._folded, self._current)
        else:
            self.steps.append(self._current)
            if len(self.steps) >= 2 * self.PENDING_STEPS:
                self._fold_finished()
        self._current = None

    def _fold_finished(self):
        """Add up and drop the leading steps whose last event has happened (event.query(): no wait)."""
        done = 0
        for step in self.steps:
            if not step[3].query():
                break
            self._add(self._folded, step)
            done += 1
        del self.steps[:done]

    def _seconds(self, start, end):
        return start.elapsed_time(end) / 1000 if self.cuda else end - start

    def totals(self):
        """Seconds per phase over the steps so far (on CUDA one wait for the last event)."""
        if self.cuda and self.steps:
            self.steps[-1][3].synchronize()
        totals = dict(self._folded)
        for step in self.steps:
            self._add(totals, step)
        totals["data"] = self.data_s
        return totals

    def _add(self, totals, step):
        start, teacher_spans, forward_end, step_end = step
        teacher = sum(self._seconds(a, b) for a, b in teacher_spans)
        totals["teacher"] += teacher
        totals["student"] += self._seconds(start, forward_end) - teacher
        totals["backward"] += self._seconds(forward_end, step_end)


class timed_teacher:
    """Context: while active, `method.teacher_forward` reports its time to `timer` (restored afterwards)."""

    def __init__(self, method, timer):
        self.method, self.timer = method, timer

    def __enter__(self):
        original = getattr(self.method, "teacher_forward", None)
        if original is None or self.timer is None:
            self.method = None
            return self

        def teacher_forward(*args, **kwargs):
            start = self.timer.mark()
            out = original(*args, **kwargs)
            self.timer.teacher(start, self.timer.mark())
            return out

        self.method.teacher_forward = teacher_forward  # an instance attribute shadows the bound method
        return self

    def __exit__(self, *exc):
        if self.method is not None:
            del self.method.teacher_forward


def format_duration(seconds):
    """'2h05m', '7m30s' or '42s'."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def time_split(train, seconds):
    """'(data 3% teacher 41% student 22% backward 34%)': the epoch's training time per phase."""
    parts = [(phase, train.get(f"time/{phase}_s")) for phase in PHASES]
    if any(value is None for _, value in parts):
        return ""
    return "(" + " ".join(f"{phase} {100 * value / max(seconds, 1e-9):.0f}%" for phase, value in parts) + ")"


def time_totals(history):
    """The run's training seconds in all and per phase, summed over the epochs of its history."""
    totals = {"train_time_s": round(sum(h.get("train_s", 0.0) for h in history), 1)}
    for phase in PHASES:
        totals[f"{phase}_time_s"] = round(sum(h.get(f"time/{phase}_s", 0.0) for h in history), 1)
    return totals
