"""The shared main of the student scripts (CIFAR and ImageNet): teacher, student, method, run folder, training."""
import os
import sys

from distiller_zoo import METHODS, method_class, method_name
from distiller_zoo.compose import beta_weights
from .checkpoint import load_checkpoint, model_state
from .data import load_datasets
from .engine import validate
from .errors import UsageError
from .launch import apply_gids
from .model_loading import (build_model, check_plain_state, classifier_outputs, load_model_state,
                            matching_architectures)
from .options import (add_official_student_flags, base_parser, non_negative_float, positive_float, positive_int,
                      resolve_seed)
from .runtime import cleanup, seed_everything, setup_runtime, shared_seed
from .teacher_registry import teacher_accuracy_warning
from .trainer import Trainer, prepare_run_dir

SMALL_LR_STUDENTS = ("MobileNetV2", "ShuffleV1", "ShuffleV2")  # the official scripts train these at lr 0.01


def student_parser(profile):
    """The student script's flags: the shared ones, the paper's distillation flags and every method's own."""
    p = base_parser(profile["description"], epochs=profile["epochs"], batch_size=profile["batch_size"],
                    learning_rate=None, weight_decay=profile["weight_decay"], lr_decay=profile["lr_decay"],
                    lr_decay_epochs=profile["lr_decay_epochs"], dataset=profile["dataset"],
                    datasets=profile["datasets"], num_workers=profile["num_workers"])
    g = p.add_argument_group("distillation (paper symbols in brackets)")
    g.add_argument("--path_t", default=None, help="teacher checkpoint ({'model': state_dict} or a state dict)")
    g.add_argument("--model_t", default=None, help="teacher architecture (default: read from the checkpoint)")
    g.add_argument("--model_s", default=profile["model_s"], help="student architecture")
    g.add_argument("--distill", type=method_name, default="NORM",
                   help=f"method, in any letter case: {', '.join(sorted(METHODS))}; or several joined by '+' "
                        "(e.g. NORM+dkd: the first part's CE and logit scale, each part's own terms)")
    g.add_argument("-r", "--gamma", type=non_negative_float, default=None,
                   help="weight of the cross-entropy (default: the method's, 1 for all)")
    g.add_argument("-a", "--alpha", type=non_negative_float, default=None,
                   help="weight of KD [paper: beta] (default: the method's, NORM 0; see README)")
    g.add_argument("-b", "--beta", type=beta_weights, default=None,
                   help="weight of the method's loss [paper: alpha] (default: the method's, NORM 1); for A+B one "
                        "per part joined by '+' (-b 1+8), a single number being the first part's")
    g.add_argument("-c", "--ceta", type=non_negative_float, default=None,
                   help="logit layer-norm scale for CE/KD (NORM default 2.5, others 0 = raw logits)")
    g.add_argument("--kd_T", type=positive_float, default=4.0, help="KD temperature")
    if profile["image_size"]:
        g.add_argument("--image_size", type=positive_int, default=profile["image_size"], help="training crop size")
    for cls in METHODS.values():
        cls.add_arguments(g)
    if profile.get("own_models"):  # torchvision:/timm: architectures (and user image folders: ImageFolder script)
        from .external_run import add_student_flags
        add_student_flags(p, data=profile["own_models"] == "folders")
    add_official_student_flags(p, num_cls=profile["official_num_cls"])
    return p


def run_name(opt, weights, dataset_tag):
    """The official run-folder name T_{t}_S_{s}_{data}_{distill}_r_{r}_a_{a}_b_{b}_c_{c}_s_{N}_{trial}.

    A combination's {b} has one weight per part ('1.0+8.0'); --logit_standardize adds '_LS' to {distill}."""
    distill = f"{opt.distill}_LS" if weights.get("logit_standardize") else opt.distill
    return (f"T_{opt.model_t}_S_{opt.model_s}_{dataset_tag}_{distill}_r_{weights['gamma']}_a_{weights['alpha']}"
            f"_b_{weights['beta']}_c_{weights['logit_scale']}_s_{opt.co_sponge}_{opt.trial}")


def infer_teacher_name(zoo, state, path, num_classes):
    """The teacher architecture of `state` (read from `path`), found by matching its keys and shapes in the zoo."""
    names = matching_architectures(zoo, state, num_classes)
    # the official student variants (resnet18S, resnet34S) share their teacher's weights; a teacher is the plain one
    names = [name for name in names if not (name.endswith("S") and name[:-1] in names)]
    if len(names) == 1:
        return names[0]
    if names:
        raise UsageError(f"cannot tell the teacher architecture of {path}: several architectures fit it "
                         f"({', '.join(names)}); pass --model_t")
    classes = classifier_outputs(state)
    if classes and classes != num_classes:
        fits = matching_architectures(zoo, state, classes)
        if fits:
            raise UsageError(f"{path} is a {fits[0]} with {classes} classes, but the dataset has {num_classes}; "
                             "pass the --dataset it was trained on, or a teacher for this one")
    raise UsageError(f"cannot tell the teacher architecture of {path}: no architecture fits it; pass --model_t")


def student_main(argv, profile):
    """Parse, build and train; every user error surfaces as UsageError (one line, exit code 2)."""
    opt = student_parser(profile).parse_args(argv)
    cls = method_class_or_error(opt.distill)
    if profile.get("own_models"):
        from .external_run import external_student_main, uses_own_path
        if uses_own_path(opt):
            return external_student_main(opt, profile, argv, cls)
    if opt.path_t is None:
        opt.path_t = profile["default_path_t"](opt)
    if not opt.path_t or not os.path.isfile(opt.path_t):
        given = f"teacher checkpoint {opt.path_t} not found" if opt.path_t else "no teacher checkpoint given"
        raise UsageError(f"{given}; pass --path_t ({profile['teacher_hint']})")
    if opt.learning_rate is None:
        opt.learning_rate = 0.01 if opt.model_s in SMALL_LR_STUDENTS else profile["learning_rate"]
    num_classes = profile["num_classes"](opt)
    teacher_state = model_state(load_checkpoint(opt.path_t), opt.path_t)  # read once, validated before the run
    check_plain_state(teacher_state, opt.path_t, profile["zoo"], num_classes, "--path_t")
    if opt.model_t is None:
        opt.model_t = infer_teacher_name(profile["zoo"], teacher_state, opt.path_t, num_classes)
    if opt.model_s not in profile["zoo"]:
        build_model(profile["zoo"], opt.model_s, num_classes, "--model_s")
    weights = cls.weights(opt)
    # the resolved values go into the run's config, so a resume that types a default out is the same run
    opt.gamma, opt.alpha, opt.beta, opt.ceta = (weights[k] for k in ("gamma", "alpha", "beta", "logit_scale"))
    run_dir = os.path.join(opt.save_root, "student_model", run_name(opt, weights, opt.dataset))
    store = prepare_run_dir(run_dir, opt.model_s, opt)
    try:
        apply_gids(opt, profile["script"], sys.argv[1:] if argv is None else argv, before_spawn=store.close)
        resolve_seed(opt, run_dir)
        runtime = setup_runtime(opt.device, opt.amp, opt.channels_last, opt.deterministic, keep_host_memory=True)
        opt.seed = shared_seed(opt.seed, runtime)
        seed_everything(opt.seed + runtime.rank)
        image_size = getattr(opt, "image_size", None)
        train_set, val_set = load_datasets(opt, image_size, contrast=cls.needs_contrast)
        teacher = load_model_state(profile["zoo"], opt.model_t, teacher_state, opt.path_t, num_classes, "--model_t")
        del teacher_state
        student = build_model(profile["zoo"], opt.model_s, num_classes, "--model_s")
        data = {"n_data": len(train_set), "image_size": image_size or profile["probe_size"], "in_channels": 3,
                "schedule_kind": profile["schedule_kind"]}
        try:
            method = cls.build(student, teacher, opt, data)
        except ValueError as err:
            raise UsageError(f"--distill {opt.distill} cannot distill {opt.model_t} into {opt.model_s}: {err}")
        # method.student, not student: a method may wrap it (SimKD's student predicts through the teacher's
        # classifier), and validation and the checkpoints must hold the model as it predicts
        trainer = Trainer(method, method.student, opt, runtime, run_dir=run_dir, name=opt.model_s, store=store,
                          train_set=train_set, val_set=val_set, record={"teacher": opt.model_t, "student": opt.model_s,
                                                   "method": opt.distill, "dataset": opt.dataset,
                                                   "trial": opt.trial})
        teacher_acc = validate(teacher, trainer.val_loader, runtime)
        trainer.log(f"teacher {opt.model_t} accuracy: acc@1 {teacher_acc['acc1']:.2f} acc@5 {teacher_acc['acc5']:.2f}")
        trainer.record["teacher_acc"] = teacher_acc["acc1"]
        if runtime.is_main:  # hashes the teacher file once, and only when the registry publishes its digest
            warning = teacher_accuracy_warning(opt.path_t, opt.model_t, opt.dataset, teacher_acc["acc1"])
            if warning:
                trainer.log(warning, err=True)
        return trainer.fit()
    finally:
        store.close()
        cleanup()


def method_class_or_error(name):
    """The method class for `--distill name`, or a UsageError listing the valid names."""
    try:
        return method_class(name)
    except KeyError as err:
        raise UsageError(err.args[0]) from None
