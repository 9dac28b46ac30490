"""Distillation methods: one module per method, selected by `--distill NAME` through the registry."""
from . import (abound, attention, correlation, crd, dist, dkd, factor, fsp, hint, kd,  # noqa: F401 - importing
               kdsvd, norm, nst, ofd, pkt, reviewkd, rkd, semckd, similarity, simkd, srrl, vid)  # registers them
from .compose import combination_class, canonical_name, is_combination
from .base import Distiller, Vanilla, kd_loss, normalize_logits
from .registry import METHODS, register

__all__ = ["METHODS", "Distiller", "Vanilla", "kd_loss", "method_class", "method_name", "normalize_logits",
           "register"]


def method_name(name):
    """The registered spelling of `name`, matched case-insensitively ('norm' -> 'NORM'); `name` itself if none.

    An argparse type for --distill: opt.distill keeps the registered spelling, which names the run folder, and an
    unknown name passes through unchanged so that `method_class` reports it. A combination 'norm+DKD' is spelled
    part by part ('NORM+dkd').
    """
    if is_combination(name):
        return canonical_name(name)
    if name in METHODS:
        return name
    # register() keeps the lowercased names unique, so at most one matches
    return next((known for known in METHODS if known.lower() == str(name).lower()), name)


def method_class(name):
    """The class registered as `name` (any letter case), or of the combination 'A+B'; KeyError lists the valid
    names (a combination that cannot be trained is a UsageError)."""
    if is_combination(name):
        return combination_class(name)
    known = method_name(name)
    if known not in METHODS:
        raise KeyError(f"unknown --distill {name!r}; choose one of {', '.join(sorted(METHODS))}")
    return METHODS[known]
