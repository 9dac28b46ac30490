"""Command-line flags shared by the training scripts (the official names and defaults)."""
import argparse
import json
import math
import os
import re
import secrets

from dataset.fashion_mnist import DEFAULT_ROOT
from .errors import ArgumentParser, UsageError


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


def int_list(text):
    """argparse type: '150,180,210' -> [150, 180, 210] (epochs, so each an integer >= 1); at least one."""
    epochs = [positive_int(x) for x in str(text).split(",") if x.strip()]
    if not epochs:  # "" or "," would be [], a silently constant learning rate
        raise argparse.ArgumentTypeError("give at least one epoch, e.g. 150,180,210")
    return epochs


int_list.__name__ = "comma-separated list of integers >= 1"


def base_parser(description, *, epochs, batch_size, learning_rate, weight_decay, lr_decay, lr_decay_epochs,
                dataset, datasets, save_freq=40, num_workers=8):
    """A parser with the optimisation, data, device and bookkeeping flags every script has."""
    p = ArgumentParser(description=description)
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=positive_int, default=epochs, help="number of training epochs")
    g.add_argument("--batch_size", type=positive_int, default=batch_size,
                   help="the global batch size (the paper's meaning), split over the DDP processes")
    g.add_argument("--learning_rate", type=positive_float, default=learning_rate,
                   help="initial learning rate (default: the official one for the model)")
    g.add_argument("--lr_decay", choices=["step", "cos"], default=lr_decay, help="learning-rate schedule")
    g.add_argument("--lr_decay_epochs", type=int_list, default=lr_decay_epochs,
                   help="epochs after which a step schedule decays, e.g. 150,180,210")
    g.add_argument("--lr_decay_rate", type=positive_float, default=0.1, help="step-schedule decay factor")
    g.add_argument("--weight_decay", type=non_negative_float, default=weight_decay, help="weight decay")
    g.add_argument("--momentum", type=fraction_below_one, default=0.9, help="SGD momentum, in [0, 1)")
    g = p.add_argument_group("data")
    g.add_argument("--dataset", choices=datasets, default=dataset, help="dataset")
    g.add_argument("--data_root", default=DEFAULT_ROOT, help="folder holding the dataset")
    g.add_argument("--download", action="store_true", help="download the dataset when it is missing (online)")
    g.add_argument("--num_workers", type=non_negative_int, default=None,
                   help=f"data-loading workers per process (default: {num_workers}, capped by the CPUs available)")
    g = p.add_argument_group("run")
    g.add_argument("-t", "--trial", type=trial_name, default="0", help="name of this trial (part of the run folder)")
    g.add_argument("--save_root", default="./save", help="where run folders and results.jsonl go")
    g.add_argument("--save_freq", type=positive_int, default=save_freq, help="write ckpt_epoch_E.pth every E")
    g.add_argument("--print_freq", type=positive_int, default=100, help="log every this many steps")
    # The inert compatibility flags default to SUPPRESS: left out, they leave no attribute on opt, so config.json
    # and the resume check (which compares every option) are what they were before these flags were accepted.
    g.add_argument("--tb_freq", type=positive_int, default=argparse.SUPPRESS,
                   help="accepted for compatibility with the official and RepDistiller scripts (a TensorBoard "
                        "frequency in steps there, default 500, unused by NORM's); no effect: TensorBoard gets "
                        "one point per epoch")
    g.add_argument("--resume", action="store_true", help="continue the run in its folder from its last checkpoint")
    g.add_argument("--seed", type=seed_int, default=None, help="random seed (default: drawn and saved in config.json)")
    g.add_argument("--progress", action="store_true", default=None,
                   help="force tqdm progress bars (default: only on a terminal)")
    g = p.add_argument_group("device and speed")
    g.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:K")
    g.add_argument("--gids", type=gpu_ids, default=None,
                   help="the official GPU ids, e.g. 0,1,2,3: one id runs on that GPU, several start DDP over them "
                        "(one process each, as torchrun; --batch_size stays the global batch); ids index the GPUs "
                        "this command sees (CUDA_VISIBLE_DEVICES), as cuda:K does")
    g.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none", help="mixed precision")
    g.add_argument("--channels_last", action="store_true", help="channels-last memory format")
    g.add_argument("--deterministic", action="store_true", help="deterministic kernels (bit-exact resume on CPU)")
    g.add_argument("--sync_bn", action="store_true", help="SyncBatchNorm across DDP ranks")
    g.add_argument("--fused_sgd", action="store_true",
                   help="fused SGD kernel (CUDA; always used with --amp fp16 there, which then syncs no step)")
    g.add_argument("--compile", action="store_true", help="torch.compile the student and the teacher")
    g.add_argument("--no_inference_teacher", action="store_true", help="run the teacher module itself in the step "
                   "(default: a BatchNorm-folded copy in its measured memory format, same outputs up to rounding)")
    g.add_argument("--gpu_data", action="store_true",
                   help="keep CIFAR/Fashion-MNIST on the device and augment there (same distribution)")
    p.set_defaults(official_num_workers=num_workers)
    return p


def add_official_student_flags(parser, *, num_cls):
    """The official student scripts' flags that do nothing there: accepted so official command lines run unchanged.

    `num_cls`: how `--num_cls` is taken: "checked" (the CIFAR script: it must equal the dataset's class count, see
    `check_num_cls`) or "inert" (the official ImageNet script forced it to 1000; here the class folders decide).
    """
    g = parser.add_argument_group("accepted for compatibility with the official NORM scripts (no effect)")
    # "-b1" must be an option of its own: without it argparse reads "-b1 2" as "-b 1" plus a stray "2"
    g.add_argument("-b1", "--beta1", type=finite_float, default=argparse.SUPPRESS,
                   help="inert: the official code overwrites it every epoch with the beta1 schedule (see README); "
                        "the NORM loss weight is -b (written apart: -b 1)")
    g.add_argument("--kd-warm-up", type=finite_float, default=argparse.SUPPRESS,
                   help="inert: the official code parses it (default 20.0) and never reads it")
    g.add_argument("--marginal_relu", action="store_true", default=argparse.SUPPRESS,
                   help="inert: a no-op in the official code (it clips already post-ReLU features at a negative "
                        "bound)")
    if num_cls == "checked":
        add_num_cls_flag(g)
    else:
        g.add_argument("--num_cls", type=positive_int, default=argparse.SUPPRESS,
                       help="inert: the official ImageNet script sets it to 1000 whatever is given; here the number "
                            "of class folders decides")
    return parser


def add_num_cls_flag(parser):
    """`--num_cls N`, the official CIFAR scripts' class count: here the dataset sets it, so N is only checked."""
    parser.add_argument("--num_cls", type=positive_int, default=argparse.SUPPRESS,
                        help="number of classes, accepted for compatibility: it must equal --dataset's (cifar100: "
                             "100, cifar10: 10, fashion_mnist: 10), and then it has no effect")
    return parser


def check_num_cls(opt, classes):
    """`classes` (the dataset's class count); a UsageError if `--num_cls` was given and says otherwise."""
    given = getattr(opt, "num_cls", None)
    if given is not None and given != classes:
        raise UsageError(f"--num_cls {given} disagrees with --dataset {opt.dataset}, which has {classes} classes; "
                         f"pass --num_cls {classes} or leave it out")
    return classes


def resolve_seed(opt, run_dir):
    """Without --seed: reuse the run's saved seed on --resume, else draw one (it is saved in config.json)."""
    if opt.seed is None and opt.resume:
        try:
            with open(os.path.join(run_dir, "config.json")) as handle:
                opt.seed = json.load(handle).get("seed")
        except (OSError, ValueError):
            pass
    if opt.seed is None:
        opt.seed = secrets.randbelow(2**31)
    return opt
