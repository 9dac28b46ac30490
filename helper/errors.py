"""One-line user errors: raised anywhere, printed by the scripts' entry point with exit code 2."""
import argparse
import sys


class UsageError(Exception):
    """A problem with the user's input that they can fix; the message says how."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a single-line error message (and exit code 2) instead of usage + error."""

    def __init__(self, *args, **kwargs):
        # no prefix matching: the official `--init_epoch` must not silently become our `--init_epochs`
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message):
        words = message.replace("=", " ").split()  # "--resume_path=x" names the flag too
        hints = [hint for flag, hint in OFFICIAL_ONLY_FLAGS.items()
                 if message.startswith("unrecognized arguments") and flag in words]
        if message.startswith("argument -b1/--beta1: expected one argument"):
            hints.append("-b1 is the official (inert) beta1; the NORM loss weight is written apart: -b 1")
        self.exit(2, f"{self.prog}: error: {message}{'; ' + '; '.join(hints) if hints else ''} (see --help)\n")


# Flags of the official NORM scripts that have no counterpart here, and what to use instead.
OFFICIAL_ONLY_FLAGS = {
    "--resume_path": "--resume_path is the official way to continue a run; here rerun the same command with --resume",
    "--init_epoch": "--init_epoch (the official loop's first epoch) is not supported; to continue a run use --resume",
    "--use_layer3": "--use_layer3 (two feature transforms) is not supported; NORM matches the last stage only",
}


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


def run_cli(main, argv=None):
    """Call `main(argv)`; turn UsageError and dataset errors (missing or corrupt files) into one line and exit 2."""
    from dataset import DatasetError  # local import: dataset depends on torchvision only

    try:
        return main(argv)
    except (UsageError, DatasetError) as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        sys.exit(2)
