"""A student command (CIFAR and ImageNet) resolved: method, teacher file and architecture, learning rate, weights,
run folder; and what it builds once the data is loaded (teacher, student, method) and checks before training."""
import argparse
import os
from types import MappingProxyType

from distiller_zoo import method_class
from helper.cli.profile import Job
from helper.errors import UsageError
from helper.runs.checkpoint import load_checkpoint, model_state
from helper.runs.config import WEIGHT_OPTIONS
from helper.teachers.loading import build_model, check_plain_state, infer_teacher_name, load_model_state
from helper.teachers.registry import teacher_accuracy_warning
from helper.training.engine import validate


def run_name(opt, weights, dataset_tag):
    """The official run-folder name T_{t}_S_{s}_{data}_{distill}_r_{r}_a_{a}_b_{b}_c_{c}_s_{N}_{trial}.

    A combination's {b} has one weight per part ('1.0+8.0'); --logit_standardize adds '_LS' to {distill}."""
    distill = f"{opt.distill}_LS" if weights.get("logit_standardize") else opt.distill
    return (f"T_{opt.model_t}_S_{opt.model_s}_{dataset_tag}_{distill}_r_{weights['gamma']}_a_{weights['alpha']}"
            f"_b_{weights['beta']}_c_{weights['logit_scale']}_s_{opt.co_sponge}_{opt.trial}")


def resolve(profile, opt):
    """The student job of the parsed command line `opt`; every user error surfaces as UsageError (one line)."""
    cls = method_class_or_error(opt.distill)
    if profile.own_models:
        # imported here: helper.cli.external builds on this module (run_name, build_method, check_teacher)
        from helper.cli import external
        if external.uses_own_path(opt):  # the paper's models on the paper's data keep the path below untouched
            return external.resolve(profile, opt, cls)
    path_t = profile.default_path_t(opt) if opt.path_t is None else opt.path_t
    if not path_t or not os.path.isfile(path_t):
        given = f"teacher checkpoint {path_t} not found" if path_t else "no teacher checkpoint given"
        raise UsageError(f"{given}; pass --path_t ({profile.teacher_hint})")
    num_classes = profile.num_classes(opt)
    teacher_state = model_state(load_checkpoint(path_t), path_t)  # read once, validated before the run
    check_plain_state(teacher_state, path_t, profile.zoo, num_classes, "--path_t")
    model_t = opt.model_t
    if model_t is None:
        model_t = infer_teacher_name(profile.zoo, teacher_state, path_t, num_classes)
    if opt.model_s not in profile.zoo:
        build_model(profile.zoo, opt.model_s, num_classes, "--model_s")  # raises the one-line error
    weights = cls.weights(opt)
    # the resolved values go into the run's config, so a resume that types a default out is the same run
    lr = profile.default_learning_rate(opt.model_s) if opt.learning_rate is None else opt.learning_rate
    options = {**vars(opt), "path_t": path_t, "learning_rate": lr, "model_t": model_t, **weight_options(weights)}
    method_opt = argparse.Namespace(**options)
    run_dir = os.path.join(opt.save_root, "student_model", run_name(method_opt, weights, opt.dataset))
    image_size = options["image_size"] if profile.image_size else None

    def build(options, n_data):
        """Teacher and student networks and the method joining them; a check of the teacher before training."""
        nonlocal teacher_state
        teacher = load_model_state(profile.zoo, model_t, teacher_state, path_t, num_classes, "--model_t")
        teacher_state = None  # the networks hold the weights now
        student = build_model(profile.zoo, opt.model_s, num_classes, "--model_s")
        method = build_method(cls, student, teacher, options, n_data, image_size or profile.probe_size, profile)
        # method.student, not student: a method may wrap it (SimKD's student predicts through the teacher's
        # classifier), and validation and the checkpoints must hold the model as it predicts
        return method, method.student, run_record(options), lambda trainer, runtime: check_teacher(
            trainer, runtime, teacher, options)

    return Job(MappingProxyType(options), run_dir, opt.model_s, cls.contrast_sampling(method_opt),
               options["init_epochs"], image_size, build)


def weight_options(weights):
    """The loss-weight flags as the method resolved them (`Distiller.weights`), to be saved among the options."""
    return {flag: weights[key] for flag, key in WEIGHT_OPTIONS.items()}


def build_method(cls, student, teacher, options, n_data, image_size, profile):
    """The method `cls` joining `teacher` and `student` (probed at `image_size`); a pair it cannot join is a
    UsageError."""
    data = {"n_data": n_data, "image_size": image_size, "in_channels": 3, "schedule_kind": profile.schedule_kind}
    try:
        return cls.build(student, teacher, argparse.Namespace(**options), data)
    except ValueError as err:
        raise UsageError(f"--distill {options['distill']} cannot distill {options['model_t']} into "
                         f"{options['model_s']}: {err}") from None


def run_record(options):
    """The results line's description of a student run."""
    return {"teacher": options["model_t"], "student": options["model_s"], "method": options["distill"],
            "dataset": options["dataset"], "trial": options["trial"]}


def check_teacher(trainer, runtime, teacher, options):
    """Log the teacher's validation accuracy, record it, and warn when it is far from the published one."""
    acc = validate(teacher, trainer.val_loader, runtime)
    trainer.log(f"teacher {options['model_t']} accuracy: acc@1 {acc['acc1']:.2f} acc@5 {acc['acc5']:.2f}")
    trainer.record["teacher_acc"] = acc["acc1"]
    if runtime.is_main:  # hashes the teacher file once, and only when the registry publishes its digest
        warning = teacher_accuracy_warning(options["path_t"], options["model_t"], options["dataset"], acc["acc1"])
        if warning:
            trainer.log(warning, err=True)


def method_class_or_error(name):
    """The method class for `--distill name`, or a UsageError listing the valid names."""
    try:
        return method_class(name)
    except KeyError as err:
        raise UsageError(err.args[0]) from None
