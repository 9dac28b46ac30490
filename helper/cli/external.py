"""The ImageFolder student script for your own models and images: torchvision:/timm: architectures, --pretrained_t,
--val_split, --mean/--std and the class names a run keeps (checked against the teacher's run by name).

`student_main` hands a command here when it names an external architecture or one of the user-data flags; the
paper's models on ImageNet folders keep their own path untouched.
"""
import argparse
import os
import sys

from helper.argtypes import positive_float
from helper.errors import UsageError
from helper.runs.checkpoint import load_checkpoint, model_state

# Methods that compare intermediate stage maps (feat[1:-1] or a --hint_layer index): a wrapped model has only the
# map NORM matches and the pooled vector unless --feature_modules names its stages.
STAGE_LIST_METHODS = ("abound", "attention", "fsp", "hint", "kdsvd", "nst", "vid")


def float_triple(text):
    """Three comma-separated positive floats (per-channel mean or std)."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected three comma-separated numbers (R,G,B), got {text!r}")
    return values


def name_list(text):
    """Comma-separated module names."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected comma-separated module names, e.g. layer2,layer3,layer4")
    return names


def add_data_flags(group, default=None):
    """--val_split, --split_seed, --mean, --std; `default` None, or argparse.SUPPRESS: absent unless given."""
    group.add_argument("--val_split", type=positive_float, default=default,
                       help="hold out this fraction of each class folder for validation (a folder without val/)")
    group.add_argument("--split_seed", type=int, default=default, help="seed of the --val_split draw (default 0)")
    group.add_argument("--mean", type=float_triple, default=default,
                       help="normalisation mean R,G,B (default ImageNet's)")
    group.add_argument("--std", type=float_triple, default=default, help="normalisation std R,G,B (default ImageNet's)")


def add_model_flags(group, roles=("s", "t"), default=None):
    """The module-choice flags of external architectures, for the roles student (s) and teacher (t)."""
    for role in roles:
        who = "student" if role == "s" else "teacher"
        group.add_argument(f"--feature_module_{role}", default=default,
                           help=f"{who}: the module whose output NORM matches (default: found by a probe forward)")
        group.add_argument(f"--classifier_{role}", default=default,
                           help=f"{who}: the final nn.Linear (default: the Linear that returns the logits)")


STUDENT_FLAGS = ("pretrained_t", "pretrained_s", "feature_module_s", "classifier_s", "feature_module_t",
                 "classifier_t", "feature_modules", "feature_modules_t", "val_split", "split_seed", "mean", "std")


def add_student_flags(parser, data=True):
    """The flags of external models (and, with `data`, of user image folders) in a student script.

    Absent from the parsed options unless given (argparse.SUPPRESS), so the config.json of a paper-model run holds
    exactly the keys it held before these flags existed; `external_student_main` fills in the missing ones.
    """
    g = parser.add_argument_group("your own models and images (torchvision:NAME, timm:NAME)")
    absent = argparse.SUPPRESS
    g.add_argument("--pretrained_t", action="store_true", default=absent,
                   help="teacher: torchvision's published weights for --model_t, from torch's cache")
    g.add_argument("--pretrained_s", action="store_true", default=absent,
                   help="student: start from torchvision's published weights (classifier left random)")
    add_model_flags(g, default=absent)
    g.add_argument("--feature_modules", type=name_list, default=absent,
                   help="student stage modules a,b,c for methods that compare stages (attention, FSP, ...)")
    g.add_argument("--feature_modules_t", type=name_list, default=absent,
                   help="teacher stage modules a,b,c for methods that compare stages")
    if data:
        add_data_flags(g, default=absent)


def uses_own_path(opt):
    """Whether the command needs this module: an external architecture or a user-data flag."""
    from models.external import is_external

    given = [name for name in STUDENT_FLAGS if getattr(opt, name, None) is not None]
    return is_external(opt.model_s) or is_external(opt.model_t) or bool(given)


def file_tag(name):
    """A model name usable in file and folder names ('torchvision:resnet50' -> 'torchvision-resnet50')."""
    return name.replace(":", "-")


def user_data(opt, image_size, saved_split, contrast=False):
    """(train, val, split) of --data_root with the run's size, statistics and split (see dataset.user_folder)."""
    from dataset import crd_dataset
    from dataset.imagenet import MEAN, STD
    from dataset.user_folder import folder_datasets

    train, val, split = folder_datasets(opt.data_root, image_size=image_size, mean=opt.mean or MEAN,
                                        std=opt.std or STD, val_split=opt.val_split, split_seed=opt.split_seed or 0,
                                        saved_split=saved_split, seed=opt.seed)
    if contrast:
        train = crd_dataset(train, opt.nce_k, opt.mode)
    return train, val, split


def check_classes(expected, classes, path, flag="--path_t"):
    """Refuse a model trained on other class folders (compared by name, so a renamed or missing class shows)."""
    if expected is None or list(expected) == list(classes):
        return
    extra = sorted(set(expected) - set(classes))
    missing = sorted(set(classes) - set(expected))
    if extra or missing:
        what = "; ".join(filter(None, (f"only the model has {', '.join(extra[:3])}" if extra else "",
                                       f"only the data has {', '.join(missing[:3])}" if missing else "")))
    else:
        what = "the same names in another order"
    raise UsageError(f"{path} ({flag}) was trained on other classes than --data_root holds ({what}); train it on "
                     "these class folders or point --data_root at its data")


def external_error(err):
    """A models.external error as a UsageError (one line, exit 2)."""
    return UsageError(str(err))


def load_external(name, num_classes, image_size, *, state=None, path=None, flag, role, opt, stages=None):
    """The wrapped external model `name` with `state` loaded (None: random weights)."""
    from models import external

    try:
        plain = external.build_plain(name, num_classes, image_size)
        if state is not None:
            external.load_weights(plain, state, name=name, path=path, num_classes=num_classes, flag=flag)
        model = external.wrap(plain, image_size, stages, getattr(opt, f"feature_module_{role}", None),
                              getattr(opt, f"classifier_{role}", None))
    except external.ExternalModelError as err:
        raise external_error(err) from None
    model.external_name = name
    return model


def load_backbone(plain, state, name):
    """Load published weights into `plain` except the tensors whose shape differs (the classifier for new classes)."""
    from models.external import strip_prefix

    own = plain.state_dict()
    state = strip_prefix(state)
    kept = {k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    missing = [k for k in own if k not in kept]
    if len(kept) < len(own) // 2:
        raise UsageError(f"the published weights do not fit {name} ({len(missing)} of {len(own)} tensors missing)")
    plain.load_state_dict({**own, **kept}, strict=True)
    return missing


def teacher_state(opt, num_classes):
    """(state dict, source path, teacher config) of the teacher: --path_t's file or the published weights."""
    from models import external

    if opt.pretrained_t:
        if opt.path_t:
            raise UsageError("--pretrained_t and --path_t both give the teacher's weights; pass one")
        if not external.is_external(opt.model_t):
            raise UsageError("--pretrained_t needs --model_t torchvision:NAME (or timm:NAME)")
        try:
            source, arch = external.split_name(opt.model_t)
            if source == "torchvision":
                _, path, categories = external.torchvision_weights_file(arch)
                if categories and categories != num_classes:
                    raise UsageError(f"torchvision's published {arch} weights predict {categories} classes, but "
                                     f"--data_root has {num_classes}; fine-tune a teacher on your classes with "
                                     f"python scripts/train_teacher.py --model {opt.model_t} --pretrained")
            return external.published_state(opt.model_t), f"published {opt.model_t} weights", {}
        except external.ExternalModelError as err:
            raise external_error(err) from None
    if not opt.path_t or not os.path.isfile(opt.path_t):
        given = f"teacher checkpoint {opt.path_t} not found" if opt.path_t else "no teacher checkpoint given"
        raise UsageError(f"{given}; pass --path_t FILE (e.g. from scripts/train_teacher.py) or --pretrained_t")
    checkpoint = load_checkpoint(opt.path_t)
    from .model_loading import checkpoint_config

    return model_state(checkpoint, opt.path_t), opt.path_t, checkpoint_config(checkpoint)


def check_stage_flags(opt):
    """A stage-comparing method with an external model needs its stage modules named."""
    from models.external import is_external

    if opt.distill not in STAGE_LIST_METHODS:
        return
    for name, flag, value in ((opt.model_s, "--feature_modules", opt.feature_modules),
                              (opt.model_t, "--feature_modules_t", opt.feature_modules_t)):
        if is_external(name) and not value:
            raise UsageError(f"--distill {opt.distill} compares intermediate stages; name {name}'s with {flag} "
                             "a,b,c (e.g. layer2,layer3,layer4), or use a method on the last map: NORM, kd, crd, "
                             "similarity, pkt, rkd, correlation, factor")


def external_student_main(opt, profile, argv, cls):
    """student_main for commands with external architectures or user-data flags (see the module docstring)."""
    from dataset.user_folder import SPLIT_FILE, write_split
    from models import external
    from models.external import describe, is_external
    from .distill_run import SMALL_LR_STUDENTS, infer_teacher_name, run_name
    from .data import load_datasets
    from .engine import validate
    from .launch import apply_gids
    from .model_loading import build_model, load_model_state
    from .options import resolve_seed
    from .runtime import cleanup, seed_everything, setup_runtime, shared_seed
    from .trainer import Trainer, prepare_run_dir

    zoo = profile["zoo"]
    for flag in STUDENT_FLAGS:  # given or not, every run of this path saves all of them in its config
        setattr(opt, flag, getattr(opt, flag, None))
    if opt.split_seed is not None and opt.val_split is None:
        raise UsageError("--split_seed only applies with --val_split")
    check_stage_flags(opt)
    for name in (opt.model_s, opt.model_t):
        if is_external(name):
            try:
                external.check_name(name)
            except external.ExternalModelError as err:
                raise external_error(err) from None
    folders = profile["own_models"] == "folders"  # else the CIFAR script: its fixed 32-px sets, no class folders
    if not folders:
        opt.image_size = profile["probe_size"]  # saved in the config: export and evaluation rebuild a ViT at it
    image_size = opt.image_size
    if opt.learning_rate is None:
        opt.learning_rate = 0.01 if opt.model_s in SMALL_LR_STUDENTS else profile["learning_rate"]
    teacher_split = os.path.join(os.path.dirname(os.path.abspath(opt.path_t)), SPLIT_FILE) if opt.path_t else None
    if folders:  # the classes first: a folder without images is refused before any model is built
        classes = user_data(opt, image_size, teacher_split if opt.val_split else None)[0].classes
        num_classes = len(classes)
    else:
        classes, num_classes = None, profile["num_classes"](opt)
    state, source, t_config = teacher_state(opt, num_classes)
    if classes is not None:
        check_classes(t_config.get("classes"), classes, opt.path_t)
    if opt.model_t is None:
        opt.model_t = t_config.get("model_s") or t_config.get("model")
        if opt.model_t is None:
            opt.model_t = infer_teacher_name(zoo, state, opt.path_t, num_classes)
    if not is_external(opt.model_s) and opt.model_s not in zoo:
        build_model(zoo, opt.model_s, num_classes, "--model_s")
    weights = cls.weights(opt)
    opt.gamma, opt.alpha, opt.beta, opt.ceta = (weights[k] for k in ("gamma", "alpha", "beta", "logit_scale"))
    # saved in config.json: export and evaluation read them
    opt.classes, opt.num_classes = (list(classes) if classes else None), num_classes
    tagged = argparse.Namespace(**{**vars(opt), "model_t": file_tag(opt.model_t), "model_s": file_tag(opt.model_s)})
    data_tag = (os.path.basename(os.path.normpath(opt.data_root)) if folders else "") or opt.dataset
    run_dir = os.path.join(opt.save_root, "student_model", run_name(tagged, weights, file_tag(data_tag)))
    name = file_tag(opt.model_s)
    store = prepare_run_dir(run_dir, name, opt)
    try:
        apply_gids(opt, profile["script"], sys.argv[1:] if argv is None else argv, before_spawn=store.close)
        resolve_seed(opt, run_dir)
        runtime = setup_runtime(opt.device, opt.amp, opt.channels_last, opt.deterministic, keep_host_memory=True)
        opt.seed = shared_seed(opt.seed, runtime)
        seed_everything(opt.seed + runtime.rank)
        own_split = os.path.join(run_dir, SPLIT_FILE)
        saved = own_split if os.path.isfile(own_split) else (teacher_split if opt.val_split else None)
        if folders:
            train_set, val_set, split = user_data(opt, image_size, saved, contrast=cls.needs_contrast)
        else:
            train_set, val_set = load_datasets(opt, contrast=cls.needs_contrast)
            split = None
        if is_external(opt.model_t):
            teacher = load_external(opt.model_t, num_classes, image_size, state=state, path=source, flag="--path_t",
                                    role="t", opt=opt, stages=opt.feature_modules_t)
        else:
            teacher = load_model_state(zoo, opt.model_t, state, source, num_classes, "--model_t")
        del state
        if is_external(opt.model_s):
            student = load_external(opt.model_s, num_classes, image_size, flag="--model_s", role="s", opt=opt,
                                    stages=opt.feature_modules)
            if opt.pretrained_s:
                try:
                    load_backbone(student.model, external.published_state(opt.model_s, "--pretrained_s"),
                                  opt.model_s)
                except external.ExternalModelError as err:
                    raise external_error(err) from None
        else:
            student = build_model(zoo, opt.model_s, num_classes, "--model_s")
        data = {"n_data": len(train_set), "image_size": image_size, "in_channels": 3,
                "schedule_kind": profile["schedule_kind"]}
        try:
            method = cls.build(student, teacher, opt, data)
        except ValueError as err:
            raise UsageError(f"--distill {opt.distill} cannot distill {opt.model_t} into {opt.model_s}: {err}")
        trainer = Trainer(method, student, opt, runtime, run_dir=run_dir, name=name, store=store,
                          train_set=train_set, val_set=val_set, record={"teacher": opt.model_t, "student": opt.model_s,
                                                                       "method": opt.distill, "dataset": opt.dataset,
                                                                       "trial": opt.trial})
        if split is not None and runtime.is_main and not os.path.isfile(own_split):
            os.makedirs(run_dir, exist_ok=True)
            write_split(own_split, opt.data_root, split, opt.val_split, opt.split_seed or 0)
        for role, model, model_name in (("teacher", teacher, opt.model_t), ("student", student, opt.model_s)):
            if is_external(model_name):
                trainer.log(f"{role} {model_name}: {describe(model, image_size)}")
        teacher_acc = validate(teacher, trainer.val_loader, runtime)
        trainer.log(f"teacher {opt.model_t} accuracy: acc@1 {teacher_acc['acc1']:.2f} acc@5 {teacher_acc['acc5']:.2f}")
        trainer.record["teacher_acc"] = teacher_acc["acc1"]
        return trainer.fit()
    finally:
        store.close()
        cleanup()

