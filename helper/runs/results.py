"""The results ledger: one JSON line per finished run in <save_root>/results.jsonl, and the summary it holds."""
import fcntl
import json
import os
import subprocess

from helper.errors import CheckpointWriteError
from helper.runs.files import append_whole_line, write_failure_reason


def git_commit():
    """The project's current git commit, or None outside a checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=os.path.dirname(os.path.abspath(__file__)),
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def run_summary(run_dir, record, history, best_acc, epochs, seconds, times, config):
    """The run's results line as plain data: `record` (who and what), best and last accuracy over the epochs of
    `history`, wall time, `times` (training seconds per phase), commit, config."""
    last = history[-1] if history else {"test_acc": 0.0, "test_acc_top5": 0.0}
    best5 = max((h["test_acc_top5"] for h in history if h["test_acc"] == best_acc), default=0.0)
    return {"run": run_dir, **record, "best_acc": best_acc, "best_acc_top5": best5,
            "last_acc": last["test_acc"], "last_acc_top5": last["test_acc_top5"],
            "epochs": epochs, "wall_time_s": round(seconds, 1), **times,
            "commit": git_commit(), "config": config}


class ResultsLedger:
    """<save_root>/results.jsonl as seen from one run folder; only the main process (rank 0) writes."""

    def __init__(self, save_root, run_dir, is_main=True):
        self.save_root, self.run_dir, self.is_main = save_root, run_dir, is_main
        self.path = os.path.join(save_root, "results.jsonl")

    def append(self, summary):
        """Append one JSON line to results.jsonl (one write under a lock, so parallel runs never interleave)."""
        self._append(summary, once=False)

    def append_once(self, summary):
        """Append `summary` to results.jsonl unless a line of this run folder with the same result is there already.

        Returns whether it appended. For a finished run resumed after a kill between its last checkpoint and its line.
        """
        return self._append(summary, once=True)

    def _append(self, summary, once):
        if not self.is_main:
            return False
        path = self.path
        line = (json.dumps(summary) + "\n").encode()
        try:
            os.makedirs(self.save_root, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                # looked up under the lock: no other writer can add the line between the look and the write
                if once and self._has_result(path, summary):
                    return False
                append_whole_line(fd, line)  # no half line: the ledger stays parseable
            finally:
                os.close(fd)
        except OSError as err:
            raise CheckpointWriteError(f"could not append to {path}: {write_failure_reason(err)}; the run's "
                                       f"checkpoints in {self.run_dir} are complete") from err
        return True

    def _has_result(self, path, summary):
        """Whether results.jsonl holds a line of this run folder with `summary`'s epochs and accuracies.

        The result is compared too: a line left by an earlier run in a folder since deleted and rerun is not this one's.
        """
        keys = ("epochs", "best_acc", "last_acc")
        with open(path, "rb") as handle:
            for raw in handle:
                try:
                    record = json.loads(raw)
                except ValueError:
                    continue  # a malformed line records nothing
                if (isinstance(record, dict) and self._names_this_run(record.get("run"))
                        and all(record.get(k) == summary.get(k) for k in keys)):
                    return True
        return False

    def _names_this_run(self, run):
        """Whether a results line's "run" path is this run folder (it may have been written relative or absolute)."""
        if not isinstance(run, str):
            return False
        if run == self.run_dir or os.path.abspath(run) == os.path.abspath(self.run_dir):
            return True
        try:
            return os.path.samefile(run, self.run_dir)
        except OSError:
            return False
