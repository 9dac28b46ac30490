"""A run's configuration: config.json's content, the saved configuration in today's terms, and the resume policy
(which options may change between an interrupted run and its resumption)."""
import argparse
import json
import os

from helper.errors import UsageError

# Options that may change between an interrupted run and its resumption without changing what is learned.
# The teacher file may move (its architecture, `model_t`, is still compared).
OPERATIONAL_OPTIONS = {"resume", "num_workers", "print_freq", "device", "data_root", "download", "progress",
                       "save_root", "deterministic", "save_freq", "compile", "fused_sgd", "channels_last",
                       "official_num_workers", "path_t", "gids", "no_inference_teacher",
                       # the official scripts' inert flags (helper.cli.parser.add_official_student_flags)
                       "tb_freq", "beta1", "kd_warm_up", "marginal_relu", "num_cls"}

# The loss-weight flags and the names Distiller.weights gives them.
WEIGHT_OPTIONS = {"gamma": "gamma", "alpha": "alpha", "beta": "beta", "ceta": "logit_scale"}


def run_config(options, world_size):
    """The run's config as saved in config.json and every checkpoint: every resolved option (a name -> value mapping)
    plus what they imply under `world_size` processes."""
    # the per-process batch fixes the data shards together with the world size
    config = {**plain_config(options), "world_size": world_size,
              "batch_size_per_process": options["batch_size"] // world_size}
    config["sync_bn"] = bool(options["sync_bn"]) and world_size > 1  # a no-op in one process
    return config


def plain_config(options):
    """The options (a name -> value mapping) as JSON-compatible plain data."""
    return {k: (v if isinstance(v, (int, float, str, bool, type(None))) else
                list(v) if isinstance(v, (list, tuple)) else str(v)) for k, v in sorted(options.items())}


def config_differences(saved, current):
    """Names of the options that differ between a saved run and this command line (operational ones ignored).

    A seed not given on this command line is not a difference: it is taken from the saved run.
    """
    keys = (set(saved) | set(current)) - OPERATIONAL_OPTIONS
    if current.get("seed") is None:
        keys.discard("seed")
    return sorted(k for k in keys if saved.get(k) != current.get(k))


def describe_differences(saved, current, keys):
    """'k (saved a, now b), ...' for the options `keys`."""
    return ", ".join(f"{k} (saved {saved.get(k)!r}, now {current.get(k)!r})" for k in keys)


def normalise_saved_config(saved, method_cls=None):
    """A saved config in today's terms: older runs stored per-process batches and left unset loss weights None."""
    saved = dict(saved)
    if "batch_size" in saved and "batch_size_per_process" not in saved:
        # before the batch became global, --batch_size was per process
        saved["batch_size_per_process"] = saved["batch_size"]
        saved["batch_size"] = saved["batch_size"] * saved.get("world_size", 1)
    if saved.get("world_size", 1) == 1:
        saved["sync_bn"] = False  # it never did anything in one process (today's configs say so)
    weights = getattr(method_cls, "weights", None)
    unset = [k for k in WEIGHT_OPTIONS if k in saved and saved[k] is None]
    if weights is not None and unset:
        resolved = weights(argparse.Namespace(**saved))
        saved.update({k: resolved[WEIGHT_OPTIONS[k]] for k in unset})
    return saved


def saved_config(run_dir):
    """The run folder's config.json in today's terms, or None when it is missing or unreadable."""
    try:
        with open(os.path.join(run_dir, "config.json")) as handle:
            return normalise_saved_config(json.load(handle))
    except (OSError, ValueError):
        return None


def refuse_changed_configuration(saved, config):
    """A UsageError naming the options in which this command differs from the run's saved ones (none: nothing)."""
    diffs = config_differences(saved, config)
    if diffs:
        raise UsageError(f"--resume with a changed configuration: {describe_differences(saved, config, diffs)}; "
                         "rerun with the saved options, or start a new run with another --trial")
