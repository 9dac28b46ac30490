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
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def run_cli(main, argv=None):
    """Call `main(argv)`; turn UsageError and missing files into one line on stderr and exit code 2."""
    from dataset import DatasetNotFound  # local import: dataset depends on torchvision only

    try:
        return main(argv)
    except (UsageError, DatasetNotFound) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
