"""The deployed model: the eval-mode NORM FT folded into the classifier (the plain architecture), or kept as one
1x1 convolution where it cannot be folded (WRN: FT -> BN -> ReLU -> pool)."""
import copy
from collections import namedtuple

import torch
from torch import nn

Deployed = namedtuple("Deployed", "module state kind")  # state: the plain model's state dict (None when kept FT)


class AffineTransform(nn.Module):
    """An eval-mode NORM FT as one 1x1 convolution with bias (both BNs and the identity folded in): (y, y)."""

    def __init__(self, ft):
        super().__init__()
        a, c = ft.as_affine()
        self.conv = nn.Conv2d(a.shape[1], a.shape[0], 1, bias=True)
        with torch.no_grad():
            self.conv.weight.copy_(a[:, :, None, None])
            self.conv.bias.copy_(c)

    def forward(self, x):
        y = self.conv(x)
        return y, y  # the host's (output, matched feature) contract


def deployed_student(model, zoo, name):
    """The model to deploy for the eval-mode student `model` (architecture `name` of `zoo`).

    kind 'folded': the plain architecture with the FT folded into the classifier (its state dict in `state`);
    'kept_ft': a copy whose FT is one 1x1 convolution (the FT cannot be folded); 'plain': the student had no FT;
    'simkd': a models.simkd.SimKDStudent, deployed as it is (its state dict in `state`).
    """
    from models.norm import fold_transform_into_classifier
    from helper.teachers.loading import build_model

    model.eval()
    if getattr(model, "deploys_as_is", False):  # SimKD: backbone + projector + the teacher's classifier, no FT
        return Deployed(model, model.state_dict(), "simkd")
    if model.feature_transform is not None and not getattr(model, "transform_foldable", False):
        kept = copy.deepcopy(model)
        kept.feature_transform = AffineTransform(model.feature_transform)
        return Deployed(kept.eval(), None, "kept_ft")
    state = fold_transform_into_classifier(model)
    plain = build_model(zoo, name, state[model.classifier_name + ".weight"].shape[0], "--model_s")
    if getattr(model, "norm_student", False):
        plain.prepare_norm_student()  # MobileNetV2's NORM variant: same keys, two ReLUs fewer
    plain.load_state_dict(state, strict=True)
    return Deployed(plain.eval(), state, "folded" if model.feature_transform is not None else "plain")
