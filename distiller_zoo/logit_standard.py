"""Logit standardization: Sun et al., "Logit Standardization in Knowledge Distillation" (CVPR 2024).

Every KD-style term (KD, DKD, DIST) sees z-scored logits, z~ = (z - mean_c z) / (std_c z + 1e-7) with torch's
unbiased std over the classes, for the student and the teacher, at the reference's base temperature and weight.
Different from NORM's `-c`: that is 2.5 * layer_norm(z) (biased variance, eps inside the root) in the CE and KD;
this leaves the CE on raw logits and standardizes only inside the KD-style terms, at its own temperature.

Per-pair defaults come from the names of the reference's CIFAR-100 logs: `kd,<teacher>,<student>,T,w` and
`dkd,<teacher>,<student>,T,w[,beta]` (β is DKD's own, before the reference multiplies α and β by w).
"""
import torch.nn.functional as F

from helper.errors import UsageError
from helper.argtypes import non_negative_float, positive_float
from .registry import add_argument_once

LS_BASE_T, LS_WEIGHT = 2.0, 9.0  # the reference's --base-temp and --kd-weight defaults

# (teacher, student) -> (T, w) of KD+LS
LS_KD = {
    ("ResNet50", "MobileNetV2"): (3.0, 1.0), ("resnet110", "resnet20"): (4.0, 12.0),
    ("resnet32x4", "wrn_16_2"): (3.0, 9.0), ("resnet32x4", "wrn_40_2"): (3.0, 9.0),
    ("vgg13", "MobileNetV2"): (3.0, 9.0), ("vgg13", "vgg8"): (3.0, 9.0), ("wrn_40_2", "MobileNetV2"): (3.0, 9.0),
}
# (teacher, student) -> (T, w, DKD beta) of DKD+LS; a pair not listed takes (2, 9) and DKD's own beta
LS_DKD = {
    ("ResNet50", "MobileNetV2"): (2.0, 15.0, 2.0), ("resnet110", "resnet20"): (2.0, 15.0, 2.0),
    ("resnet110", "resnet32"): (2.0, 15.0, 2.0), ("resnet32x4", "wrn_16_2"): (2.0, 9.0, 2.0),
    ("resnet32x4", "wrn_40_2"): (2.0, 9.0, 8.0), ("resnet56", "resnet20"): (3.0, 18.0, 2.0),
    ("vgg13", "MobileNetV2"): (3.0, 9.0, 2.0), ("vgg13", "vgg8"): (2.0, 15.0, 2.0),
    ("wrn_40_2", "MobileNetV2"): (2.0, 15.0, 2.0), ("wrn_40_2", "resnet8x4"): (2.0, 18.0, 2.0),
    ("wrn_40_2", "wrn_16_2"): (2.0, 12.0, 2.0), ("wrn_40_2", "wrn_40_1"): (2.0, 12.0, 2.0),
}


def standardize(logits):
    """The reference's z-score over the classes: (z - mean) / (1e-7 + unbiased std)."""
    mean = logits.mean(dim=-1, keepdim=True)
    std = logits.std(dim=-1, keepdim=True)
    return (logits - mean) / (1e-7 + std)


def ls_kd_loss(student_logits, teacher_logits, temperature):
    """KD on standardized logits as the reference computes it: T^2 * mean over the batch of sum_c KL."""
    log_p_s = F.log_softmax(standardize(student_logits) / temperature, dim=1)
    p_t = F.softmax(standardize(teacher_logits) / temperature, dim=1)
    return F.kl_div(log_p_s, p_t, reduction="none").sum(1).mean() * temperature ** 2


def add_ls_arguments(parser):
    """--logit_standardize and its temperature and weight (defaults None: per pair, see the tables)."""
    # default None, not False: runs from before the flag existed resume with the same configuration
    add_argument_once(parser, "--logit_standardize", action="store_true", default=None,
                      help="z-score the student and teacher logits in every KD-style term (KD, DKD, DIST), at "
                           "--ls_T and weight --ls_weight (Sun et al. 2024); not NORM's -c layer norm")
    add_argument_once(parser, "--ls_T", type=positive_float, default=None,
                      help="base temperature of --logit_standardize (default: the reference's per pair, mostly 2)")
    add_argument_once(parser, "--ls_weight", type=non_negative_float, default=None,
                      help="weight w of the standardized KD-style term (default: the reference's per pair, mostly 9)")


def logit_standardize_on(opt):
    """Whether --logit_standardize was given."""
    return bool(getattr(opt, "logit_standardize", None))


def ls_settings(opt, table):
    """(T, w, extra...) of --logit_standardize for this pair: the flags where given, else `table`'s entry."""
    pair = (getattr(opt, "model_t", None), getattr(opt, "model_s", None))
    entry = table.get(pair)
    temperature, weight = entry[:2] if entry else (LS_BASE_T, LS_WEIGHT)
    if getattr(opt, "ls_T", None) is not None:
        temperature = opt.ls_T
    if getattr(opt, "ls_weight", None) is not None:
        weight = opt.ls_weight
    return (temperature, weight, *(entry[2:] if entry else ()))


def refuse_without_kd_terms(name, has_terms):
    """One-line refusal of --logit_standardize for a method that has no KD-style term to standardize."""
    if not has_terms:
        raise UsageError(f"--logit_standardize standardizes the logits of KD-style terms (KD, DKD, DIST), and "
                         f"--distill {name} has none here; give -a > 0 for a KD term, or leave the flag out")
