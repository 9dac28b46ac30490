"""Your own models and images in a student script: torchvision:/timm: architectures, --pretrained_t, and (the
ImageFolder script) --val_split, --mean/--std and the class names a run keeps (checked against the teacher's run by
name).

`helper.cli.student.resolve` hands a command here when it names an external architecture or one of these flags
(`uses_own_path`); the paper's models on the paper's data keep their own path untouched. The job resolved here runs
through the scripts' one start-up (helper.cli.main) like any other; what it adds is the user's image folder as its
`datasets` (`UserFolder`, which keeps the split in the run folder) and, before training, the module choices logged.
"""
import argparse
import os
from contextlib import contextmanager
from types import MappingProxyType

from dataset import crd_dataset
from dataset.imagenet import MEAN, STD
from dataset.user_folder import SPLIT_FILE, check_classes, folder_datasets, split_json
from helper.argtypes import positive_float
from helper.cli.profile import Job
from helper.cli.student import build_method, check_teacher, run_name, run_record, weight_options
from helper.errors import UsageError
from helper.runs.checkpoint import load_checkpoint, model_state
from helper.runs.files import write_failure_reason, write_text_atomic
from helper.teachers.loading import build_model, checkpoint_config, infer_teacher_name, load_model_state
from models import external
from models.external import describe, is_external


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
    exactly the keys it held before these flags existed; `resolve` fills in the missing ones.
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
    given = [name for name in STUDENT_FLAGS if getattr(opt, name, None) is not None]
    return is_external(opt.model_s) or is_external(opt.model_t) or bool(given)


def file_tag(name):
    """A model name usable in file and folder names ('torchvision:resnet50' -> 'torchvision-resnet50')."""
    return name.replace(":", "-")


@contextmanager
def external_errors():
    """models.external's errors (a name, module choice or weight file that cannot be used) as one-line UsageErrors."""
    try:
        yield
    except external.ExternalModelError as err:
        raise UsageError(str(err)) from None


def check_split_seed(options):
    """--split_seed seeds the --val_split draw only: alone it would be silently ignored."""
    if options["split_seed"] is not None and options["val_split"] is None:
        raise UsageError("--split_seed only applies with --val_split")


def user_data(options, saved_split):
    """(train, val, split) of --data_root with the run's size, statistics and split (see dataset.user_folder)."""
    return folder_datasets(options["data_root"], image_size=options["image_size"], mean=options["mean"] or MEAN,
                           std=options["std"] or STD, val_split=options["val_split"],
                           split_seed=options["split_seed"] or 0, saved_split=saved_split, seed=options["seed"])


class UserFolder:
    """A job's `datasets` (helper.cli.profile.Job): the images of --data_root, and the split the run keeps.

    The split read is the run's own split.json (a resume), else `inherited` (the teacher run's, so a student is
    validated on images its teacher never trained on), else a new --val_split draw; `save` writes it as the run's
    split.json once the run is set up, so the folder holds it from the first checkpoint on.
    """

    def __init__(self, run_dir, inherited=None, contrast=None):
        self.path = os.path.join(run_dir, SPLIT_FILE)
        self.inherited, self.contrast, self.split = inherited, contrast, None

    def __call__(self, options):
        """(train set, val set) of --data_root; the training set CRD-sampled when the method asks (`contrast`)."""
        train, val, self.split = user_data(options, self.path if os.path.isfile(self.path) else self.inherited)
        if self.contrast is not None:
            train = crd_dataset(train, *self.contrast)
        return train, val

    def save(self, options, runtime):
        """Write the split the run trains on as its split.json (the main process; never over an existing one)."""
        if self.split is not None and runtime.is_main and not os.path.isfile(self.path):
            folder = os.path.dirname(self.path)
            try:
                os.makedirs(folder, exist_ok=True)
            except OSError as err:
                raise UsageError(f"cannot create the run folder {folder} ({write_failure_reason(err)}); choose a "
                                 "writable --save_root") from None
            # atomic, and a full disk is the same one line as for every other file of the run
            write_text_atomic(split_json(options["data_root"], self.split, options["val_split"],
                                         options["split_seed"] or 0), self.path)


def load_external(name, num_classes, image_size, options, *, role, flag, state=None, path=None, stages=None):
    """The wrapped external model `name` with `state` loaded (None: random weights); `role` 's' or 't' picks the
    module-choice flags."""
    with external_errors():
        plain = external.build_plain(name, num_classes, image_size)
        if state is not None:
            external.load_weights(plain, state, name=name, path=path, num_classes=num_classes, flag=flag)
        model = external.wrap(plain, image_size, stages, options[f"feature_module_{role}"],
                              options[f"classifier_{role}"])
    model.external_name = name
    return model


def load_backbone(plain, state, name):
    """Load published weights into `plain` except the tensors whose shape differs (the classifier for new classes);
    returns the names of the tensors left as they were."""
    own = plain.state_dict()
    state = external.strip_prefix(state)
    kept = {k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    missing = [k for k in own if k not in kept]
    if len(kept) < len(own) // 2:
        raise UsageError(f"the published weights do not fit {name} ({len(missing)} of {len(own)} tensors missing)")
    plain.load_state_dict({**own, **kept}, strict=True)
    return missing


def teacher_state(options, num_classes):
    """(state dict, source, teacher run config) of the teacher: --path_t's file or the published weights."""
    path_t, model_t = options["path_t"], options["model_t"]
    if options["pretrained_t"]:
        if path_t:
            raise UsageError("--pretrained_t and --path_t both give the teacher's weights; pass one")
        if not is_external(model_t):
            raise UsageError("--pretrained_t needs --model_t torchvision:NAME (or timm:NAME)")
        with external_errors():
            source, arch = external.split_name(model_t)
            if source == "torchvision":
                _, _, categories = external.torchvision_weights_file(arch)
                if categories and categories != num_classes:
                    raise UsageError(f"torchvision's published {arch} weights predict {categories} classes, but "
                                     f"--data_root has {num_classes}; fine-tune a teacher on your classes with "
                                     f"python scripts/train_teacher.py --model {model_t} --pretrained")
            return external.published_state(model_t), f"published {model_t} weights", {}
    if not path_t or not os.path.isfile(path_t):
        given = f"teacher checkpoint {path_t} not found" if path_t else "no teacher checkpoint given"
        raise UsageError(f"{given}; pass --path_t FILE (e.g. from scripts/train_teacher.py) or --pretrained_t")
    checkpoint = load_checkpoint(path_t)
    return model_state(checkpoint, path_t), path_t, checkpoint_config(checkpoint)


def check_stage_flags(options, cls):
    """A stage-comparing method (`cls.needs_stages`) with an external model needs its stage modules named."""
    if not cls.needs_stages:
        return
    for name, flag, given in ((options["model_s"], "--feature_modules", options["feature_modules"]),
                              (options["model_t"], "--feature_modules_t", options["feature_modules_t"])):
        if is_external(name) and not given:
            raise UsageError(f"--distill {options['distill']} compares intermediate stages; name {name}'s with "
                             f"{flag} a,b,c (e.g. layer2,layer3,layer4), or use a method on the last map and the "
                             "logits (NORM, kd, crd, dkd, dist, ...)")


def resolve(profile, opt, cls):
    """The student job of a command that names an external architecture or a user-data flag (`uses_own_path`), for
    the method class `cls`; every user error surfaces as a one-line UsageError or DatasetError."""
    # given or not, every run of this path saves all of these flags in its config (export and evaluation read them)
    options = {**dict.fromkeys(STUDENT_FLAGS), **vars(opt)}
    check_split_seed(options)
    check_stage_flags(options, cls)
    for name in (opt.model_s, opt.model_t):
        if is_external(name):
            with external_errors():
                external.check_name(name)
    folders = profile.own_models == "folders"  # else the CIFAR script: its fixed 32-px sets, no class folders
    if not folders:
        options["image_size"] = profile.probe_size  # saved in the config: export and evaluation rebuild a ViT at it
    image_size = options["image_size"]
    path_t = options["path_t"]
    teacher_split = os.path.join(os.path.dirname(os.path.abspath(path_t)), SPLIT_FILE) if path_t else None
    inherited = teacher_split if options["val_split"] else None
    if folders:  # the classes first: a folder without images is refused before any model is built
        classes = user_data(options, inherited)[0].classes
        num_classes = len(classes)
    else:
        classes, num_classes = None, profile.num_classes(opt)
    state, source, t_config = teacher_state(options, num_classes)
    if classes is not None:
        check_classes(t_config.get("classes"), classes, path_t)
    model_t = (opt.model_t or t_config.get("model_s") or t_config.get("model")
               or infer_teacher_name(profile.zoo, state, path_t, num_classes))
    if not is_external(opt.model_s) and opt.model_s not in profile.zoo:
        build_model(profile.zoo, opt.model_s, num_classes, "--model_s")  # raises the one-line error
    weights = cls.weights(opt)
    lr = profile.default_learning_rate(opt.model_s) if opt.learning_rate is None else opt.learning_rate
    # the class names and count are saved in config.json: export and evaluation read them
    options.update(learning_rate=lr, model_t=model_t, classes=list(classes) if classes else None,
                   num_classes=num_classes, **weight_options(weights))
    tagged = argparse.Namespace(**{**options, "model_t": file_tag(model_t), "model_s": file_tag(opt.model_s)})
    data_tag = (os.path.basename(os.path.normpath(opt.data_root)) if folders else "") or opt.dataset
    run_dir = os.path.join(opt.save_root, "student_model", run_name(tagged, weights, file_tag(data_tag)))
    contrast = cls.contrast_sampling(argparse.Namespace(**options))
    data = UserFolder(run_dir, inherited, contrast) if folders else None

    def build(options, n_data):
        """Teacher and student networks and the method joining them; the split saved, the module choices logged
        and the teacher checked before training."""
        nonlocal state
        if is_external(model_t):
            teacher = load_external(model_t, num_classes, image_size, options, role="t", flag="--path_t", state=state,
                                    path=source, stages=options["feature_modules_t"])
        else:
            teacher = load_model_state(profile.zoo, model_t, state, source, num_classes, "--model_t")
        state = None  # the networks hold the weights now
        student = own_student(profile, options, num_classes, image_size)
        method = build_method(cls, student, teacher, options, n_data, image_size, profile)

        def check(trainer, runtime):
            if data is not None:
                data.save(options, runtime)
            for role, model, name in (("teacher", teacher, model_t), ("student", student, opt.model_s)):
                if is_external(name):
                    trainer.log(f"{role} {name}: {describe(model, image_size)}")
            check_teacher(trainer, runtime, teacher, options)

        # method.student, as for the paper's models: the model as it predicts (SimKD wraps it)
        return method, method.student, run_record(options), check

    # Job.image_size is what load_datasets resizes to: the CIFAR sets keep their own 32 px
    return Job(MappingProxyType(options), run_dir, file_tag(opt.model_s), contrast, options["init_epochs"],
               image_size if folders else None, build, datasets=data)


def own_student(profile, options, num_classes, image_size):
    """The student network: an external architecture (with --pretrained_s its published backbone), or the zoo's."""
    name = options["model_s"]
    if not is_external(name):
        return build_model(profile.zoo, name, num_classes, "--model_s")
    student = load_external(name, num_classes, image_size, options, role="s", flag="--model_s",
                            stages=options["feature_modules"])
    if options["pretrained_s"]:
        with external_errors():
            published = external.published_state(name, "--pretrained_s")
        load_backbone(student.model, published, name)
    return student
