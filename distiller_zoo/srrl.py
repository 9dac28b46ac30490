"""SRRL: Yang et al., "Knowledge Distillation via Softmax Regression Representation Learning" (ICLR 2021).

Reference: the CIFAR port in DefangChen/SimKD (`models/util.py` class SRRL, the `srrl` branch of
`helper/loops.py`, `scripts/run_distill.sh`: -c 1 -d 1 -b 1). The original code (jingyang2017/KD_SRRL) is
ImageNet-only; the port works on the pooled vectors `feat[-1]`.

t' = ReLU(BN(conv1x1(f_s[-1] as a 1x1 map))) has the teacher's width; the loss is
MSE(t', f_t[-1]) + MSE(cls_t(t'), z_t), with cls_t the teacher's frozen linear classifier.
"""
import torch.nn.functional as F
from torch import nn

from models.norm import probe_features
from .base import Distiller
from .registry import register


def connector(in_channels, out_channels):
    """The reference's `transfer`: a bias-free 1x1 convolution, BatchNorm and ReLU (PyTorch's default init)."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels),
                         nn.ReLU(inplace=True))


def srrl_losses(connected, pooled_t, reused_logits, logits_t):
    """(feature term, softmax-regression term): MSE(t', f_t) and MSE(cls_t(t'), z_t), each nn.MSELoss's mean."""
    return F.mse_loss(connected, pooled_t), F.mse_loss(reused_logits, logits_t)


@register("srrl")
class SRRL(Distiller):
    """SRRL: CE + KD + beta * [MSE(t', f_t[-1]) + MSE(cls_t(t'), z_t)], t' the connector's image of f_s[-1];
    logged as `srrl_fm` and `srrl_sr` (each weighted by beta; the reference sums them)."""

    defaults = {"gamma": 1.0, "alpha": 1.0, "beta": 1.0}

    def __init__(self, student, teacher, connector_module, **weights):
        super().__init__(student, teacher, **weights)
        self.connector = connector_module

    @classmethod
    def build(cls, student, teacher, opt, data):
        feat_s = probe_features(student, data["image_size"], data["in_channels"])
        feat_t = probe_features(teacher, data["image_size"], data["in_channels"])
        if feat_s[-1].dim() != 2 or feat_t[-1].dim() != 2:
            raise ValueError("SRRL works on the pooled feature vectors feat[-1], and one of the models has none")
        name = getattr(teacher, "classifier_name", None)
        if not name or not isinstance(teacher.get_submodule(name), nn.Linear) or \
                teacher.get_submodule(name).in_features != feat_t[-1].shape[1]:
            raise ValueError(f"SRRL reuses the teacher's linear classifier on its pooled feature, and the "
                             f"{type(teacher).__name__} teacher's classifier does not take feat[-1]")
        return cls(student, teacher, connector(feat_s[-1].shape[1], feat_t[-1].shape[1]), **cls.weights(opt))

    def teacher_head(self):
        """The teacher's frozen linear classifier."""
        return self.teacher.get_submodule(self.teacher.classifier_name)

    def feature_losses(self, feat_s, feat_t, logits_s, logits_t, index, contrast_index):
        connected = self.connector(feat_s[-1][:, :, None, None]).flatten(1)
        feature, regression = srrl_losses(connected, feat_t[-1], self.teacher_head()(connected), logits_t)
        return {"srrl_fm": self.beta * feature, "srrl_sr": self.beta * regression}
