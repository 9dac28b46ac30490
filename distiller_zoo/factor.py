"""FT: Kim et al., "Paraphrasing Complex Network: Network Compression via Factor Transfer" (NeurIPS 2018).

On the last spatial maps feat[-2]: L_ft = mean |phi(tau(f_s)) - phi(pi(f_t))|, phi(f) = L2-normalise(mean_c f^2)
(after pooling the larger map to the smaller size), tau the trainable translator, pi the encoder of a paraphraser
pre-trained in an init stage on mean((dec(pi(f_t)) - f_t)^2) and frozen afterwards.
"""
import torch
import torch.nn.functional as F
from torch import nn

from models.norm import probe_features
from .two_stage import TwoStageDistiller
from .attention import attention_map, pool_to_smaller
from .registry import register

# RepDistiller pre-trains the paraphraser at lr 0.01 for these students, at the main learning rate for the others.
SMALL_INIT_LR_STUDENTS = ("resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
                          "resnet8x4", "resnet32x4", "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2")


def _conv_stack(channels, transposed=False, batch_norm=False):
    """3x3 stride-1 (transposed) convs through `channels`, each followed by optional BN and LeakyReLU(0.1)."""
    layers = []
    for c_in, c_out in zip(channels[:-1], channels[1:]):
        conv = nn.ConvTranspose2d if transposed else nn.Conv2d
        layers.append(conv(c_in, c_out, kernel_size=3, stride=1, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(c_out))
        layers.append(nn.LeakyReLU(0.1))
    return nn.Sequential(*layers)


class Paraphraser(nn.Module):
    """Auto-encoder of a teacher map of C channels through a factor of int(k*C) channels (no BN)."""

    def __init__(self, channels, k=0.5):
        super().__init__()
        factor = int(channels * k)
        self.encoder = _conv_stack([channels, channels, factor, factor])
        self.decoder = _conv_stack([factor, factor, channels, channels], transposed=True)

    def forward(self, x):
        """(factor, reconstruction)."""
        factor = self.encoder(x)
        return factor, self.decoder(factor)


class Translator(nn.Module):
    """Student map of C_s channels to a factor of int(k*C_t) channels: three 3x3 convs with BN and LeakyReLU(0.1)."""

    def __init__(self, s_channels, t_channels, k=0.5):
        super().__init__()
        factor = int(t_channels * k)
        self.encoder = _conv_stack([s_channels, s_channels, factor, factor], batch_norm=True)

    def forward(self, x):
        return self.encoder(x)


def factor_loss(factor_s, factor_t):
    """Mean absolute difference of the normalised factor attention maps, after pooling to the smaller size."""
    factor_s, factor_t = pool_to_smaller(factor_s, factor_t)
    return (attention_map(factor_s) - attention_map(factor_t)).abs().mean()


@register("factor")
class FactorTransfer(TwoStageDistiller):
    """FT: paraphraser pre-trained in the init stage then frozen, translator trained; RepDistiller's -a 0 -b 200."""

    defaults = {"gamma": 1.0, "alpha": 0.0, "beta": 200.0}

    def __init__(self, student, teacher, paraphraser, translator, **weights):
        super().__init__(student, teacher, **weights)
        self.paraphraser, self.translator = paraphraser, translator
        self.set_stage("main")

    @classmethod
    def build(cls, student, teacher, opt, data):
        f_s = probe_features(student, data["image_size"], data["in_channels"])[-2]
        f_t = probe_features(teacher, data["image_size"], data["in_channels"])[-2]
        if f_s.dim() != 4 or f_t.dim() != 4:
            raise ValueError("FT needs a spatial map at feat[-2] in both networks")
        return cls(student, teacher, Paraphraser(f_t.shape[1]), Translator(f_s.shape[1], f_t.shape[1]),
                   **cls.weights(opt))

    def init_modules(self):
        return [self.paraphraser]

    def init_only_modules(self):
        return [self.paraphraser]

    def init_learning_rate(self, opt):
        return 0.01 if getattr(opt, "model_s", None) in SMALL_INIT_LR_STUDENTS else opt.learning_rate

    def init_loss(self, images):
        with torch.no_grad():  # the student takes no part in the paraphraser's pre-training
            logits = self.student(images)
        f_t = self.teacher_forward(images)[0][-2]
        _, reconstruction = self.paraphraser(f_t)
        return logits, F.mse_loss(reconstruction, f_t)

    def feature_losses(self, feat_s, feat_t, logits_s, logits_t, index, contrast_index):
        with torch.no_grad():
            factor_t = self.paraphraser.encoder(feat_t[-2])
        return {"factor": self.beta * factor_loss(self.translator(feat_s[-2]), factor_t)}
