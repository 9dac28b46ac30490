"""KD: Hinton et al., "Distilling the Knowledge in a Neural Network" (2015); the base class computes it.

With --logit_standardize it is KD+LS (Sun et al. 2024): the KD term on z-scored logits at the base temperature,
weight w = 9 (the reference's per pair), CE weight 0.1 as here.
"""
from .base import Distiller
from .logit_standard import add_ls_arguments
from .registry import register


@register("kd")
class KD(Distiller):
    """Cross-entropy plus temperature-scaled KL to the teacher's logits; RepDistiller's -r 0.1 -a 0.9."""

    defaults = {"gamma": 0.1, "alpha": 0.9, "beta": 0.0}

    @classmethod
    def add_arguments(cls, parser):
        """The flags of --logit_standardize (KD+LS)."""
        add_ls_arguments(parser)
