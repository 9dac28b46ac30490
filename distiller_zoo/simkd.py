"""SimKD: Chen et al., "Knowledge Distillation with the Reused Teacher Classifier" (CVPR 2022).

Reference: DefangChen/SimKD (`models/util.py` class SimKD, the `simkd` branches of `helper/loops.py`,
`scripts/run_distill.sh`: -c 0 -d 0 -b 1, factor 2).

The student's last map `feat_s[-2]` goes through a projector (models.simkd.projector) onto the teacher's channels;
the larger of the two maps is first average-pooled to the other's height. The loss is MSE(projected, teacher map)
and the student predicts with the teacher's frozen classifier on the pooled projected map, in training and after
it: the student becomes a models.simkd.SimKDStudent (backbone + projector + classifier), which is what validation,
the checkpoints and the exports hold.

The teacher map is the map the teacher's classifier pools. For RepDistiller's ResNets and VGGs that is `feat_t[-2]`,
the reference's choice; for a WRN teacher `feat_t[-2]` precedes the final BatchNorm+ReLU and for a ShuffleV2 teacher
the final conv2+BN+ReLU, so those are applied (frozen, eval mode) to reach it. Any other teacher is checked on a
probe and refused when its classifier does not pool `feat_t[-2]`.
"""
import torch
import torch.nn.functional as F

from helper.argtypes import positive_int
from helper.errors import UsageError
from models.cifar.shufflenetv2 import ShuffleV2
from models.cifar.wrn import WideResNet
from models.norm import probe_features
from models.simkd import SimKDStudent, frozen_copy, projector
from .base import Distiller, kd_loss, normalize_logits
from .registry import add_argument_once, register


def classifier_input_map(teacher, feats):
    """The map the teacher's classifier pools, from its is_feat list (the teacher's modules run as they are)."""
    if isinstance(teacher, WideResNet):  # feat[-2] is block3's output before the final BN+ReLU
        return F.relu(teacher.bn1(feats[-2]))
    if isinstance(teacher, ShuffleV2):  # feat[-2] is layer3's output before conv2+BN+ReLU
        return F.relu(teacher.bn2(teacher.conv2(feats[-2])))
    return feats[-2]


def teacher_classifier(teacher):
    """The teacher's final nn.Linear (its `classifier_name`); ValueError when it has none."""
    name = getattr(teacher, "classifier_name", None)
    module = teacher.get_submodule(name) if name else None
    if not isinstance(module, torch.nn.Linear):
        raise ValueError(f"the {type(teacher).__name__} teacher has no linear classifier to reuse")
    return module


def check_pooled_map(teacher, image_size, in_channels):
    """(probe features, the map the classifier pools) of `teacher`; ValueError unless global average pooling that
    map gives the teacher's pooled feature and its classifier gives the teacher's logits (checked on a probe)."""
    was_training = teacher.training
    teacher.eval()  # its BatchNorm statistics must not move
    try:
        with torch.no_grad():
            param = next(teacher.parameters())
            x = torch.randn(2, in_channels, image_size, image_size, device=param.device, dtype=param.dtype)
            feats, logits = teacher(x, is_feat=True)
            pooled_map = classifier_input_map(teacher, feats)
            pooled = F.adaptive_avg_pool2d(pooled_map, 1).flatten(1) if pooled_map.dim() == 4 else None
            fits = (pooled is not None and pooled.shape == feats[-1].shape
                    and torch.allclose(pooled, feats[-1], rtol=1e-4, atol=1e-5)
                    and torch.allclose(teacher_classifier(teacher)(feats[-1]), logits, rtol=1e-4, atol=1e-5))
    finally:
        teacher.train(was_training)
    if not fits:
        raise ValueError(f"SimKD reuses the teacher's classifier on the map it pools, and the "
                         f"{type(teacher).__name__} teacher's classifier does not pool its last map feat[-2]")
    return feats, pooled_map


def simkd_loss(projected, target):
    """SimKD's loss: the mean squared error between the projected student map and the teacher map (nn.MSELoss)."""
    return F.mse_loss(projected, target)


@register("simkd")
class SimKD(Distiller):
    """SimKD: beta * MSE(projector(f_s[-2]), teacher map); the student's logits are the teacher classifier's on the
    pooled projection. -r/-a weight CE/KD on the backbone's own logits, as the reference (its -c 0 -d 0 -b 1)."""

    defaults = {"gamma": 0.0, "alpha": 0.0, "beta": 1.0}

    @classmethod
    def add_arguments(cls, parser):
        add_argument_once(parser, "--simkd_factor", type=positive_int, default=2,
                          help="SimKD: projector bottleneck C_t / factor (reference -f, default 2)")

    @classmethod
    def weights(cls, opt):
        """As every method's; --logit_standardize is refused: SimKD's own CE/KD terms act on the backbone's logits
        and are not the KD-style terms the flag standardizes."""
        chosen = super().weights(opt)
        if chosen.get("logit_standardize"):
            raise UsageError("--logit_standardize does not apply to --distill simkd (its prediction is the teacher "
                             "classifier's; its CE/KD terms are the reference's, on the backbone's own logits); "
                             "leave the flag out")
        return chosen

    @classmethod
    def build(cls, student, teacher, opt, data):
        factor = getattr(opt, "simkd_factor", 2)
        feat_s = probe_features(student, data["image_size"], data["in_channels"])
        _, teacher_map = check_pooled_map(teacher, data["image_size"], data["in_channels"])
        if feat_s[-2].dim() != 4:
            raise ValueError(f"SimKD projects the student's last map, and the {type(student).__name__} student's "
                             "feat[-2] is not a spatial map")
        s_h, t_h = feat_s[-2].shape[2], teacher_map.shape[2]
        model = SimKDStudent(student, projector(feat_s[-2].shape[1], teacher_map.shape[1], factor),
                             frozen_copy(teacher_classifier(teacher)), pool_to=t_h if s_h > t_h else 0)
        return cls(model, teacher, **cls.weights(opt))

    def forward(self, images, targets, index=None, contrast_index=None):
        _, own_logits, projected, logits = self.student.forward_parts(images)
        feat_t, logits_t = self.teacher_forward(images)
        with torch.no_grad():
            target = classifier_input_map(self.teacher, feat_t)
            if target.shape[2] > projected.shape[2]:  # the reference pools the teacher map to the student's height
                size = projected.shape[2]
                target = F.adaptive_avg_pool2d(target, (size, size))
        # the reference computes CE and KD before it replaces the logits: they act on the backbone's own classifier
        # (weight 0 by default, which still puts that classifier in the graph, as DDP needs)
        z_s = normalize_logits(own_logits, self.logit_scale)
        losses = {"ce": self.gamma * F.cross_entropy(z_s, targets)}
        if self.alpha:
            losses["kd"] = self.alpha * kd_loss(z_s, normalize_logits(logits_t, self.logit_scale), self.kd_T)
        losses["simkd"] = self.beta * simkd_loss(projected.float(), target.float())
        return logits, losses
