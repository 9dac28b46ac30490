"""The one training step loop and the one validation loop, shared by every script, dataset and method."""
import sys
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.distributed
import torch.nn.functional as F

from helper.errors import UsageError
from helper.runtime.device import all_reduce_sum
from helper.training.timing import StepTimer, timed_teacher


class Interrupted(Exception):
    """Training stopped on a signal after `steps_done` steps of the epoch."""

    def __init__(self, steps_done):
        super().__init__(steps_done)
        self.steps_done = steps_done


class NonFiniteLoss(UsageError):
    """A loss term became NaN or infinite."""


def _progress(iterable, total, desc, enabled):
    if not enabled:
        return iterable
    from tqdm import tqdm
    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)


def _to_device(batch, runtime):
    images, targets, *extra = batch
    images = images.to(runtime.device, non_blocking=True)
    if runtime.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    extra = [x.to(runtime.device, non_blocking=True) for x in extra]
    index = extra[0] if extra else None
    contrast = extra[1] if len(extra) > 1 else None
    return images, targets.to(runtime.device, non_blocking=True), index, contrast


def train_one_epoch(method, loader, optimizer, runtime, epoch, *, scaler=None, start_step=0, print_freq=100,
                    stop=None, progress=None, log=print, timing=True):
    """Train one epoch (from `start_step` when resuming); returns averaged loss terms, train accuracy and, with
    `timing`, the seconds spent per phase (`time/data_s`, `time/teacher_s`, `time/student_s`, `time/backward_s`).

    The loop never reads values back from the device except every `print_freq` steps: loss terms and
    top-k counts accumulate on the device, and the first non-finite step of each term is tracked there too.
    """
    method.train()
    progress = sys.stderr.isatty() if progress is None else progress
    timer = StepTimer(runtime.device) if timing else None
    steps = EpochSteps(optimizer, runtime, epoch, scaler, start_step, print_freq, stop, progress, log, timer)
    with timed_teacher(getattr(method, "module", method), timer):  # DDP holds the method as .module
        result = _train_steps(method, loader, steps)
    if timer is not None:
        result.update({f"time/{phase}_s": seconds for phase, seconds in timer.totals().items()})
    return result


# Overflows a gradient scaler skips come in short runs (the scale halves each time); a longer run of skipped steps
# with a non-finite loss means the loss itself is non-finite in fp16, not the scaled gradients.
MAX_SKIPPED_RUN = 32


class SkippedSteps:
    """Which steps an fp16 gradient scaler skipped, tracked on the device (the scale falls exactly on a skip)."""

    def __init__(self, scaler, start_step, like):
        self.scaler = scaler
        self.count = torch.zeros((), dtype=torch.long, device=like.device)
        self.last_applied = torch.full((), start_step - 1, dtype=torch.long, device=like.device)
        self.first_bad = torch.full_like(like, -1)  # per term: first non-finite step of the current skipped run

    def scale(self):
        """The scaler's scale as a device tensor (no host sync), or a host float on versions without one."""
        scale = getattr(self.scaler, "_scale", None)
        return scale.clone() if isinstance(scale, torch.Tensor) else self.scaler.get_scale()

    def update(self, step, before, values):
        """After scaler.update(): a device bool, True when the step was applied."""
        after = self.scale()
        applied = torch.as_tensor(after >= before, device=self.count.device).reshape(())
        self.count += (~applied).long()
        self.last_applied = torch.where(applied, step, self.last_applied)
        bad = (self.first_bad < 0) & ~torch.isfinite(values)
        self.first_bad = torch.where(applied, -1.0, torch.where(bad, float(step), self.first_bad))
        return applied

    def stuck(self, step):
        """Per term, the first step of a run of over MAX_SKIPPED_RUN skipped steps with a non-finite loss, else -1."""
        long_run = (step - self.last_applied) > MAX_SKIPPED_RUN
        return torch.where(long_run, self.first_bad, -1.0)


@dataclass(frozen=True)
class EpochSteps:
    """How one epoch's steps run: optimizer, runtime, where the epoch starts, when to log and to check for a stop."""

    optimizer: torch.optim.Optimizer
    runtime: object
    epoch: int
    scaler: Optional[object]  # a gradient scaler (fp16), or None
    start_step: int
    print_freq: int
    stop: Optional[object]  # a StopRequest, or None
    progress: bool
    log: Callable[[str], None]
    timer: Optional[StepTimer]


def _train_steps(method, loader, steps):
    # plain locals: the loop reads them on every step
    optimizer, runtime, epoch, scaler = steps.optimizer, steps.runtime, steps.epoch, steps.scaler
    start_step, print_freq, stop, progress, log, timer = (steps.start_step, steps.print_freq, steps.stop,
                                                          steps.progress, steps.log, steps.timer)
    names, totals, first_bad, skips = None, None, None, None
    total_steps = start_step + len(loader)
    bar = _progress(loader, len(loader), f"epoch {epoch}", progress and runtime.is_main)
    step = start_step
    fetch_start = time.perf_counter()
    for step, batch in enumerate(bar, start=start_step):
        images, targets, index, contrast = _to_device(batch, runtime)
        if timer is not None:
            timer.add_data_wait(time.perf_counter() - fetch_start)
            timer.start_step()
        with runtime.autocast():
            logits, losses = method(images, targets, index=index, contrast_index=contrast)
        loss = sum(losses.values())
        if timer is not None:
            timer.forward_done()
        optimizer.zero_grad(set_to_none=True)
        values = torch.stack([v.detach().float() for v in losses.values()])
        if totals is None:
            names = list(losses)
            totals = torch.zeros(len(names) + 3, device=values.device)  # terms x n, top-1, top-5, n
            first_bad = torch.full_like(values, -1)
            skips = SkippedSteps(scaler, start_step, values) if scaler is not None else None
        applied = None  # None: applied (no scaler); else a device bool
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            before = skips.scale()
            scaler.update()
            applied = skips.update(step, before, values)
        else:
            loss.backward()
            optimizer.step()
        if timer is not None:
            timer.end_step()

        n = targets.shape[0]  # known on the host; full_like fills on the device (no host-to-device copy or sync)
        stats = torch.cat([values * n, correct_topk(logits.detach(), targets).float(), torch.full_like(values[:1], n)])
        finite = torch.isfinite(values)
        if applied is None:
            totals += stats
            first_bad = torch.where((first_bad < 0) & ~finite, float(step), first_bad)
        else:  # an overflow the scaler skipped changed nothing: not a non-finite loss, and its inf is not averaged
            totals += torch.where(applied | finite.all(), stats, 0.0)
            first_bad = torch.where(applied & (first_bad < 0) & ~finite, float(step), first_bad)

        check = (step + 1) % print_freq == 0 or step + 1 == total_steps
        stopping = stop is not None and stop.should_stop(step, runtime)
        if check or stopping:
            stuck = skips.stuck(step) if skips is not None else None
            _check_finite(first_bad if stuck is None else torch.where(first_bad >= 0, first_bad, stuck), names,
                          epoch, runtime)
        if check and runtime.is_main and not progress:
            avg = totals[:len(names)] / totals[-1].clamp(min=1)
            terms = " ".join(f"{k} {v:.4f}" for k, v in zip(names, avg.tolist()))
            log(f"epoch {epoch} [{step + 1}/{total_steps}] {terms} lr {optimizer.param_groups[0]['lr']:.5g}")
        if stopping:
            raise Interrupted(step + 1)
        fetch_start = time.perf_counter()
    if totals is None:
        return {}
    totals = all_reduce_sum(totals, runtime).tolist()
    count = max(totals[-1], 1)
    result = {f"loss/{k}": v / count for k, v in zip(names, totals)}
    result["loss/total"] = sum(result.values())
    result["train_acc1"], result["train_acc5"] = (100 * c / count for c in totals[len(names):-1])
    if skips is not None:
        result["skipped_steps"] = int(skips.count)  # the ranks skip together: their gradients are all-reduced
    return result


def _check_finite(first_bad, names, epoch, runtime):
    """Raise NonFiniteLoss naming the epoch, step and term of the first non-finite loss (one host sync).

    Under DDP the ranks agree first (a collective every rank reaches), so either all of them stop or none does.
    """
    if runtime.distributed:  # the earliest bad step over the ranks (+inf stands for "none")
        earliest = torch.where(first_bad < 0, float("inf"), first_bad)
        torch.distributed.all_reduce(earliest, op=torch.distributed.ReduceOp.MIN)
        first_bad = torch.where(torch.isinf(earliest), -1.0, earliest)
    bad = first_bad.tolist()
    hits = [(int(s), name) for s, name in zip(bad, names) if s >= 0]
    if hits:
        step, _ = min(hits)
        terms = ", ".join(name for s, name in hits if s == step)
        raise NonFiniteLoss(f"non-finite loss at epoch {epoch}, step {step + 1} in term(s) {terms}")


def correct_topk(logits, targets, ks=(1, 5)):
    """Number of samples whose target is among the top-k logits, for each k, as a tensor (no host sync)."""
    maxk = min(max(ks), logits.shape[1])
    top = logits.topk(maxk, dim=1).indices
    hits = top.eq(targets[:, None])
    return torch.stack([hits[:, :min(k, maxk)].any(dim=1).sum() for k in ks])


@torch.no_grad()
def validate(model, loader, runtime):
    """Top-1/top-5 accuracy (percent) and mean cross-entropy of `model` over all ranks' shards of `loader`."""
    model.eval()
    totals = torch.zeros(4, device=runtime.device)  # loss, top-1, top-5, samples (counted on the host)
    count = 0
    for batch in loader:
        images, targets, _, _ = _to_device(batch, runtime)
        with runtime.autocast():
            logits = model(images)
        logits = logits.float()
        totals[0] += F.cross_entropy(logits, targets, reduction="sum")
        totals[1:3] += correct_topk(logits, targets).float()
        count += targets.shape[0]
    totals[3] = count
    loss, top1, top5, count = all_reduce_sum(totals, runtime).tolist()
    count = max(count, 1)
    return {"acc1": 100 * top1 / count, "acc5": 100 * top5 / count, "loss": loss / count}
