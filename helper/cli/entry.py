"""What every script's command line shares: argparse with one-line errors, and the entry point that prints a
UsageError in one line and exits 2. Standard library only (the light scripts use it without torch)."""
import argparse
import sys

from helper.errors import UsageError, one_line


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


def run_cli(main, argv=None):
    """Call `main(argv)`; turn UsageError and dataset errors (missing or corrupt files) into one line and exit 2."""
    from dataset import DatasetError  # local import: dataset depends on torchvision only

    try:
        return main(argv)
    except (UsageError, DatasetError) as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        sys.exit(2)
