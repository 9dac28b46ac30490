"""A run's TensorBoard scalars, whose write failures (a full disk) end the run with one line like any other write."""
import os
import threading

from helper.errors import CheckpointWriteError
from helper.runs.files import write_failure_reason


def _quiet_writer_thread(hook):
    """A threading.excepthook that leaves out TensorBoard's writer thread: its error is kept and re-raised by the
    next write or close in the main thread (where EventLog turns it into one line), so printing it is noise."""
    def excepthook(args):
        if type(args.thread).__name__ != "_AsyncWriterThread":
            hook(args)

    excepthook.quiets_tensorboard = True
    return excepthook


class EventLog:
    """TensorBoard's SummaryWriter on `folder`; an OSError from it (raised when it writes, or later from its writer
    thread) becomes a CheckpointWriteError naming the folder, the reason and `advice()` (what is on disk)."""

    def __init__(self, folder, advice):
        from torch.utils.tensorboard import SummaryWriter

        self.folder, self.advice = folder, advice
        if not getattr(threading.excepthook, "quiets_tensorboard", False):
            threading.excepthook = _quiet_writer_thread(threading.excepthook)
        self.writer = self._guarded(SummaryWriter, folder)

    def add_scalar(self, tag, value, step):
        """Log one scalar."""
        self._guarded(self.writer.add_scalar, tag, value, step)

    def close(self):
        """Flush and close the event file."""
        self._guarded(self.writer.close)

    def _guarded(self, call, *args):
        try:
            return call(*args)
        except OSError as err:
            raise CheckpointWriteError(f"could not write the TensorBoard log in {os.path.abspath(self.folder)}: "
                                       f"{write_failure_reason(err)}; {self.advice()}") from err
