"""KD: Hinton et al., "Distilling the Knowledge in a Neural Network" (2015); the base class computes it."""
from .base import Distiller
from .registry import register


@register("kd")
class KD(Distiller):
    """Cross-entropy plus temperature-scaled KL to the teacher's logits; RepDistiller's -r 0.1 -a 0.9."""

    defaults = {"gamma": 0.1, "alpha": 0.9, "beta": 0.0}
