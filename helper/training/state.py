"""A run in progress as a checkpoint holds it: the stages' positions, best accuracy, history, every stateful part."""
from helper.runs.checkpoint import plain_number
from helper.runtime.distributed import gather_rng_states, restore_rng_state
from helper.training.optim import load_keeping_kernels, match_parameter_layouts


class Stage:
    """Where a stage stands: the last epoch begun and the steps of it done (0: the epoch is complete)."""

    def __init__(self, epoch=0, step=0):
        self.epoch, self.step = epoch, step

    def next_start(self):
        """(first epoch to run, steps of it to skip)."""
        return (self.epoch, self.step) if self.step else (self.epoch + 1, 0)


class Progress:
    """The main stage, the init stage (None: none left to run), the best accuracy and the per-epoch history."""

    def __init__(self, two_stage):
        self.two_stage = two_stage
        self.main, self.init = Stage(), (Stage() if two_stage else None)
        self.best_acc, self.history = 0.0, []

    def where(self):
        """Where the run continues, in words: 'init epoch N' or 'epoch E, step S'."""
        if self.init is not None:
            return f"init epoch {self.init.next_start()[0]}"
        return "epoch {}, step {}".format(*self.main.next_start())

    def payload(self, parts, runtime, config, accuracy=0.0):
        """Everything needed to continue the run, as plain data (a collective under DDP: all ranks call it).

        `parts`: the stateful parts by checkpoint key (objects with state_dict, or None).
        """
        payload = {key: (part.state_dict() if part is not None else None) for key, part in parts.items()}
        rngs = gather_rng_states(runtime)
        payload.update(epoch=self.main.epoch, step=self.main.step, accuracy=float(accuracy),
                       best_acc=float(self.best_acc), rng=rngs[0], rng_per_rank=rngs, config=config,
                       history=self.history, init_done=self.init is None)
        if self.init is not None:
            payload.update(init_epoch=self.init.epoch, init_step=self.init.step)
        return payload

    def restore(self, ckpt, parts_of, optimizer, runtime):
        """Restore what `payload` returned (and checkpoints of earlier versions, which lack the newer keys).

        `parts_of(progress)` gives the stateful parts once the init stage's presence is known.
        """
        if ckpt.get("init_done", True):
            self.init = None
        elif "init_epoch" in ckpt:
            self.init = Stage(ckpt["init_epoch"], ckpt["init_step"])
        else:  # files of earlier versions: the interrupted init stage restarts
            self.init = Stage() if self.two_stage else None
        for key, part in parts_of(self).items():
            if part is not None and ckpt.get(key):
                load_keeping_kernels(part, ckpt[key])  # a loaded optimizer keeps this command's kernels
        match_parameter_layouts(optimizer)
        self.best_acc, self.history = plain_number(ckpt["best_acc"]), list(ckpt.get("history", []))
        restore_rng_state(ckpt, runtime)
        self.main = Stage(ckpt["epoch"], ckpt["step"])


def epoch_checkpoints(epoch, student, method, optimizer, config, *, accuracy, best_acc, best_name, periodic):
    """{file name: payload} of the epoch's extra checkpoints: `best_name` (RepDistiller's best-file keys plus our
    options) when given, and ckpt_epoch_E.pth (with the method's parts) when `periodic`."""
    files, weights = {}, {"epoch": epoch, "model": student.state_dict()}
    if best_name:
        files[best_name] = {**weights, "best_acc": float(best_acc), "accuracy": float(accuracy),
                            "optimizer": optimizer.state_dict(), "config": config}
    if periodic:
        files[f"ckpt_epoch_{epoch}.pth"] = {**weights, "accuracy": float(accuracy), "optimizer": optimizer.state_dict(),
                                            "method": method.method_state_dict(), "config": config}
    return files


class MethodState:
    """The method's own parts (not student, not teacher) as a stateful part of the checkpoint."""

    def __init__(self, method):
        self.method = method

    def state_dict(self):
        return self.method.method_state_dict()

    def load_state_dict(self, state):
        self.method.load_method_state_dict(state)
