"""What a run reports, on rank 0 only: log lines (through tqdm while progress bars are shown), stderr lines, and one
TensorBoard point per epoch and value."""
import os
import sys

from helper.training.event_log import EventLog
from helper.training.timing import format_duration, time_split


class RunLog:
    """`log(message, err=False)` prints on rank 0; `err` for what must reach stderr."""

    def __init__(self, runtime, progress):
        self.is_main, self.progress = runtime.is_main, progress
        self.writer = None

    def __call__(self, message, err=False):
        if not self.is_main:
            return
        if self.progress and not err:
            from tqdm import tqdm
            tqdm.write(message)
        else:
            print(message, file=sys.stderr if err else sys.stdout, flush=True)

    def open_tensorboard(self, run_dir, advice):
        """Start the run folder's TensorBoard events (rank 0); a failed write says `advice()` (what is on disk)."""
        if self.is_main:
            self.writer = EventLog(os.path.join(run_dir, "tensorboard"), advice)

    def close(self):
        if self.writer is not None:
            self.writer.close()

    def epochs(self, start, last):
        """The epochs start..last, under a tqdm bar while progress bars are shown (rank 0)."""
        epochs = range(start, last + 1)
        if self.progress and self.is_main:
            from tqdm import tqdm
            epochs = tqdm(epochs, desc="epochs", initial=start - 1, total=last)
        return epochs

    def epoch(self, row, epochs, train, best_acc, seconds, eta):
        """The epoch's line and its TensorBoard points; `row` is the epoch's history row."""
        epoch = row["epoch"]
        self(f"epoch {epoch}/{epochs} lr {row['lr']:.5g} train loss {train.get('loss/total', 0):.4f} "
             f"acc {train.get('train_acc1', 0):.2f} | test acc@1 {row['test_acc']:.2f} "
             f"acc@5 {row['test_acc_top5']:.2f} "
             f"loss {row['test_loss']:.4f} | best {best_acc:.2f} | {row['images_per_s']:.0f} img/s "
             f"{time_split(train, seconds)} | ETA {format_duration(eta)}")
        if self.writer is not None:
            for key, value in row.items():
                if key != "epoch":
                    self.writer.add_scalar(key, value, epoch)
