"""CRD: Tian et al., "Contrastive Representation Distillation" (ICLR 2020).

Student and teacher pooled features are embedded (linear + L2 norm) and contrasted, in both directions, with
K negatives kept in two momentum memories; the NCE loss uses a uniform noise distribution Pn = 1/n_data.
"""
import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from models.norm import probe_features
from helper.argtypes import fraction_below_one, positive_float, positive_int
from .base import Distiller
from .registry import add_argument_once, register


class Embed(nn.Module):
    """Linear projection to `dim_out` followed by L2 normalisation."""

    def __init__(self, dim_in, dim_out=128):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x):
        x = self.linear(x.flatten(1))
        return x / x.pow(2).sum(1, keepdim=True).sqrt()


class ContrastMemory(nn.Module):
    """Two memories of n_data embeddings (student, teacher) scored against the other side's anchors."""

    # kept identical on every DDP rank by all-gathering each step's rows: the trainer need not broadcast them
    synchronised_buffers = ("memory_s", "memory_t")

    def __init__(self, feat_dim, n_data, k, temperature=0.07, momentum=0.5):
        super().__init__()
        self.k, self.temperature, self.momentum = k, temperature, momentum
        bound = 1.0 / math.sqrt(feat_dim / 3)
        self.register_buffer("memory_s", torch.rand(n_data, feat_dim) * 2 * bound - bound)
        self.register_buffer("memory_t", torch.rand(n_data, feat_dim) * 2 * bound - bound)
        # normalisation constants Z, estimated once on the first batch (negative = not yet estimated)
        self.register_buffer("z_s", torch.tensor(-1.0))
        self.register_buffer("z_t", torch.tensor(-1.0))
        self._z_checked = False  # avoids reading z back from the device on every step

    def forward(self, emb_s, emb_t, index, contrast_index=None):
        # exp(score / 0.07) magnifies rounding: score in float32 even under autocast
        with torch.autocast(emb_s.device.type, enabled=False):
            return self._scores(emb_s.float(), emb_t.float(), index, contrast_index)

    def _scores(self, emb_s, emb_t, index, contrast_index):
        batch, n_data = emb_s.shape[0], self.memory_s.shape[0]
        if contrast_index is None:  # uniform negatives; the positive comes first
            contrast_index = torch.randint(0, n_data, (batch, self.k + 1), device=emb_s.device)
            contrast_index[:, 0] = index
        # exp(<memory, anchor> / T) for the positive and the K negatives: (batch, K+1)
        scores_s = torch.exp(torch.einsum("bkd,bd->bk", self.memory_t[contrast_index], emb_s) / self.temperature)
        scores_t = torch.exp(torch.einsum("bkd,bd->bk", self.memory_s[contrast_index], emb_t) / self.temperature)
        if not self._z_checked:  # one host sync per process; a resumed run loads z with the buffers
            if self.z_s.item() < 0:  # from every rank's first batch, so all ranks share Z
                self.z_s.fill_(_gather_from_ranks(scores_s.detach()).mean().item() * n_data)
                self.z_t.fill_(_gather_from_ranks(scores_t.detach()).mean().item() * n_data)
            self._z_checked = True
        with torch.no_grad():  # under DDP every rank applies every rank's rows: the memories stay identical
            emb_s, emb_t, index = (_gather_from_ranks(x.detach()) for x in (emb_s, emb_t, index))
            self._update(self.memory_s, emb_s, index)
            self._update(self.memory_t, emb_t, index)
        return scores_s / self.z_s, scores_t / self.z_t

    def _update(self, memory, emb, index):
        mixed = memory[index] * self.momentum + emb.detach().float() * (1 - self.momentum)
        memory.index_copy_(0, index, F.normalize(mixed, dim=1))


def _gather_from_ranks(tensor):
    """The concatenation of `tensor` over all DDP ranks (itself in a single process); equal shapes per rank."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def nce_loss(scores, n_data, eps=1e-7):
    """NCE with noise Pn = 1/n_data: -[log D(positive) + sum log(1 - D(negatives))] averaged over the batch."""
    m = scores.shape[1] - 1
    noise = m / n_data
    positive = torch.log(scores[:, 0] / (scores[:, 0] + noise + eps))
    negative = torch.log(noise / (scores[:, 1:] + noise + eps))
    return -(positive.sum() + negative.sum()) / scores.shape[0]


class CRDLoss(nn.Module):
    """Embeddings + contrast memory + the two-sided NCE loss."""

    def __init__(self, s_dim, t_dim, n_data, feat_dim=128, k=16384, temperature=0.07, momentum=0.5):
        super().__init__()
        self.n_data = n_data
        self.embed_s, self.embed_t = Embed(s_dim, feat_dim), Embed(t_dim, feat_dim)
        self.contrast = ContrastMemory(feat_dim, n_data, k, temperature, momentum)

    @staticmethod
    def add_arguments(parser):
        """The CRD flags with RepDistiller's defaults."""
        add_argument_once(parser, "--feat_dim", type=positive_int, default=128, help="CRD/CC embedding size")
        add_argument_once(parser, "--mode", choices=["exact", "relax"], default="exact",
                          help="CRD positive: the sample itself (exact) or one of its class (relax)")
        add_argument_once(parser, "--nce_k", type=positive_int, default=16384, help="CRD negatives per sample")
        add_argument_once(parser, "--nce_t", type=positive_float, default=0.07, help="CRD temperature")
        add_argument_once(parser, "--nce_m", type=fraction_below_one, default=0.5,
                          help="CRD memory momentum, in [0, 1)")

    @classmethod
    def build(cls, student, teacher, opt, data):
        """Size the embeddings from probe forwards (eval mode, no grad) of both networks."""
        s_dim = probe_features(student, data["image_size"], data["in_channels"])[-1].shape[1]
        t_dim = probe_features(teacher, data["image_size"], data["in_channels"])[-1].shape[1]
        return cls(s_dim, t_dim, data["n_data"], opt.feat_dim, opt.nce_k, opt.nce_t, opt.nce_m)

    def forward(self, feat_s, feat_t, index, contrast_index=None):
        scores_s, scores_t = self.contrast(self.embed_s(feat_s), self.embed_t(feat_t), index, contrast_index)
        return nce_loss(scores_s, self.n_data) + nce_loss(scores_t, self.n_data)


@register("crd")
class CRD(Distiller):
    """CRD on the pooled features; RepDistiller's -a 0 -b 0.8."""

    needs_contrast = True
    defaults = {"gamma": 1.0, "alpha": 0.0, "beta": 0.8}
    losses_in_float32 = False  # the contrast scores are float32 already; only the pooled vectors are used

    def __init__(self, student, teacher, crd, **weights):
        super().__init__(student, teacher, **weights)
        self.crd = crd

    @classmethod
    def add_arguments(cls, parser):
        CRDLoss.add_arguments(parser)

    @classmethod
    def build(cls, student, teacher, opt, data):
        return cls(student, teacher, CRDLoss.build(student, teacher, opt, data), **cls.weights(opt))

    def feature_losses(self, feat_s, feat_t, logits_s, logits_t, index, contrast_index):
        return {"crd": self.beta * self.crd(feat_s[-1], feat_t[-1], index, contrast_index)}
