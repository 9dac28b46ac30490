"""Command-line flags shared by the training scripts (the official names and defaults)."""
import argparse
import secrets

from dataset.fashion_mnist import DEFAULT_ROOT
from distiller_zoo import METHODS, method_name
from distiller_zoo.compose import beta_weights
from helper.argtypes import (finite_float, fraction_below_one, gpu_ids, int_list, non_negative_float,
                             non_negative_int, positive_float, positive_int, seed_int, trial_name)
from helper.cli.entry import ArgumentParser
from helper.errors import UsageError
from helper.runs.config import saved_config


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


def profile_parser(profile):
    """`base_parser` with the defaults of `profile`'s script (the learning rate is resolved per model, later)."""
    return base_parser(profile.description, epochs=profile.epochs, batch_size=profile.batch_size, learning_rate=None,
                       weight_decay=profile.weight_decay, lr_decay=profile.lr_decay,
                       lr_decay_epochs=list(profile.lr_decay_epochs), dataset=profile.dataset,
                       datasets=list(profile.datasets), save_freq=profile.save_freq, num_workers=profile.num_workers)


def teacher_parser(profile):
    """The teacher script's flags: the shared ones, --model, and the official teacher script's --num_cls and -c."""
    p = profile_parser(profile)
    p.add_argument("--model", default=profile.model, help=f"architecture: {', '.join(profile.zoo)}")
    add_num_cls_flag(p)
    p.add_argument("-c", "--ceta", type=finite_float, default=argparse.SUPPRESS,
                   help="inert, accepted for compatibility: the official teacher script scales the logits by it "
                        "only when validating, which changes no accuracy; the teacher trains on raw logits")
    return p


def student_parser(profile):
    """The student script's flags: the shared ones, the paper's distillation flags and every method's own."""
    p = profile_parser(profile)
    g = p.add_argument_group("distillation (paper symbols in brackets)")
    g.add_argument("--path_t", default=None, help="teacher checkpoint ({'model': state_dict} or a state dict)")
    g.add_argument("--model_t", default=None, help="teacher architecture (default: read from the checkpoint)")
    g.add_argument("--model_s", default=profile.model, help="student architecture")
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
    if profile.image_size:
        g.add_argument("--image_size", type=positive_int, default=profile.image_size, help="training crop size")
    for cls in METHODS.values():
        cls.add_arguments(g)
    if profile.own_models:  # torchvision:/timm: architectures (and user image folders: the ImageFolder script)
        from helper.cli.external import add_student_flags
        add_student_flags(p, data=profile.own_models == "folders")
    add_official_student_flags(p, num_cls=profile.official_num_cls)
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


def resolve_seed(seed, *, resume, run_dir):
    """--seed, or without it the run's saved seed on --resume, else a drawn one (it is saved in config.json)."""
    if seed is None and resume:
        seed = (saved_config(run_dir) or {}).get("seed")
    return secrets.randbelow(2**31) if seed is None else seed
