"""The epoch driver shared by the three training scripts: stages, schedules, validation, checkpoints, logs.

The run folder and its policies live in `run_store`, DDP in `distributed`, the step loop in `engine`.
"""
import gc
import os
import sys
import time

import torch

from .checkpoint import plain_number
from .data import eval_loader, train_loader, worker_count
from .device_data import device_loader_for
from .distributed import (StageWrapper, broadcast_from_rank0, check_sync_bn, gather_rng_states, per_process_batch,
                          restore_rng_state, sync_buffers)
from .engine import Interrupted, NonFiniteLoss, train_one_epoch, validate
from .event_log import EventLog
from .errors import UsageError
from .launch import parse_gids
from .run_store import RunStore, git_commit, plain_config
from .runtime import ranks_done
from .schedule import learning_rate, set_learning_rate
from .signals import StopRequest
from .timing import PHASES, format_duration

INIT_STAGE_EPOCH_OFFSET = 1_000_000


def run_config(opt, world_size):
    """The run's config as saved in config.json and every checkpoint: the options plus what they imply."""
    config = {**plain_config(opt), "world_size": world_size,
              "batch_size_per_process": opt.batch_size // world_size}  # fixes the data shards with the world size
    config["sync_bn"] = bool(getattr(opt, "sync_bn", False)) and world_size > 1  # a no-op in one process
    return config


def prepare_run_dir(run_dir, name, opt):
    """The run's store, checked before anything is loaded (the folder is locked when it exists; nothing is created)."""
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1 and getattr(opt, "gids", None):  # the --gids parent: its command runs in len(ids) processes
        world = len(parse_gids(opt.gids))
    store = RunStore(run_dir, name, resume=opt.resume, is_main=rank == 0, save_root=opt.save_root)
    per_process_batch(opt.batch_size, world)  # refused before anything loads
    store.check(run_config(opt, world))
    if store.started_over:  # killed before its first checkpoint (or never started): nothing to lose, start it
        opt.resume = False
        if rank == 0:
            print(f"--resume: {run_dir} has no checkpoint yet; starting the run from its beginning", flush=True)
    return store


class Stage:
    """Where a stage stands: the last epoch begun and the steps of it done (0: the epoch is complete)."""

    def __init__(self, epoch=0, step=0):
        self.epoch, self.step = epoch, step

    def next_start(self):
        """(first epoch to run, steps of it to skip)."""
        return (self.epoch, self.step) if self.step else (self.epoch + 1, 0)


class Trainer:
    """Drives one run: `method` wraps `student`; checkpoints go to `run_dir` as `<name>_{best,last}.pth`."""

    def __init__(self, method, student, opt, runtime, *, run_dir, name, train_set, val_set, record=None, store=None):
        self.method, self.student, self.opt, self.runtime = method, student, opt, runtime
        self.run_dir, self.name, self.train_set, self.val_set = run_dir, name, train_set, val_set
        self.record = record or {}
        self.store = store or RunStore(run_dir, name, resume=opt.resume, is_main=runtime.is_main,
                                       save_root=opt.save_root)
        self.batch = per_process_batch(opt.batch_size, runtime.world_size)
        sync_bn = check_sync_bn(getattr(opt, "sync_bn", False), runtime)
        self.config = run_config(opt, runtime.world_size)
        self.last_path = self.store.last_path
        self.best_acc, self.history = 0.0, []
        self.epoch_seconds = []  # wall time of each epoch this process ran (training + validation), for the ETA
        self.main = Stage()
        self.two_stage = getattr(method, "has_init_stage", False) and getattr(opt, "init_epochs", 0) > 0
        self.init = Stage() if self.two_stage else None  # None: no init stage left to run
        # read and checked before anything costly runs (the caller may validate the teacher next)
        self.resume_checkpoint = self.store.read_resumable(self.config, type(method)) if opt.resume else None

        runtime.to_device(method)
        self.teacher_note = self.install_inference_teacher(train_set)
        if getattr(opt, "compile", False):  # an inference teacher compiles itself
            compile_networks(student, None if self.teacher_note else getattr(method, "teacher", None))
        params = [p for p in method.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(params, lr=opt.learning_rate, momentum=opt.momentum,
                                         weight_decay=opt.weight_decay, **_sgd_speed_options(runtime, opt))
        self.scaler = runtime.grad_scaler()
        self.init_optimizer = self.init_scaler = None
        if self.two_stage:
            self.init_optimizer = torch.optim.SGD(method.init_stage_parameters(), lr=method.init_learning_rate(opt),
                                                  momentum=opt.momentum, weight_decay=opt.weight_decay,
                                                  **_sgd_speed_options(runtime, opt))
            self.init_scaler = runtime.grad_scaler()  # its own: the init stage's loss has another scale
        self.wrapper = StageWrapper(method, runtime, sync_bn)
        self.train_loader = make_train_loader(train_set, opt, runtime, self.batch)
        workers = worker_count(opt.num_workers, getattr(opt, "official_num_workers", 8), runtime)
        self.val_loader = eval_loader(val_set, self.batch, runtime, workers // 2)
        self.writer = None
        self.progress = sys.stderr.isatty() if opt.progress is None else opt.progress

    def install_inference_teacher(self, train_set):
        """Serve the step's teacher forward from a BatchNorm-folded copy in its measured layout (not with
        --no_inference_teacher); returns what was installed, in words, or None. The teacher itself is unchanged."""
        if getattr(self.opt, "no_inference_teacher", False) or not hasattr(self.method, "install_inference_teacher"):
            return None
        image = train_set[0][0]
        # its own generator: building the copy (again on resume) must not move the run's RNG stream
        example = torch.randn(self.batch, *image.shape, generator=torch.Generator().manual_seed(0))
        example = example.to(self.runtime.device)
        # --deterministic: no timing-dependent layout choice (a resume must pick the same kernels); under DDP the
        # ranks' buffers are made equal by broadcasts, which leave the values the copy was made from unchanged
        layout = "contiguous" if getattr(self.opt, "deterministic", False) else "auto"
        runtime, compile = self.runtime, getattr(self.opt, "compile", False)

        def install(memory_format, compile=compile):
            return self.method.install_inference_teacher(example, compile=compile, autocast=runtime.autocast,
                                                         memory_format=memory_format)

        if layout == "auto" and runtime.distributed:
            # rank 0 measures (or reads its cache) and every rank takes its choice: one layout, one set of kernels.
            # Only the measurement precedes the broadcast; each rank compiles after it, all at the same time.
            measured = install(layout, compile=False) if runtime.rank == 0 else None
            layout = broadcast_from_rank0(measured.memory_format if measured else None, runtime)
            installed = measured if measured is not None and not compile else install(layout)
            if runtime.rank != 0:
                installed.notes.append("layout chosen by rank 0")
        else:
            installed = install(layout)
        return installed.summary()

    # ---------------------------------------------------------------- state
    def stateful_parts(self):
        """The parts whose state a checkpoint holds, by checkpoint key (objects with state_dict/load_state_dict)."""
        parts = {"model": self.student, "method": MethodState(self.method), "optimizer": self.optimizer,
                 "scaler": self.scaler}
        if self.init is not None:
            parts.update(init_optimizer=self.init_optimizer, init_scaler=self.init_scaler)
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
                chosen = command_line_options(part)  # a loaded optimizer keeps this command's kernels
                part.load_state_dict(ckpt[key])
                restore_options(part, chosen)
        match_parameter_layouts(self.optimizer)
        self.best_acc, self.history = plain_number(ckpt["best_acc"]), list(ckpt.get("history", []))
        if self.init is None and hasattr(self.method, "set_stage"):
            self.method.set_stage("main")
        restore_rng_state(ckpt, self.runtime)
        self.main = Stage(ckpt["epoch"], ckpt["step"])

    def save_last(self, accuracy=0.0):
        """The resumable checkpoint."""
        state = self.state(accuracy)
        self.store.save(os.path.basename(self.last_path), state)

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
        """Train from the start (or the resumed position) to `--epochs`; returns the final summary dict."""
        opt, runtime = self.opt, self.runtime
        try:
            if opt.resume:
                ckpt, self.resume_checkpoint = self.resume_checkpoint, None
                self.load_state(ckpt)
                if self.teacher_note:  # made anew from the teacher as it is now, after everything was loaded
                    self.teacher_note = self.install_inference_teacher(self.train_set)
                start, _ = self.main.next_start()
                if self.init is None and start > opt.epochs:
                    return self.finished_already()
            self.store.open(self.config)  # only now: a command refused while setting up leaves no folder behind
            if opt.resume:
                where = (f"init epoch {self.init.next_start()[0]}" if self.init is not None else
                         "epoch {}, step {}".format(*self.main.next_start()))
                self.log(f"resuming {self.run_dir} at {where}")
            kept = "; freed host memory kept for reuse" if runtime.host_memory_kept else ""
            self.log(f"global batch {opt.batch_size} = {runtime.world_size} x {self.batch}{kept}")
            if self.teacher_note:
                self.log(self.teacher_note)
            return self._train()
        finally:
            self.store.close()

    def _train(self):
        runtime = self.runtime
        if runtime.is_main:
            self.writer = EventLog(os.path.join(self.run_dir, "tensorboard"), self.store.advice)
        stop = StopRequest().install()
        started = time.time()
        try:
            if self.init is not None:
                self.run_init_stage(stop)
            start, _ = self.main.next_start()
            epochs = range(start, self.opt.epochs + 1)
            if self.progress and runtime.is_main:
                from tqdm import tqdm
                epochs = tqdm(epochs, desc="epochs", initial=start - 1, total=self.opt.epochs)
            for epoch in epochs:
                self.run_epoch(epoch, stop)
        except Interrupted:
            return self.interrupted(stop)
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
                                    epoch, scaler=scaler, start_step=skip, print_freq=self.opt.print_freq,
                                    stop=stop, progress=self.progress, log=self.log)
        except Interrupted as interrupt:
            position.step = interrupt.steps_done
            self.save_last()
            raise
        position.step = 0
        return stats

    def run_init_stage(self, stop):
        """The pre-training stage of AB/FT/FSP (RepDistiller's `init`), resumable mid-epoch like the main stage."""
        opt = self.opt
        self.method.set_stage("init")
        start, _ = self.init.next_start()
        for epoch in range(start, opt.init_epochs + 1):
            stats = self.run_stage_epoch("init", epoch, INIT_STAGE_EPOCH_OFFSET + epoch,  # its own seeded order
                                         self.init_optimizer, self.init_scaler, stop)
            self.log(f"init epoch {epoch}/{opt.init_epochs} loss {stats.get('loss/total', 0):.4f}")
            self.save_last()
        self.method.set_stage("main")
        self.init = None
        self.save_last()

    def run_epoch(self, epoch, stop):
        """One epoch: schedules, training, validation, logs and checkpoints."""
        opt = self.opt
        lr = learning_rate(epoch, opt.learning_rate, opt.epochs, opt.lr_decay, opt.lr_decay_epochs,
                           opt.lr_decay_rate)
        warmup = getattr(opt, "warmup_epochs", None)  # scripts/train_teacher.py: linear warm-up, epoch by epoch
        if warmup and epoch <= warmup:
            lr *= epoch / (warmup + 1)
        set_learning_rate(self.optimizer, lr)
        self.method.set_epoch(epoch)
        tic = time.time()
        train = self.run_stage_epoch("main", epoch, epoch, self.optimizer, self.scaler, stop)
        seconds = time.time() - tic
        sync_buffers(self.method, self.runtime)
        val = validate(self.student, self.val_loader, self.runtime)
        self.epoch_seconds.append(time.time() - tic)
        is_best = val["acc1"] > self.best_acc or not os.path.isfile(self.store.best_path)
        self.best_acc = max(self.best_acc, val["acc1"])
        images = len(self.train_loader.sampler) * self.runtime.world_size
        scalars = method_scalars(self.method)
        row = {"epoch": epoch, "lr": lr, **train, **scalars, "test_acc": val["acc1"], "test_acc_top5": val["acc5"],
               "test_loss": val["loss"], "images_per_s": images / max(seconds, 1e-9)}
        self.history.append(row | {"train_s": seconds})
        eta = (opt.epochs - epoch) * sum(self.epoch_seconds) / len(self.epoch_seconds)
        self.log(f"epoch {epoch}/{opt.epochs} lr {lr:.5g} train loss {train.get('loss/total', 0):.4f} "
                 f"acc {train.get('train_acc1', 0):.2f} | test acc@1 {val['acc1']:.2f} acc@5 {val['acc5']:.2f} "
                 f"loss {val['loss']:.4f} | best {self.best_acc:.2f} | {row['images_per_s']:.0f} img/s "
                 f"{time_split(train, seconds)} | ETA {format_duration(eta)}")
        if self.writer is not None:
            for key, value in row.items():
                if key != "epoch":
                    self.writer.add_scalar(key, value, epoch)
        if is_best:
            self.store.save(os.path.basename(self.store.best_path),
                            {"epoch": epoch, "model": self.student.state_dict(), "best_acc": float(self.best_acc),
                             "accuracy": float(val["acc1"]), "optimizer": self.optimizer.state_dict(),
                             "config": self.config})  # RepDistiller's best-file keys, plus our options
        if epoch % opt.save_freq == 0:
            self.store.save(f"ckpt_epoch_{epoch}.pth",
                            {"epoch": epoch, "model": self.student.state_dict(), "accuracy": float(val["acc1"]),
                             "optimizer": self.optimizer.state_dict(), "method": self.method.method_state_dict(),
                             "config": self.config})
        self.save_last(val["acc1"])

    def interrupted(self, stop):
        """Report on stderr how to resume after a signal; the resumable checkpoint is already written."""
        self.log(f"stopped by signal {stop.signum}; a resumable checkpoint is in {self.last_path}; continue with "
                 "the same command plus --resume", err=True)
        sys.exit(128 + (stop.signum or 15))

    def finish(self, seconds):
        """Summary line, and one JSON line appended to <save_root>/results.jsonl."""
        summary = self.summary(seconds)
        self.log(f"summary: {self.name} best acc@1 {self.best_acc:.2f} last acc@1 {summary['last_acc']:.2f} "
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
        # Killed (or stopped) between the final checkpoint and finish(), a run leaves no line: record it now. The
        # process's wall time is lost; its training seconds from the history are the closest measure left.
        line = summary | {"wall_time_s": summary["train_time_s"], "recorded_on_resume": True}
        added = self.store.append_result_once(line)
        note = (f"; its missing result line was added to {os.path.join(self.store.save_root, 'results.jsonl')}"
                if added else "")
        self.log(f"{self.run_dir} already finished its {self.opt.epochs} epochs (best acc@1 {self.best_acc:.2f}); "
                 f"nothing to resume{note}")
        self.leave_process_group_cleanly()
        return summary

    def summary(self, seconds):
        """The run's results as plain data (best and last accuracy, record, config)."""
        last = self.history[-1] if self.history else {"test_acc": 0.0, "test_acc_top5": 0.0}
        best5 = max((h["test_acc_top5"] for h in self.history if h["test_acc"] == self.best_acc), default=0.0)
        summary = {"run": self.run_dir, **self.record, "best_acc": self.best_acc, "best_acc_top5": best5,
                   "last_acc": last["test_acc"], "last_acc_top5": last["test_acc_top5"],
                   "epochs": self.opt.epochs, "wall_time_s": round(seconds, 1), **time_totals(self.history),
                   "commit": git_commit(), "config": self.config}
        return summary


class MethodState:
    """The method's own parts (not student, not teacher) as a stateful part of the checkpoint."""

    def __init__(self, method):
        self.method = method

    def state_dict(self):
        return self.method.method_state_dict()

    def load_state_dict(self, state):
        self.method.load_method_state_dict(state)


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


def method_scalars(method):
    """Per-epoch values a method reports (NORM's beta1 weight), for logs and the history."""
    return dict(method.logged_scalars()) if hasattr(method, "logged_scalars") else {}


def make_train_loader(train_set, opt, runtime, batch):
    """The CPU DataLoader, or with --gpu_data the device-resident loader (CIFAR and Fashion-MNIST); `batch` per process."""
    if getattr(opt, "gpu_data", False):
        try:
            return device_loader_for(train_set, batch, opt.seed, runtime)
        except ValueError as err:
            raise UsageError(f"--gpu_data: {err}; drop --gpu_data") from None
    workers = worker_count(opt.num_workers, getattr(opt, "official_num_workers", 8), runtime)
    return train_loader(train_set, batch, opt.seed, runtime, workers)


# Param-group options that choose how the step runs, not what it computes: they come from the command line (and the
# device), never from the checkpoint. Optimizer.load_state_dict copies every saved option; a run saved without fused
# SGD and resumed with --fused_sgd --amp fp16 would otherwise step unfused while the scaler hands it grad_scale.
OPERATIONAL_GROUP_OPTIONS = ("fused", "foreach", "capturable", "differentiable")


def command_line_options(part):
    """The operational options of each param group of an optimizer (`part`), or None for other stateful parts."""
    if not isinstance(part, torch.optim.Optimizer):
        return None
    return [{key: group[key] for key in OPERATIONAL_GROUP_OPTIONS if key in group} for group in part.param_groups]


def restore_options(part, chosen):
    """Put back what `command_line_options` read before a load_state_dict."""
    if chosen is None:
        return
    for group, options in zip(part.param_groups, chosen):
        group.update(options)


def match_parameter_layouts(optimizer):
    """Give every per-parameter state tensor (momentum) its parameter's memory layout, in place.

    A resume may switch --channels_last; the loaded buffers keep the saved strides, which fused SGD refuses.
    """
    for param, state in optimizer.state.items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and value.shape == param.shape and value.stride() != param.stride():
                state[key] = torch.empty_like(param).copy_(value)


def compile_networks(*networks):
    """torch.compile each network in place (its state-dict keys stay unchanged)."""
    for network in networks:
        if network is None:
            continue
        if not hasattr(network, "compile"):
            raise UsageError("--compile needs torch>=2.2 (nn.Module.compile); upgrade torch or drop --compile")
        network.compile()


def _sgd_speed_options(runtime, opt):
    """Fused SGD on CUDA when asked for (--fused_sgd) and always under fp16 there; foreach is PyTorch's default
    elsewhere. Under fp16 the unfused step makes GradScaler read found_inf on the host every step (a sync); the fused
    kernel takes the scale and found_inf as device tensors and skips an overflowed step itself."""
    fp16 = runtime.amp_dtype is torch.float16
    if (getattr(opt, "fused_sgd", False) or fp16) and runtime.device.type == "cuda":
        return {"fused": True}
    return {}
