"""Distillation methods: one module per method, selected by `--distill NAME` through the registry."""
from . import (abound, attention, correlation, crd, factor, fsp, hint, kd, kdsvd,  # noqa: F401 - importing
               norm, nst, pkt, rkd, similarity, vid)  # registers the methods
from .base import Distiller, Vanilla, kd_loss, normalize_logits
from .registry import METHODS, register

__all__ = ["METHODS", "Distiller", "Vanilla", "kd_loss", "method_class", "normalize_logits", "register"]


def method_class(name):
    """The class registered as `name`; KeyError lists the valid names."""
    if name not in METHODS:
        raise KeyError(f"unknown --distill {name!r}; choose one of {', '.join(sorted(METHODS))}")
    return METHODS[name]
