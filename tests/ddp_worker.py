"""torchrun worker for the DDP test: trains with train_imagenet_student and dumps this rank's student state."""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import train_imagenet_student  # noqa: E402
from helper.training import trainer  # noqa: E402

finish = trainer.Trainer.finish


def finish_and_dump(self, seconds):
    torch.save({"model": self.student.state_dict(), "seed": self.config["seed"],
                "method": self.method.method_state_dict()},
               os.path.join(os.environ["DUMP_DIR"], f"rank{self.runtime.rank}.pth"))
    return finish(self, seconds)


trainer.Trainer.finish = finish_and_dump
train_imagenet_student.main(sys.argv[1:])
