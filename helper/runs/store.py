"""The run folder: its lock, the checks before anything loads, config.json, checkpoint writes (the resume policy is
helper.runs.config's, the results line helper.runs.results')."""
import errno
import fcntl
import glob
import json
import os

from helper.errors import CheckpointWriteError, UsageError
from helper.runs.checkpoint import load_checkpoint, save_atomic
from helper.runs.config import (config_differences, describe_differences, normalise_saved_config,
                                refuse_changed_configuration, saved_config)
from helper.runs.files import LOCK_NAME, write_failure_reason, write_text_atomic
from helper.runs.results import ResultsLedger

TEMP_PATTERN = ".tmp-*"  # what save_atomic and write_text_atomic leave behind when killed mid-write


_HELD_LOCKS = set()


def _close_inherited_locks():
    """In a forked child (a DataLoader worker): close the inherited lock descriptors.

    The lock belongs to the open file description, so the parent keeps it; without this, workers that outlive a
    killed parent would hold the run's lock for a few seconds more.
    """
    for fd in list(_HELD_LOCKS):
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD_LOCKS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_inherited_locks)


class RunLock:
    """An exclusive OS lock (flock) on `<run_dir>/.lock`, held for the run's life; the kernel drops it on any exit.

    The file is used through a raw descriptor: a buffered file object would retry its failed write when closed and
    raise again, so a full disk could not be turned into one line.
    """

    def __init__(self, run_dir):
        self.path = os.path.join(run_dir, LOCK_NAME)
        self.fd = None

    def acquire(self):
        """Take the lock, or a one-line UsageError: the process that holds it, or why the folder cannot be locked."""
        if self.fd is not None:
            return
        folder = os.path.dirname(self.path)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as err:
            raise UsageError(_unlockable_message(folder, self.path, err)) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = _read_holder(fd)
            os.close(fd)
            if err.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise UsageError(f"{folder} is in use by {holder}; wait for it to finish (or stop "
                                 "it), or pick another --trial") from None
            # ENOLCK, EINVAL, ...: a file system without flock (some network mounts)
            raise UsageError(f"cannot lock {self.path} ({write_failure_reason(err)}); the file system of "
                             f"{folder} does not support file locks: use a --save_root on a local disk") from None
        try:
            os.ftruncate(fd, 0)
            text = f"process {os.getpid()}\n".encode()
            if os.pwrite(fd, text, 0) != len(text):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError as err:
            os.close(fd)  # releases the lock: a refused command holds nothing
            raise UsageError(_unlockable_message(folder, self.path, err)) from None
        self.fd = fd
        _HELD_LOCKS.add(fd)

    def release(self):
        """Drop the lock (also done by the kernel when the process dies)."""
        if self.fd is not None:
            _HELD_LOCKS.discard(self.fd)
            os.close(self.fd)  # closing the descriptor releases the flock
            self.fd = None


def _read_holder(fd):
    """The holder a lock file names ("process 123"), or "another process" when it is empty or unreadable."""
    try:
        return os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
    except OSError:
        return "another process"


class RunStore:
    """One run folder: checks before anything loads, the lock, config.json, checkpoints and results.jsonl.

    Only the main process (rank 0) locks and writes; every rank reads and checks.
    """

    def __init__(self, run_dir, name, *, resume, is_main=True, save_root=None):
        self.run_dir, self.name, self.resume, self.is_main = run_dir, name, resume, is_main
        self.started_over = False  # --resume found no checkpoint and starts the run from its beginning
        self.results = ResultsLedger(save_root or os.path.dirname(os.path.dirname(run_dir)), run_dir, is_main)
        self.last_path = os.path.join(run_dir, f"{name}_last.pth")
        self.best_path = os.path.join(run_dir, f"{name}_best.pth")
        self.lock = RunLock(run_dir)

    # ------------------------------------------------------------------ before anything is loaded
    def check(self, config=None):
        """Refuse, before anything is loaded, a command this folder cannot take; creates nothing.

        An existing folder is locked at once, so a second process on it is refused before it loads anything.
        """
        if self.is_main and os.path.isdir(self.run_dir):
            self.lock.acquire()
            self.remove_stale_temporaries()
        try:
            self._check_folder(config)
        except BaseException:
            self.lock.release()  # a refused command holds nothing
            raise
        return self.last_path

    def _check_folder(self, config):
        if self.resume and not os.path.isfile(self.last_path):
            self._resume_without_checkpoint(config)
        if not self.resume and os.path.isfile(self.last_path):
            raise UsageError(self._occupied_message(config))
        existing = os.path.abspath(self.run_dir)
        while not os.path.exists(existing):
            existing = os.path.dirname(existing)
        if existing == os.path.abspath(self.run_dir) and not os.access(existing, os.W_OK):
            raise UsageError(f"the run folder {self.run_dir} is not writable; make it writable (chmod u+w), or "
                             "copy it to a writable --save_root and run there")
        if not os.path.isdir(existing) or not os.access(existing, os.W_OK):
            raise UsageError(f"cannot create the run folder {self.run_dir} ({existing} is not a writable folder); "
                             "choose a writable --save_root")

    def _resume_without_checkpoint(self, config):
        """--resume where no checkpoint was written yet: the run is started from its beginning (`self.resume` turns
        False) when nothing else can be meant, i.e. a run killed before its first checkpoint (its folder's config.json
        is this command's) or nothing of this command anywhere. A run of it beside this one with other options, or
        this folder's own other options, is refused: then --resume most likely has a mistyped option."""
        saved = saved_config(self.run_dir)
        if saved is not None and config:
            refuse_changed_configuration(saved, config)
        elif config and self._closest_sibling(config) is not None:
            raise UsageError(self._missing_run_message(config))
        self.resume = False
        self.started_over = True

    def _occupied_message(self, config):
        """Why a new run cannot start here; when the saved run has other options, which (--resume would refuse them)."""
        base = f"{self.run_dir} already holds a run"
        saved = saved_config(self.run_dir)
        diffs = config_differences(saved, config) if saved is not None and config else []
        if diffs:
            return (f"{base} with other options: {describe_differences(saved, config, diffs)}; pick another --trial "
                    "for this command, or continue that run with its saved options plus --resume")
        return f"{base}; add --resume to continue it, or pick another --trial"

    def _missing_run_message(self, config):
        """Why --resume finds no run here: when a sibling run differs only in options named in the folder, say which."""
        base = f"--resume: {self.last_path} does not exist"
        sibling = self._closest_sibling(config) if config else None
        if sibling is None:
            return f"{base}; start the run without --resume"
        path, saved, diffs = sibling
        return (f"{base}, but {os.path.dirname(path)} holds a run of this command with other options: "
                f"{describe_differences(saved, config, diffs)}; rerun with the saved options to resume it")

    def _closest_sibling(self, config):
        """(last file, saved config, differing options) of the run beside this one that differs in the fewest options."""
        best = None
        # escaped: a --save_root or file name with [ ] * ? is a literal path, not a pattern
        pattern = os.path.join(glob.escape(os.path.dirname(self.run_dir)), "*", glob.escape(f"{self.name}_last.pth"))
        for path in glob.glob(pattern):
            saved = saved_config(os.path.dirname(path))
            if saved is None or saved.get("trial") != config.get("trial"):
                continue
            diffs = config_differences(saved, config)
            if diffs and (best is None or len(diffs) < len(best[2])):
                best = (path, saved, diffs)
        return best

    def read_resumable(self, config, method_cls=None):
        """The run's last checkpoint, refused when this command line changes what the run learns."""
        ckpt = load_checkpoint(self.last_path)
        refuse_changed_configuration(normalise_saved_config(ckpt.get("config", {}), method_cls), config)
        return ckpt

    # ------------------------------------------------------------------ the run's life
    def open(self, config):
        """Create and lock the folder, clear temporary files a kill left behind, write config.json (new runs)."""
        if not self.is_main:
            return
        try:
            os.makedirs(self.run_dir, exist_ok=True)
        except OSError as err:
            raise UsageError(f"cannot create the run folder {self.run_dir} ({err.strerror}); choose a writable "
                             "--save_root") from None
        self.lock.acquire()
        if not self.resume and os.path.isfile(self.last_path):  # another process wrote a run here meanwhile
            raise UsageError(self._occupied_message(config))
        self.remove_stale_temporaries()
        if not self.resume:
            self.write_text("config.json", json.dumps(config, indent=2) + "\n")

    def remove_stale_temporaries(self):
        """Delete the half-written temporary files of a killed writer (safe: this process holds the lock)."""
        for path in glob.glob(os.path.join(glob.escape(self.run_dir), TEMP_PATTERN)):
            try:
                os.unlink(path)
            except OSError:
                pass

    def close(self):
        """Release the folder."""
        self.lock.release()

    @property
    def has_checkpoint(self):
        """Whether a resumable checkpoint of this run is on disk."""
        return os.path.isfile(self.last_path)

    def advice(self):
        """What to do after a failure, true to what is on disk."""
        if self.has_checkpoint:
            return f"the last checkpoint {self.last_path} is intact; fix the cause and rerun with --resume"
        return "no checkpoint of this run was written yet; fix the cause and rerun the command"

    def save(self, filename, payload):
        """Write a checkpoint atomically (rank 0); a failure says what is left on disk."""
        if not self.is_main:
            return
        try:
            save_atomic(payload, os.path.join(self.run_dir, filename))
        except CheckpointWriteError as err:
            raise CheckpointWriteError(f"{err}; {self.advice()}") from err.__cause__

    def write_text(self, filename, text):
        """Write a text file of the run atomically, with the same failure message as checkpoints."""
        try:
            write_text_atomic(text, os.path.join(self.run_dir, filename))
        except CheckpointWriteError as err:
            raise CheckpointWriteError(f"{err}; {self.advice()}") from err.__cause__

    def append_result(self, summary):
        """Append the run's line to <save_root>/results.jsonl (see ResultsLedger.append)."""
        self.results.append(summary)

    def append_result_once(self, summary):
        """Append the run's line unless results.jsonl holds it already; returns whether it appended."""
        return self.results.append_once(summary)


def _unlockable_message(folder, path, err):
    """Why the lock file of an existing run folder cannot be opened or written, and what to do."""
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return (f"the run folder {folder} is not writable (cannot write {path}: {err.strerror}); make it writable "
                "(chmod u+w), or copy it to a writable --save_root and run there")
    return (f"cannot write the lock file {path}: {write_failure_reason(err)}; free space or fix that path (it "
            "must be a plain file), then rerun")



def prepare_run_dir(run_dir, name, config, *, resume, save_root, rank=0):
    """The run's store, checked against `config` before anything is loaded (an existing folder is locked; nothing is
    created). `store.resume` says whether the run continues: --resume on a folder with no checkpoint starts over."""
    store = RunStore(run_dir, name, resume=resume, is_main=rank == 0, save_root=save_root)
    store.check(config)
    if store.started_over and rank == 0:  # killed before its first checkpoint (or never started): nothing to lose
        print(f"--resume: {run_dir} has no checkpoint yet; starting the run from its beginning", flush=True)
    return store
