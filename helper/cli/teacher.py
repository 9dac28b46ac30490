"""A teacher command resolved: learning rate, class count, run folder; and the model it trains (plain cross-entropy)."""
import os
from types import MappingProxyType

from distiller_zoo import Vanilla
from helper.cli.profile import Job
from helper.teachers.loading import build_model


def resolve(profile, opt):
    """The teacher job of the parsed command line `opt`; every user error surfaces as UsageError (one line)."""
    lr = profile.default_learning_rate(opt.model) if opt.learning_rate is None else opt.learning_rate
    classes = profile.num_classes(opt)
    if opt.model not in profile.zoo:
        build_model(profile.zoo, opt.model, classes, "--model")  # raises the one-line error
    options = {**vars(opt), "learning_rate": lr}
    run_dir = os.path.join(opt.save_root, "models", f"{opt.model}_{opt.dataset}_lr_{lr}_decay_{opt.weight_decay}"
                                                    f"_trial_{opt.trial}")

    def build(options, n_data):
        """The model and its plain supervised training."""
        model = build_model(profile.zoo, opt.model, classes, "--model")
        record = {"teacher": None, "student": opt.model, "method": "vanilla", "dataset": opt.dataset,
                  "trial": opt.trial}
        return Vanilla(model), model, record, None

    return Job(MappingProxyType(options), run_dir, opt.model, None, 0, None, build)
