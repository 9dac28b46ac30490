"""One-line user errors: raised anywhere, printed by the scripts' entry point (helper.cli.entry.run_cli), exit code 2."""


class UsageError(Exception):
    """A problem with the user's input that they can fix; the message says how."""


class CheckpointWriteError(UsageError):
    """A checkpoint or run file could not be written (disk full, permissions)."""


def one_line(err):
    """The message of `err`; for an error re-raised by a DataLoader worker, the original one-line message."""
    text = str(err)
    # A worker's error comes back as "Caught X in DataLoader worker process K.\nOriginal Traceback ...", ending
    # with the traceback's last line "module.X: <the original message>".
    if not text.startswith("Caught ") or "\nOriginal Traceback" not in text:
        return text
    last = text.strip().splitlines()[-1]
    kind = type(err)
    for prefix in (f"{kind.__module__}.{kind.__qualname__}: ", f"{kind.__qualname__}: "):
        if last.startswith(prefix):
            return last[len(prefix):]
    return last
