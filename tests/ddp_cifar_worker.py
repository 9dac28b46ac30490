"""torchrun worker for the DDP tests: runs train_cifar_student, optionally stops after STOP_AFTER steps (as on a
signal), and dumps this rank's final state and the DDP settings each stage was wrapped with."""
import os
import signal
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import train_cifar_student  # noqa: E402
from helper.runtime import distributed  # noqa: E402
from helper.training import signals, trainer  # noqa: E402

dump_dir = os.environ["DUMP_DIR"]
wrapped = []
for_stage = distributed.StageWrapper.for_stage


def recording_for_stage(self, stage):
    module = for_stage(self, stage)
    if not wrapped or wrapped[-1][0] != stage:
        wrapped.append((stage, bool(getattr(module, "find_unused_parameters", False))))
    return module


distributed.StageWrapper.for_stage = recording_for_stage

if os.environ.get("STOP_AFTER"):
    limit, count = int(os.environ["STOP_AFTER"]), {"n": 0}

    def should_stop(self, step, runtime, every=20):
        count["n"] += 1
        if count["n"] == limit:
            self.signum = signal.SIGTERM
        return self.signum is not None

    signals.StopRequest.should_stop = should_stop

finish = trainer.Trainer.finish


def finish_and_dump(self, seconds):
    torch.save({"model": self.student.state_dict(), "method": self.method.method_state_dict(),
                "optimizer": self.optimizers.main.state_dict()["state"], "wrapped": wrapped,
                "rng": torch.get_rng_state(),
                "batch": self.batch}, os.path.join(dump_dir, f"rank{self.runtime.rank}.pth"))
    return finish(self, seconds)


trainer.Trainer.finish = finish_and_dump
train_cifar_student.main(sys.argv[1:])
