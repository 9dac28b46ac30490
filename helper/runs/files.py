"""Files the project writes, without torch: atomic replacement (temporary file, fsync, rename) and whole-line appends.

Kept free of torch so that light scripts (plots, summaries, the ledger's bookkeeping) can write safely without
importing it; helper.runs.checkpoint builds its torch.save writer on `_write_atomic`.
"""
import errno
import glob
import os
import tempfile

from helper.errors import CheckpointWriteError


LOCK_NAME = ".lock"  # a run folder's lock file (helper.runs.store.RunLock)


def is_run_folder(folder):
    """Whether `folder` belongs to a training run: its config.json beside the run's lock or a `<model>_last.pth`."""
    if not os.path.isfile(os.path.join(folder, "config.json")):
        return False
    return os.path.exists(os.path.join(folder, LOCK_NAME)) or bool(
        glob.glob(os.path.join(glob.escape(folder), "*_last.pth")))


def write_failure_reason(err):
    """Why a write failed, in a few words; a full disk is named as such (torch reports it as a RuntimeError)."""
    text = str(err)
    if getattr(err, "errno", None) == errno.ENOSPC or "No space left" in text or "errno 28" in text.lower():
        return "the disk is full (No space left on device)"
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return text.splitlines()[0] if text.strip() else type(err).__name__


def _write_atomic(path, write):
    """Call `write(handle)` on a temporary file beside `path`, fsync it, then rename it over `path`.

    On failure the temporary file is removed and `path` is left as it was; the error names the file and the reason.
    """
    directory = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.splitext(path)[1], dir=directory)
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; checkpoints get the usual permissions
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as err:  # disk full surfaces as OSError or as torch's RuntimeError; Ctrl-C too
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(err, (OSError, RuntimeError)):
            raise CheckpointWriteError(f"could not write {path}: {write_failure_reason(err)}") from err
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def write_bytes_atomic(data, path):
    """Write `data` (bytes) to `path` atomically, as save_atomic does for checkpoints."""
    _write_atomic(path, lambda handle: handle.write(data))


def write_text_atomic(text, path):
    """Write `text` to `path` atomically, as save_atomic does for checkpoints."""
    write_bytes_atomic(text.encode(), path)


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def append_whole_line(fd, data):
    """One write(2) of `data` (a line, as bytes) to an O_APPEND file; on failure the file is cut back to its size
    before, so a reader never sees half a line."""
    size = os.fstat(fd).st_size
    try:
        if os.write(fd, data) != len(data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    except OSError:
        os.ftruncate(fd, size)
        raise


def append_line(path, text):
    """Append `text` and a newline to `path` (created if missing) as one whole line; CheckpointWriteError on failure."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            append_whole_line(fd, (text + "\n").encode())
        finally:
            os.close(fd)
    except OSError as err:
        raise CheckpointWriteError(f"could not append to {path}: {write_failure_reason(err)}") from err
