"""The run driver shared by the three training scripts: run folder, resume, epochs, checkpoints, logs, results."""
import argparse
import inspect
import json
import os
import subprocess
import sys
import time

import torch
from torch.nn.parallel import DistributedDataParallel

from .checkpoint import load_checkpoint, save_atomic
from .data import eval_loader, train_loader, worker_count
from .device_data import device_loader_for
from .engine import Interrupted, train_one_epoch, validate
from .errors import UsageError
from .runtime import rng_state, set_rng_state
from .schedule import learning_rate, set_learning_rate
from .signals import StopRequest

INIT_STAGE_EPOCH_OFFSET = 1_000_000

# Options that may change between an interrupted run and its resumption without changing what is learned.
# The teacher file may move (its architecture, `model_t`, is still compared).
OPERATIONAL_OPTIONS = {"resume", "num_workers", "print_freq", "device", "data_root", "download", "progress",
                       "save_root", "deterministic", "save_freq", "compile", "fused_sgd", "channels_last",
                       "official_num_workers", "path_t"}


# The loss-weight flags and the names Distiller.weights gives them.
WEIGHT_OPTIONS = {"gamma": "gamma", "alpha": "alpha", "beta": "beta", "ceta": "logit_scale"}


def plain_config(opt):
    """The options as JSON-compatible plain data."""
    return {k: (v if isinstance(v, (int, float, str, bool, type(None))) else
                list(v) if isinstance(v, (list, tuple)) else str(v)) for k, v in sorted(vars(opt).items())}


def config_differences(saved, current):
    """Names of the options that differ between a saved run and this command line (operational ones ignored)."""
    keys = (set(saved) | set(current)) - OPERATIONAL_OPTIONS
    return sorted(k for k in keys if saved.get(k) != current.get(k))


def git_commit():
    """The project's current git commit, or None outside a checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=os.path.dirname(os.path.abspath(__file__)),
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def prepare_run_dir(run_dir, name, resume):
    """Check, before anything is loaded, that the run folder can take this run; returns the last-file path.

    Nothing is created here (the Trainer makes the folder), so a command refused later leaves no empty folder.
    """
    last = os.path.join(run_dir, f"{name}_last.pth")
    if resume and not os.path.isfile(last):
        raise UsageError(f"--resume: {last} does not exist; start the run without --resume")
    if not resume and os.path.isfile(last):
        raise UsageError(f"{run_dir} already holds a run; add --resume to continue it, or pick another --trial")
    existing = os.path.abspath(run_dir)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK):
        raise UsageError(f"cannot create the run folder {run_dir} ({existing} is not a writable folder); choose a "
                         "writable --save_root")
    return last


def make_run_dir(run_dir):
    """Create the run folder (checked by prepare_run_dir), with a one-line error if that still fails."""
    try:
        os.makedirs(run_dir, exist_ok=True)
    except OSError as err:
        raise UsageError(f"cannot create the run folder {run_dir} ({err.strerror}); choose a writable --save_root")


class Trainer:
    """Drives one run: `method` wraps `student`; checkpoints go to `run_dir` as `<name>_{best,last}.pth`."""

    def __init__(self, method, student, opt, runtime, *, run_dir, name, train_set, val_set, record=None):
        self.method, self.student, self.opt, self.runtime = method, student, opt, runtime
        self.run_dir, self.name, self.train_set, self.val_set = run_dir, name, train_set, val_set
        self.record = record or {}
        # the process count is part of the run: it fixes the data shards and the global batch
        self.config = {**plain_config(opt), "world_size": runtime.world_size}
        self.last_path = os.path.join(run_dir, f"{name}_last.pth")
        self.best_acc, self.start_epoch, self.start_step = 0.0, 1, 0
        self.init_done = not (getattr(method, "has_init_stage", False) and getattr(opt, "init_epochs", 0) > 0)
        self.history = []
        # read and checked before anything costly runs (the caller may validate the teacher next)
        self.resume_checkpoint = self.check_resumable() if opt.resume else None

        runtime.to_device(method)
        if getattr(opt, "compile", False):
            compile_networks(student, getattr(method, "teacher", None))
        params = [p for p in method.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(params, lr=opt.learning_rate, momentum=opt.momentum,
                                         weight_decay=opt.weight_decay, **_sgd_speed_options(runtime, opt))
        self.scaler = runtime.grad_scaler()
        if not self.init_done:  # DDP registers the parameters trainable at wrap time: those of the init stage
            method.set_stage("init")
        self.model = method
        if runtime.distributed:
            if getattr(opt, "sync_bn", False):
                torch.nn.SyncBatchNorm.convert_sync_batchnorm(student)  # converts in place below the root
            # Buffers (BN statistics, CRD memories) are synchronised from rank 0 once per epoch, before
            # validation and checkpoints, instead of on every forward (a CRD memory is ~50 MB).
            self.sync_buffers(everything=True)  # every rank starts from rank 0's buffers (e.g. CRD's random memories)
            self.model = DistributedDataParallel(
                method, device_ids=[runtime.device.index] if runtime.device.type == "cuda" else None,
                find_unused_parameters=not self.init_done, **_no_per_step_buffer_sync())
        self.train_loader = make_train_loader(train_set, opt, runtime)
        workers = worker_count(opt.num_workers, getattr(opt, "official_num_workers", 8), runtime)
        self.val_loader = eval_loader(val_set, opt.batch_size, runtime, workers // 2)
        self.writer = None
        self.progress = sys.stderr.isatty() if opt.progress is None else opt.progress

    # ---------------------------------------------------------------- checkpoints
    def state(self, epoch, step, accuracy):
        """Everything needed to continue the run, as plain data."""
        return {"epoch": epoch, "step": step, "model": self.student.state_dict(),
                "method": self.method.method_state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler else None, "accuracy": float(accuracy),
                "best_acc": float(self.best_acc), "rng": rng_state(), "config": self.config,
                "history": self.history, "init_done": self.init_done}

    def save(self, path, payload):
        """Rank 0 writes `payload` atomically."""
        if self.runtime.is_main:
            save_atomic(payload, path)

    def check_resumable(self):
        """The run's last checkpoint, refused when this command line changes what the run learns."""
        ckpt = load_checkpoint(self.last_path)
        saved = self.resolved_weights(ckpt.get("config", {}))
        diffs = config_differences(saved, self.config)
        if diffs:
            shown = ", ".join(f"{k} (saved {saved.get(k)!r}, now {self.config.get(k)!r})" for k in diffs)
            raise UsageError(f"--resume with a changed configuration: {shown}; rerun with the saved options, "
                             "or start a new run with another --trial")
        return ckpt

    def resolved_weights(self, saved):
        """`saved` with its unset loss weights replaced by the method's defaults.

        Runs started before the resolved weights went into the config saved None for every weight not typed.
        """
        weights = getattr(type(self.method), "weights", None)
        unset = [k for k in WEIGHT_OPTIONS if k in saved and saved[k] is None]
        if weights is None or not unset:
            return saved
        resolved = weights(argparse.Namespace(**saved))
        return {**saved, **{k: resolved[WEIGHT_OPTIONS[k]] for k in unset}}

    def resume(self):
        """Load the run's last checkpoint (read and checked when the trainer was built)."""
        ckpt, self.resume_checkpoint = self.resume_checkpoint, None
        self.student.load_state_dict(ckpt["model"])
        self.method.load_method_state_dict(ckpt["method"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        match_parameter_layouts(self.optimizer)
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.best_acc, self.history = ckpt["best_acc"], list(ckpt.get("history", []))
        self.init_done = ckpt.get("init_done", True)
        if self.init_done and hasattr(self.method, "set_stage"):
            self.method.set_stage("main")
        set_rng_state(ckpt["rng"])
        epoch, step = ckpt["epoch"], ckpt["step"]
        self.start_epoch, self.start_step = (epoch, step) if step else (epoch + 1, 0)

    # ---------------------------------------------------------------- the run
    def log(self, message):
        """Print on rank 0 (through tqdm while progress bars are shown)."""
        if self.runtime.is_main:
            if self.progress:
                from tqdm import tqdm
                tqdm.write(message)
            else:
                print(message, flush=True)

    def fit(self):
        """Train from the start (or the resumed position) to `--epochs`; returns the final summary dict."""
        opt, runtime = self.opt, self.runtime
        if opt.resume:
            self.resume()
            if self.init_done and self.start_epoch > opt.epochs:
                self.log(f"{self.run_dir} already finished its {opt.epochs} epochs (best acc@1 {self.best_acc:.2f}); "
                         "nothing to resume")
                return self.summary(0.0)
            self.log(f"resuming {self.run_dir} at epoch {self.start_epoch}, step {self.start_step}")
        elif runtime.is_main:
            make_run_dir(self.run_dir)  # only now: a command refused while setting up leaves no folder behind
            with open(os.path.join(self.run_dir, "config.json"), "w") as handle:
                json.dump(self.config, handle, indent=2)
        if runtime.is_main:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(os.path.join(self.run_dir, "tensorboard"))
        stop = StopRequest().install()
        started = time.time()
        try:
            if not self.init_done:
                self.run_init_stage(stop)
            epochs = range(self.start_epoch, opt.epochs + 1)
            if self.progress and runtime.is_main:
                from tqdm import tqdm
                epochs = tqdm(epochs, desc="epochs", initial=self.start_epoch - 1, total=opt.epochs)
            for epoch in epochs:
                self.run_epoch(epoch, stop)
        except Interrupted as interrupt:
            return self.interrupted(interrupt, stop)
        finally:
            stop.uninstall()
            if self.writer is not None:
                self.writer.close()
        return self.finish(time.time() - started)

    def run_init_stage(self, stop):
        """The pre-training stage of AB/FT/FSP (RepDistiller's `init`); an interruption restarts it on resume."""
        opt = self.opt
        self.method.set_stage("init")
        optimizer = torch.optim.SGD(self.method.init_stage_parameters(), lr=self.method.init_learning_rate(opt),
                                    momentum=opt.momentum, weight_decay=opt.weight_decay)
        scaler = self.runtime.grad_scaler()  # its own: the init stage's loss has another scale
        for epoch in range(1, opt.init_epochs + 1):
            stage_epoch = INIT_STAGE_EPOCH_OFFSET + epoch  # a separate, still seeded, data order
            self.train_loader.sampler.set_epoch(stage_epoch)
            try:
                stats = train_one_epoch(self.model, self.train_loader, optimizer, self.runtime, epoch,
                                        scaler=scaler, print_freq=opt.print_freq, stop=stop,
                                        progress=self.progress, log=self.log)
            except Interrupted:
                self.save(self.last_path, self.state(0, 0, 0.0))
                raise
            self.log(f"init epoch {epoch}/{opt.init_epochs} loss {stats.get('loss/total', 0):.4f}")
        self.method.set_stage("main")
        self.init_done = True
        self.save(self.last_path, self.state(0, 0, 0.0))

    def run_epoch(self, epoch, stop):
        """One epoch: schedules, training, validation, logs and checkpoints."""
        opt = self.opt
        skip = self.start_step if epoch == self.start_epoch else 0
        lr = learning_rate(epoch, opt.learning_rate, opt.epochs, opt.lr_decay, opt.lr_decay_epochs,
                           opt.lr_decay_rate)
        set_learning_rate(self.optimizer, lr)
        self.method.set_epoch(epoch)
        self.train_loader.sampler.set_epoch(epoch, skip * opt.batch_size)
        tic = time.time()
        try:
            train = train_one_epoch(self.model, self.train_loader, self.optimizer, self.runtime, epoch,
                                    scaler=self.scaler, start_step=skip, print_freq=opt.print_freq, stop=stop,
                                    progress=self.progress, log=self.log)
        except Interrupted as interrupt:
            self.save(self.last_path, self.state(epoch, interrupt.steps_done, 0.0))
            raise
        seconds = time.time() - tic
        self.sync_buffers()
        val = validate(self.student, self.val_loader, self.runtime)
        best_path = os.path.join(self.run_dir, f"{self.name}_best.pth")
        is_best = val["acc1"] > self.best_acc or not os.path.isfile(best_path)
        self.best_acc = max(self.best_acc, val["acc1"])
        images = (len(self.train_loader.sampler)) * self.runtime.world_size
        row = {"epoch": epoch, "lr": lr, **train, "test_acc": val["acc1"], "test_acc_top5": val["acc5"],
               "test_loss": val["loss"], "images_per_s": images / max(seconds, 1e-9)}
        self.history.append({k: row[k] for k in ("epoch", "test_acc", "test_acc_top5")} | {"train_s": seconds})
        self.log(f"epoch {epoch}/{opt.epochs} lr {lr:.5g} train loss {train.get('loss/total', 0):.4f} "
                 f"acc {train.get('train_acc1', 0):.2f} | test acc@1 {val['acc1']:.2f} acc@5 {val['acc5']:.2f} "
                 f"loss {val['loss']:.4f} | best {self.best_acc:.2f} | {row['images_per_s']:.0f} img/s")
        if self.writer is not None:
            for key, value in row.items():
                if key != "epoch":
                    self.writer.add_scalar(key, value, epoch)
        if is_best:
            self.save(best_path,
                      {"epoch": epoch, "model": self.student.state_dict(), "best_acc": float(self.best_acc),
                       "accuracy": float(val["acc1"]), "optimizer": self.optimizer.state_dict(),
                       "config": self.config})  # RepDistiller's best-file keys, plus our options
        if epoch % opt.save_freq == 0:
            self.save(os.path.join(self.run_dir, f"ckpt_epoch_{epoch}.pth"),
                      {"epoch": epoch, "model": self.student.state_dict(), "accuracy": float(val["acc1"]),
                       "optimizer": self.optimizer.state_dict(), "method": self.method.method_state_dict(),
                       "config": self.config})
        self.save(self.last_path, self.state(epoch, 0, val["acc1"]))
        self.last_acc = val

    def sync_buffers(self, everything=False):
        """Give every rank rank 0's buffers (BN statistics), so validation and the saved checkpoint agree.

        Buffers a module declares in `synchronised_buffers` (CRD's memories) are kept equal by the module itself,
        once they start equal (`everything=True`).
        """
        if self.runtime.distributed:
            for module in self.method.modules():
                own = () if everything else getattr(module, "synchronised_buffers", ())
                for name, buffer in module.named_buffers(recurse=False):
                    if name not in own:
                        torch.distributed.broadcast(buffer, 0)

    def interrupted(self, interrupt, stop):
        """Report how to resume after a signal; the resumable checkpoint is already written."""
        self.log(f"stopped by signal {stop.signum}; a resumable checkpoint is in {self.last_path}; continue with "
                 "the same command plus --resume")
        sys.exit(128 + (stop.signum or 15))

    def finish(self, seconds):
        """Summary line, and one JSON line appended to <save_root>/results.jsonl."""
        summary = self.summary(seconds)
        self.log(f"summary: {self.name} best acc@1 {self.best_acc:.2f} last acc@1 {summary['last_acc']:.2f} "
                 f"({self.run_dir})")
        if self.runtime.is_main:
            os.makedirs(self.opt.save_root, exist_ok=True)
            with open(os.path.join(self.opt.save_root, "results.jsonl"), "a") as handle:
                handle.write(json.dumps(summary) + "\n")
        return summary

    def summary(self, seconds):
        """The run's results as plain data (best and last accuracy, record, config)."""
        last = self.history[-1] if self.history else {"test_acc": 0.0, "test_acc_top5": 0.0}
        best5 = max((h["test_acc_top5"] for h in self.history if h["test_acc"] == self.best_acc), default=0.0)
        summary = {"run": self.run_dir, **self.record, "best_acc": self.best_acc, "best_acc_top5": best5,
                   "last_acc": last["test_acc"], "last_acc_top5": last["test_acc_top5"],
                   "epochs": self.opt.epochs, "wall_time_s": round(seconds, 1), "commit": git_commit(),
                   "config": self.config}
        return summary


def make_train_loader(train_set, opt, runtime):
    """The CPU DataLoader, or with --gpu_data the device-resident loader (CIFAR and Fashion-MNIST)."""
    if getattr(opt, "gpu_data", False):
        try:
            return device_loader_for(train_set, opt.batch_size, opt.seed, runtime)
        except ValueError as err:
            raise UsageError(f"--gpu_data: {err}; drop --gpu_data") from None
    workers = worker_count(opt.num_workers, getattr(opt, "official_num_workers", 8), runtime)
    return train_loader(train_set, opt.batch_size, opt.seed, runtime, workers)


def _no_per_step_buffer_sync():
    """DDP's option for not broadcasting buffers on every forward (renamed in recent PyTorch)."""
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}


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
    """Fused SGD on CUDA when asked for (--fused_sgd); foreach is PyTorch's default elsewhere."""
    if getattr(opt, "fused_sgd", False) and runtime.device.type == "cuda":
        return {"fused": True}
    return {}
