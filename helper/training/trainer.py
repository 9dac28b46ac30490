"""The epoch driver shared by the three training scripts: stages, schedules, validation, checkpoints, logs.

The run folder and its policies live in helper.runs, DDP in helper.runtime.distributed, the step loop in `engine`,
the optimizers in `optim`; the command line builds the parts and hands them over (helper.cli.main).
"""
import gc
import os
import sys
import time
from dataclasses import dataclass
from typing import Optional, Tuple

from helper.runs.checkpoint import plain_number
from helper.runs.results import run_summary
from helper.runtime.device import compile_networks, ranks_done
from helper.runtime.distributed import (StageWrapper, check_sync_bn, gather_rng_states, per_process_batch,
                                        restore_rng_state, sync_buffers)
from helper.training.engine import Interrupted, NonFiniteLoss, train_one_epoch, validate
from helper.training.optim import build_optimizers, match_parameter_layouts
from helper.training.schedule import learning_rate, set_learning_rate
from helper.training.signals import StopRequest, Stopped
from helper.training.timing import format_duration, time_split, time_totals

INIT_STAGE_EPOCH_OFFSET = 1_000_000


@dataclass(frozen=True)
class TrainSettings:
    """What the epoch driver needs from the command line."""

    epochs: int
    batch_size: int  # global, split over the processes
    learning_rate: float
    lr_decay: str
    lr_decay_epochs: Tuple[int, ...]
    lr_decay_rate: float
    momentum: float
    weight_decay: float
    fused_sgd: bool
    init_epochs: int  # of a two-stage method's init stage (0: none)
    sync_bn: bool
    compile: bool
    print_freq: int
    save_freq: int
    progress: Optional[bool]  # None: progress bars on a terminal only


class Stage:
    """Where a stage stands: the last epoch begun and the steps of it done (0: the epoch is complete)."""

    def __init__(self, epoch=0, step=0):
        self.epoch, self.step = epoch, step

    def next_start(self):
        """(first epoch to run, steps of it to skip)."""
        return (self.epoch, self.step) if self.step else (self.epoch + 1, 0)


class Trainer:
    """Drives one run of `method` (which wraps `student`) in the run folder of `store`, from `config`'s options.

    `install_teacher(method)`, when given, installs the inference teacher and returns its log line (again on resume).
    """

    def __init__(self, method, student, settings, runtime, *, store, config, train_loader, val_loader, record,
                 install_teacher=None):
        self.method, self.student, self.settings, self.runtime = method, student, settings, runtime
        self.store, self.config, self.record = store, config, record
        self.train_loader, self.val_loader, self.install_teacher = train_loader, val_loader, install_teacher
        self.run_dir, self.last_path = store.run_dir, store.last_path
        self.batch = per_process_batch(settings.batch_size, runtime.world_size)
        sync_bn = check_sync_bn(settings.sync_bn, runtime)
        self.best_acc, self.history = 0.0, []
        self.epoch_seconds = []  # wall time of each epoch this process ran (training + validation), for the ETA
        self.main = Stage()
        self.two_stage = method.has_init_stage and settings.init_epochs > 0
        self.init = Stage() if self.two_stage else None  # None: no init stage left to run
        # read and checked before anything costly runs (the caller may validate the teacher next)
        self.resume_checkpoint = store.read_resumable(config, type(method)) if store.resume else None
        runtime.to_device(method)
        self.teacher_note = install_teacher(method) if install_teacher else None
        if settings.compile:  # an inference teacher compiles itself
            compile_networks(student, None if self.teacher_note else getattr(method, "teacher", None))
        self.optimizers = build_optimizers(method, settings, runtime, self.two_stage)
        self.wrapper = StageWrapper(method, runtime, sync_bn)
        self.writer = None
        self.progress = sys.stderr.isatty() if settings.progress is None else settings.progress

    # ---------------------------------------------------------------- state
    def stateful_parts(self):
        """The parts whose state a checkpoint holds, by checkpoint key (objects with state_dict/load_state_dict)."""
        o = self.optimizers
        parts = {"model": self.student, "method": MethodState(self.method), "optimizer": o.main, "scaler": o.scaler}
        if self.init is not None:
            parts.update(init_optimizer=o.init, init_scaler=o.init_scaler)
        return parts

    def state(self, accuracy=0.0):
        """Everything needed to continue the run, as plain data (a collective under DDP: all ranks call it)."""
        payload = {key: (part.state_dict() if part is not None else None)
                   for key, part in self.stateful_parts().items()}
        rngs = gather_rng_states(self.runtime)
        payload.update(epoch=self.main.epoch, step=self.main.step, accuracy=float(accuracy),
                       best_acc=float(self.best_acc), rng=rngs[0], rng_per_rank=rngs, config=self.config,
                       history=self.history, init_done=self.init is None)
        if self.init is not None:
            payload.update(init_epoch=self.init.epoch, init_step=self.init.step)
        return payload

    def load_state(self, ckpt):
        """Restore what `state` returned (and checkpoints of earlier versions, which lack the newer keys)."""
        if ckpt.get("init_done", True):
            self.init = None
        elif "init_epoch" in ckpt:
            self.init = Stage(ckpt["init_epoch"], ckpt["init_step"])
        else:  # files of earlier versions: the interrupted init stage restarts
            self.init = Stage() if self.two_stage else None
        for key, part in self.stateful_parts().items():
            if part is not None and ckpt.get(key):
                part.load_state_dict(ckpt[key])
        match_parameter_layouts(self.optimizers.main)
        self.best_acc, self.history = plain_number(ckpt["best_acc"]), list(ckpt.get("history", []))
        if self.init is None and self.method.has_init_stage:
            self.method.set_stage("main")
        restore_rng_state(ckpt, self.runtime)
        self.main = Stage(ckpt["epoch"], ckpt["step"])

    def save_last(self, accuracy=0.0):
        """The resumable checkpoint."""
        self.store.save(os.path.basename(self.last_path), self.state(accuracy))

    # ---------------------------------------------------------------- the run
    def log(self, message, err=False):
        """Print on rank 0 (through tqdm while progress bars are shown); `err` for what must reach stderr."""
        if not self.runtime.is_main:
            return
        if self.progress and not err:
            from tqdm import tqdm
            tqdm.write(message)
        else:
            print(message, file=sys.stderr if err else sys.stdout, flush=True)

    def fit(self):
        """Train from the start (or the resumed position) to the last epoch; returns the run's summary.

        Raises Stopped after a signal (the resumable checkpoint is written), NonFiniteLoss when a loss diverges.
        """
        try:
            if self.store.resume:
                ckpt, self.resume_checkpoint = self.resume_checkpoint, None
                self.load_state(ckpt)
                if self.teacher_note:  # made anew from the teacher as it is now, after everything was loaded
                    self.teacher_note = self.install_teacher(self.method)
                if self.init is None and self.main.next_start()[0] > self.settings.epochs:
                    return self.finished_already()
            self.store.open(self.config)  # only now: a command refused while setting up leaves no folder behind
            if self.store.resume:
                where = (f"init epoch {self.init.next_start()[0]}" if self.init is not None else
                         "epoch {}, step {}".format(*self.main.next_start()))
                self.log(f"resuming {self.run_dir} at {where}")
            kept = "; freed host memory kept for reuse" if self.runtime.host_memory_kept else ""
            self.log(f"global batch {self.settings.batch_size} = {self.runtime.world_size} x {self.batch}{kept}")
            if self.teacher_note:
                self.log(self.teacher_note)
            return self._train()
        finally:
            self.store.close()

    def _train(self):
        if self.runtime.is_main:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(os.path.join(self.run_dir, "tensorboard"))
        stop, started = StopRequest().install(), time.time()
        try:
            if self.init is not None:
                self.run_init_stage(stop)
            start, _ = self.main.next_start()
            epochs = range(start, self.settings.epochs + 1)
            if self.progress and self.runtime.is_main:
                from tqdm import tqdm
                epochs = tqdm(epochs, desc="epochs", initial=start - 1, total=self.settings.epochs)
            for epoch in epochs:
                self.run_epoch(epoch, stop)
        except Interrupted:
            self.log(f"stopped by signal {stop.signum}; a resumable checkpoint is in {self.last_path}; continue with "
                     "the same command plus --resume", err=True)
            raise Stopped(stop.signum or 15) from None
        except NonFiniteLoss as err:
            kept = (f"the last good checkpoint {self.last_path} is kept" if self.store.has_checkpoint else
                    "no checkpoint was written")
            raise NonFiniteLoss(f"{err}; lower the learning rate or that term's weight and start a new run with "
                                f"another --trial ({kept})") from None
        finally:
            stop.uninstall()
            if self.writer is not None:
                self.writer.close()
        return self.finish(time.time() - started)

    def run_stage_epoch(self, stage, epoch, stage_epoch, optimizer, scaler, stop):
        """Train one epoch of `stage` from its saved position; on a signal save where it stands and re-raise."""
        position = self.init if stage == "init" else self.main
        skip = position.step if position.epoch == epoch else 0
        self.train_loader.sampler.set_epoch(stage_epoch, skip * self.batch)
        position.epoch, position.step = epoch, skip
        try:
            stats = train_one_epoch(self.wrapper.for_stage(stage), self.train_loader, optimizer, self.runtime,
                                    epoch, scaler=scaler, start_step=skip, print_freq=self.settings.print_freq,
                                    stop=stop, progress=self.progress, log=self.log)
        except Interrupted as interrupt:
            position.step = interrupt.steps_done
            self.save_last()
            raise
        position.step = 0
        return stats

    def run_init_stage(self, stop):
        """The pre-training stage of AB/FT/FSP (RepDistiller's `init`), resumable mid-epoch like the main stage."""
        self.method.set_stage("init")
        for epoch in range(self.init.next_start()[0], self.settings.init_epochs + 1):
            stats = self.run_stage_epoch("init", epoch, INIT_STAGE_EPOCH_OFFSET + epoch,  # its own seeded order
                                         self.optimizers.init, self.optimizers.init_scaler, stop)
            self.log(f"init epoch {epoch}/{self.settings.init_epochs} loss {stats.get('loss/total', 0):.4f}")
            self.save_last()
        self.method.set_stage("main")
        self.init = None
        self.save_last()

    def run_epoch(self, epoch, stop):
        """One epoch: schedules, training, validation, logs and checkpoints."""
        s, optimizer = self.settings, self.optimizers.main
        lr = learning_rate(epoch, s.learning_rate, s.epochs, s.lr_decay, s.lr_decay_epochs, s.lr_decay_rate)
        set_learning_rate(optimizer, lr)
        self.method.set_epoch(epoch)
        tic = time.time()
        train = self.run_stage_epoch("main", epoch, epoch, optimizer, self.optimizers.scaler, stop)
        seconds = time.time() - tic
        sync_buffers(self.method, self.runtime)
        val = validate(self.student, self.val_loader, self.runtime)
        self.epoch_seconds.append(time.time() - tic)
        is_best = val["acc1"] > self.best_acc or not os.path.isfile(self.store.best_path)
        self.best_acc = max(self.best_acc, val["acc1"])
        images = len(self.train_loader.sampler) * self.runtime.world_size
        row = {"epoch": epoch, "lr": lr, **train, **self.method.logged_scalars(), "test_acc": val["acc1"],
               "test_acc_top5": val["acc5"], "test_loss": val["loss"], "images_per_s": images / max(seconds, 1e-9)}
        self.history.append(row | {"train_s": seconds})
        eta = (s.epochs - epoch) * sum(self.epoch_seconds) / len(self.epoch_seconds)
        self.log(f"epoch {epoch}/{s.epochs} lr {lr:.5g} train loss {train.get('loss/total', 0):.4f} "
                 f"acc {train.get('train_acc1', 0):.2f} | test acc@1 {val['acc1']:.2f} acc@5 {val['acc5']:.2f} "
                 f"loss {val['loss']:.4f} | best {self.best_acc:.2f} | {row['images_per_s']:.0f} img/s "
                 f"{time_split(train, seconds)} | ETA {format_duration(eta)}")
        if self.writer is not None:
            for key, value in row.items():
                if key != "epoch":
                    self.writer.add_scalar(key, value, epoch)
        weights = {"epoch": epoch, "model": self.student.state_dict()}
        if is_best:  # RepDistiller's best-file keys, plus our options
            self.store.save(os.path.basename(self.store.best_path),
                            {**weights, "best_acc": float(self.best_acc), "accuracy": float(val["acc1"]),
                             "optimizer": optimizer.state_dict(), "config": self.config})
        if epoch % s.save_freq == 0:
            self.store.save(f"ckpt_epoch_{epoch}.pth",
                            {**weights, "accuracy": float(val["acc1"]), "optimizer": optimizer.state_dict(),
                             "method": self.method.method_state_dict(), "config": self.config})
        self.save_last(val["acc1"])

    def finish(self, seconds):
        """Summary line, and one JSON line appended to <save_root>/results.jsonl."""
        summary = self.summary(seconds)
        self.log(f"summary: {self.store.name} best acc@1 {self.best_acc:.2f} last acc@1 {summary['last_acc']:.2f} "
                 f"({self.run_dir})")
        self.store.append_result(summary)
        self.leave_process_group_cleanly()
        return summary

    def leave_process_group_cleanly(self):
        """After a normal end: the ranks meet (none leaves while a peer still talks to it) and the DDP wrapper, which
        holds the process group, is dropped, so that runtime.cleanup() destroys a group nothing uses any more (gloo
        has been seen to abort a process torn down otherwise)."""
        ranks_done()
        self.wrapper = None
        gc.collect()

    def finished_already(self):
        """A resumed run with nothing left to train: its summary, and its results line if a kill kept it from there."""
        summary = self.summary(0.0)
        # Killed (or stopped) between the final checkpoint and its results line, a run leaves no line: record it now.
        # The process's wall time is lost; its training seconds from the history are the closest measure left.
        line = summary | {"wall_time_s": summary["train_time_s"], "recorded_on_resume": True}
        note = (f"; its missing result line was added to {self.store.results.path}"
                if self.store.append_result_once(line) else "")
        self.log(f"{self.run_dir} already finished its {self.settings.epochs} epochs (best acc@1 {self.best_acc:.2f}); "
                 f"nothing to resume{note}")
        self.leave_process_group_cleanly()
        return summary

    def summary(self, seconds):
        """The run's results as plain data (best and last accuracy, record, times, config)."""
        return run_summary(self.run_dir, self.record, self.history, self.best_acc, self.settings.epochs, seconds,
                           time_totals(self.history), self.config)


class MethodState:
    """The method's own parts (not student, not teacher) as a stateful part of the checkpoint."""

    def __init__(self, method):
        self.method = method

    def state_dict(self):
        return self.method.method_state_dict()

    def load_state_dict(self, state):
        self.method.load_method_state_dict(state)
