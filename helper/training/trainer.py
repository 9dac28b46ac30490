"""The epoch driver shared by the training scripts: stages, schedules, validation, checkpoints, logs.

The run folder and its policies live in helper.runs, DDP in helper.runtime.distributed, the step loop in `engine`,
the optimizers in `optim`; the command line builds the parts and hands them over (helper.cli.main).
"""
import gc
import os
import sys
import time
from dataclasses import dataclass
from typing import Optional, Tuple

from helper.runs.results import run_summary
from helper.runtime.device import compile_networks, ranks_done
from helper.runtime.distributed import StageWrapper, check_sync_bn, per_process_batch, sync_buffers
from helper.training.engine import Interrupted, NonFiniteLoss, train_one_epoch, validate
from helper.training.log import RunLog
from helper.training.optim import build_optimizers
from helper.training.schedule import learning_rate, set_learning_rate
from helper.training.signals import StopRequest, Stopped
from helper.training.state import MethodState, Progress, epoch_checkpoints
from helper.training.timing import time_totals

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
    warmup_epochs: int = 0  # linear learning-rate warm-up (scripts/train_teacher.py's fine-tuning recipe)


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
        self.epoch_seconds = []  # wall time of each epoch this process ran (training + validation), for the ETA
        self.two_stage = method.has_init_stage and settings.init_epochs > 0
        self.progress = Progress(self.two_stage)  # the stages' positions, best accuracy, history
        # read and checked before anything costly runs (the caller may validate the teacher next)
        self.resume_checkpoint = store.read_resumable(config, type(method)) if store.resume else None
        runtime.to_device(method)
        self.teacher_note = install_teacher(method) if install_teacher else None
        if settings.compile:  # an inference teacher compiles itself
            compile_networks(student, None if self.teacher_note else getattr(method, "teacher", None))
        self.optimizers = build_optimizers(method, settings, runtime, self.two_stage)
        self.wrapper = StageWrapper(method, runtime, sync_bn)
        self.bars = sys.stderr.isatty() if settings.progress is None else settings.progress  # tqdm progress bars
        self.log = RunLog(runtime, self.bars)

    # ---------------------------------------------------------------- state
    def stateful_parts(self, progress=None):
        """The parts whose state a checkpoint holds, by checkpoint key (objects with state_dict/load_state_dict)."""
        o = self.optimizers
        parts = {"model": self.student, "method": MethodState(self.method), "optimizer": o.main, "scaler": o.scaler}
        if (progress or self.progress).init is not None:
            parts.update(init_optimizer=o.init, init_scaler=o.init_scaler)
        return parts

    def save_last(self, accuracy=0.0):
        """The resumable checkpoint (a collective under DDP: all ranks call it)."""
        state = self.progress.payload(self.stateful_parts(), self.runtime, self.config, accuracy)
        self.store.save(os.path.basename(self.last_path), state)

    # ---------------------------------------------------------------- the run
    def fit(self):
        """Train from the start (or the resumed position) to the last epoch; returns the run's summary.

        Raises Stopped after a signal (the resumable checkpoint is written), NonFiniteLoss when a loss diverges.
        """
        try:
            if self.store.resume:
                ckpt, self.resume_checkpoint = self.resume_checkpoint, None
                self.progress.restore(ckpt, self.stateful_parts, self.optimizers.main, self.runtime)
                if self.progress.init is None and self.method.has_init_stage:
                    self.method.set_stage("main")
                if self.teacher_note:  # made anew from the teacher as it is now, after everything was loaded
                    self.teacher_note = self.install_teacher(self.method)
                if self.progress.init is None and self.progress.main.next_start()[0] > self.settings.epochs:
                    return self.finished_already()
            self.store.open(self.config)  # only now: a command refused while setting up leaves no folder behind
            if self.store.resume:
                self.log(f"resuming {self.run_dir} at {self.progress.where()}")
            kept = "; freed host memory kept for reuse" if self.runtime.host_memory_kept else ""
            self.log(f"global batch {self.settings.batch_size} = {self.runtime.world_size} x {self.batch}{kept}")
            if self.teacher_note:
                self.log(self.teacher_note)
            return self._train()
        finally:
            self.store.close()

    def _train(self):
        self.log.open_tensorboard(self.run_dir, self.store.advice)
        stop, started = StopRequest().install(), time.time()
        try:
            if self.progress.init is not None:
                self.run_init_stage(stop)
            for epoch in self.log.epochs(self.progress.main.next_start()[0], self.settings.epochs):
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
            self.log.close()
        return self.finish(time.time() - started)

    def run_stage_epoch(self, stage, epoch, stage_epoch, optimizer, scaler, stop):
        """Train one epoch of `stage` from its saved position; on a signal save where it stands and re-raise."""
        position = self.progress.init if stage == "init" else self.progress.main
        skip = position.step if position.epoch == epoch else 0
        self.train_loader.sampler.set_epoch(stage_epoch, skip * self.batch)
        position.epoch, position.step = epoch, skip
        try:
            stats = train_one_epoch(self.wrapper.for_stage(stage), self.train_loader, optimizer, self.runtime,
                                    epoch, scaler=scaler, start_step=skip, print_freq=self.settings.print_freq,
                                    stop=stop, progress=self.bars, log=self.log)
        except Interrupted as interrupt:
            position.step = interrupt.steps_done
            self.save_last()
            raise
        position.step = 0
        return stats

    def run_init_stage(self, stop):
        """The pre-training stage of AB/FT/FSP (RepDistiller's `init`), resumable mid-epoch like the main stage."""
        self.method.set_stage("init")
        for epoch in range(self.progress.init.next_start()[0], self.settings.init_epochs + 1):
            stats = self.run_stage_epoch("init", epoch, INIT_STAGE_EPOCH_OFFSET + epoch,  # its own seeded order
                                         self.optimizers.init, self.optimizers.init_scaler, stop)
            self.log(f"init epoch {epoch}/{self.settings.init_epochs} loss {stats.get('loss/total', 0):.4f}")
            self.save_last()
        self.method.set_stage("main")
        self.progress.init = None
        self.save_last()

    def run_epoch(self, epoch, stop):
        """One epoch: schedules, training, validation, logs and checkpoints."""
        s, optimizer = self.settings, self.optimizers.main
        lr = learning_rate(epoch, s.learning_rate, s.epochs, s.lr_decay, s.lr_decay_epochs, s.lr_decay_rate,
                           s.warmup_epochs)
        set_learning_rate(optimizer, lr)
        self.method.set_epoch(epoch)
        tic = time.time()
        train = self.run_stage_epoch("main", epoch, epoch, optimizer, self.optimizers.scaler, stop)
        seconds = time.time() - tic
        sync_buffers(self.method, self.runtime)
        val = validate(self.student, self.val_loader, self.runtime)
        self.epoch_seconds.append(time.time() - tic)
        p = self.progress
        is_best = val["acc1"] > p.best_acc or not os.path.isfile(self.store.best_path)
        p.best_acc = max(p.best_acc, val["acc1"])
        images = len(self.train_loader.sampler) * self.runtime.world_size
        row = {"epoch": epoch, "lr": lr, **train, **self.method.logged_scalars(), "test_acc": val["acc1"],
               "test_acc_top5": val["acc5"], "test_loss": val["loss"], "images_per_s": images / max(seconds, 1e-9)}
        p.history.append(row | {"train_s": seconds})
        eta = (s.epochs - epoch) * sum(self.epoch_seconds) / len(self.epoch_seconds)
        self.log.epoch(row, s.epochs, train, p.best_acc, seconds, eta)
        best_name = os.path.basename(self.store.best_path) if is_best else None
        for name, payload in epoch_checkpoints(epoch, self.student, self.method, optimizer, self.config,
                                               accuracy=val["acc1"], best_acc=p.best_acc, best_name=best_name,
                                               periodic=epoch % s.save_freq == 0).items():
            self.store.save(name, payload)
        self.save_last(val["acc1"])

    def finish(self, seconds):
        """Summary line, and one JSON line appended to <save_root>/results.jsonl."""
        summary = self.summary(seconds)
        self.log(f"summary: {self.store.name} best acc@1 {self.progress.best_acc:.2f} last acc@1 "
                 f"{summary['last_acc']:.2f} ({self.run_dir})")
        self.store.append_result(summary)
        self.leave_process_group_cleanly()
        return summary

    def leave_process_group_cleanly(self):
        """After a normal end: the ranks meet (none leaves while a peer still talks to it) and the DDP wrapper, which
        holds the process group, is dropped, so cleanup() destroys an unused group (gloo may abort otherwise)."""
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
        self.log(f"{self.run_dir} already finished its {self.settings.epochs} epochs (best acc@1 "
                 f"{self.progress.best_acc:.2f}); nothing to resume{note}")
        self.leave_process_group_cleanly()
        return summary

    def summary(self, seconds):
        """The run's results as plain data (best and last accuracy, record, times, config)."""
        p = self.progress
        return run_summary(self.run_dir, self.record, p.history, p.best_acc, self.settings.epochs, seconds,
                           time_totals(p.history), self.config)
