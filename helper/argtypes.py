"""argparse types shared by every command line (and by the methods' own flags): one-line errors, finite numbers."""
import argparse
import math
import re


def _ranged(attribute, convert, name, accept):
    """The argparse type `attribute` of this module: `convert(text)` where `accept(value)` holds, else ValueError."""
    def parse(text):
        value = convert(text)
        if not accept(value):
            raise ValueError(text)
        return value

    parse.__name__ = name  # argparse puts the type's name in its one-line error: "invalid <name> value: '-1'"
    parse.__qualname__ = attribute  # what pickle looks the function up by
    parse.__doc__ = f"argparse type: {name}."
    return parse


def _finite_float(text):
    value = float(text)
    if not math.isfinite(value):  # inf would pass `> 0`, and nan is no setting at all
        raise ValueError(text)
    return value


SEED_LIMIT = 2**32  # NumPy's legacy seeding range; torch and Python accept it too

positive_int = _ranged("positive_int", int, "integer >= 1", lambda v: v >= 1)
non_negative_int = _ranged("non_negative_int", int, "integer >= 0", lambda v: v >= 0)
seed_int = _ranged("seed_int", int, f"integer in [0, {SEED_LIMIT - 1}]", lambda v: 0 <= v < SEED_LIMIT)
positive_float = _ranged("positive_float", _finite_float, "number > 0", lambda v: v > 0)
non_negative_float = _ranged("non_negative_float", _finite_float, "number >= 0", lambda v: v >= 0)
fraction_below_one = _ranged("fraction_below_one", _finite_float, "number in [0, 1)", lambda v: 0 <= v < 1)
finite_float = _ranged("finite_float", _finite_float, "number", lambda v: True)


def trial_name(text):
    """argparse type: a trial name, which ends the run folder's name, so non-empty and without a path separator."""
    text = str(text)
    if not text.strip() or any(c in text for c in ("/", "\\", "\0")):
        raise argparse.ArgumentTypeError(f"{text!r}: give a non-empty name without '/' or '\\' (it ends the run "
                                         "folder's name), e.g. --trial 1")
    return text


trial_name.__name__ = "trial name"


def int_list(text):
    """argparse type: '150,180,210' -> [150, 180, 210] (epochs, so each an integer >= 1); at least one."""
    epochs = [positive_int(x) for x in str(text).split(",") if x.strip()]
    if not epochs:  # "" or "," would be [], a silently constant learning rate
        raise argparse.ArgumentTypeError("give at least one epoch, e.g. 150,180,210")
    return epochs


int_list.__name__ = "comma-separated list of integers >= 1"


GPU_IDS = re.compile(r"[0-9]+(,[0-9]+)*", re.ASCII)


def gpu_id_list(text):
    """'0,1,2' -> [0, 1, 2]: distinct non-negative decimal ids separated by single commas; ValueError otherwise.

    Strict on purpose: `0,,1`, `0, 1`, `-1`, `+1` or `1,1` are typos that would otherwise start a run on other GPUs.
    """
    text = str(text)
    if not GPU_IDS.fullmatch(text):
        why = "an empty id" if "" in text.split(",") else "no spaces or signs" if re.search(r"[\s+-]", text) else None
        raise ValueError(f"{text!r}: give distinct GPU ids separated by commas, e.g. --gids 0,1,2,3"
                         f"{f' ({why})' if why else ''}")
    ids = [int(x) for x in text.split(",")]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{text!r}: give distinct GPU ids separated by commas, e.g. --gids 0,1,2,3 (an id is "
                         "repeated)")
    return ids


def gpu_ids(text):
    """argparse type of --gids: the text itself, once `gpu_id_list` accepts it (so a bad list stops the parse)."""
    try:
        gpu_id_list(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return str(text)
