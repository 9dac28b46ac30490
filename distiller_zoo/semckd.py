"""SemCKD: Chen et al., "Cross-Layer Distillation with Semantic Calibration" (AAAI 2021).

Reference: DefangChen/SemCKD (`distiller_zoo/SemCKD.py` SemCKDLoss, `models/util.py` SelfA, MLPEmbed and AAEmbed,
`helper/loops.py`, `scripts/run_cifar_distill.sh`: -r 1 -a 1 -b 400).

Every student stage i (`feat_s[1:-1]`) is compared with every teacher stage j (`feat_t[1:-1]`): proj_ij(f_s_i)
(conv1x1 -> 2C_t, BN, ReLU, conv3x3, BN, ReLU, conv1x1 -> C_t; the larger map average-pooled to the smaller's
height first) against f_t_j, by the per-sample mean squared error. The pairs are weighted per sample by an
attention: query_i and key_j are MLPs (B -> 2(B//4) -> B//4, ReLU, L2 norm) of that sample's row of the batch
Gram matrix f f^T of the layer, and alpha[b, i, :] = softmax_j(query_i . key_j). The loss is
sum_{b,i,j} alpha * mse / (batch * n_s).

The MLPs take a row of the B x B Gram matrix, so they are sized by the per-process training batch B. The
reference skips every batch smaller than B. Here a smaller batch (the epoch's last) is trained too: its Gram row
of b < B entries is read as a row of B whose missing samples have similarity 0, i.e. the first linear layer uses
its first b input columns; a full batch is exactly the reference's.
"""
import torch
import torch.nn.functional as F
from torch import nn

from models.norm import probe_features
from .base import Distiller
from .registry import register


def l2_normalize(x):
    """The reference's Normalize(2): x / ||x||_2 over dim 1 (no epsilon)."""
    return x.div(x.pow(2).sum(1, keepdim=True).pow(0.5))


class GramEmbed(nn.Module):
    """MLPEmbed(B, B//factor): Linear(B, 2(B//factor)), ReLU, Linear(-> B//factor), L2 norm, on Gram rows; a row
    shorter than B (a smaller batch) is zero-padded to B, computed by using the first columns of the first layer."""

    def __init__(self, batch_size, factor=4):
        super().__init__()
        out = batch_size // factor
        if out < 1:
            raise ValueError(f"SemCKD sizes its attention by the batch: a batch of {batch_size} per process is "
                             f"too small (at least {factor})")
        self.batch_size = batch_size
        self.linear1 = nn.Linear(batch_size, 2 * out)
        self.linear2 = nn.Linear(2 * out, out)

    def forward(self, gram):
        n = gram.shape[1]
        if n > self.batch_size:
            raise ValueError(f"SemCKD's attention was sized for batches of {self.batch_size}, got {n}")
        hidden = F.relu(F.linear(gram, self.linear1.weight[:, :n], self.linear1.bias))
        return l2_normalize(self.linear2(hidden))


def stage_projection(in_channels, out_channels):
    """AAEmbed: bias-free conv1x1 (C_s -> 2C_t), BN, ReLU, conv3x3 (2C_t -> 2C_t), BN, ReLU, conv1x1 (-> C_t)."""
    mid = 2 * out_channels
    return nn.Sequential(nn.Conv2d(in_channels, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
                         nn.Conv2d(mid, mid, 3, padding=1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
                         nn.Conv2d(mid, out_channels, 1, bias=False))


def batch_gram(feature):
    """The batch Gram matrix f f^T of the flattened samples (B x B)."""
    flat = feature.reshape(feature.shape[0], -1)
    return flat @ flat.t()


def aligned_pair(f_s, f_t):
    """(student map, teacher map) with the larger average-pooled to the smaller's height (square, as the reference)."""
    s_h, t_h = f_s.shape[2], f_t.shape[2]
    if s_h > t_h:
        return F.adaptive_avg_pool2d(f_s, (t_h, t_h)), f_t
    return f_s, F.adaptive_avg_pool2d(f_t, (s_h, s_h))


def semckd_loss(projected, targets, attention):
    """sum_{b,i,j} attention[b,i,j] * mean_{chw}(projected[i][j] - targets[i][j])^2 / (B * n_s)."""
    bsz, n_s, n_t = attention.shape
    per_pair = torch.stack([torch.stack([(projected[i][j] - targets[i][j]).pow(2).reshape(bsz, -1).mean(-1)
                                         for j in range(n_t)], 1) for i in range(n_s)], 1)
    return (attention * per_pair).sum() / (bsz * n_s)


class SemanticAttention(nn.Module):
    """SelfA: query MLPs per student stage, key MLPs per teacher stage, a projection per (student, teacher) pair."""

    def __init__(self, batch_size, s_channels, t_channels):
        super().__init__()
        self.keys = nn.ModuleList(GramEmbed(batch_size) for _ in t_channels)
        self.queries = nn.ModuleList(GramEmbed(batch_size) for _ in s_channels)
        self.projections = nn.ModuleList(nn.ModuleList(stage_projection(c_s, c_t) for c_t in t_channels)
                                         for c_s in s_channels)

    def forward(self, feat_s, feat_t):
        """(projected[i][j], targets[i][j], attention [B, n_s, n_t])."""
        query = torch.stack([q(batch_gram(f)) for q, f in zip(self.queries, feat_s)], 1)  # B x n_s x d
        key = torch.stack([k(batch_gram(f)) for k, f in zip(self.keys, feat_t)], 2)      # B x d x n_t
        attention = F.softmax(torch.bmm(query, key), dim=-1)
        projected, targets = [], []
        for f_s, row in zip(feat_s, self.projections):
            pairs = [aligned_pair(f_s, f_t) for f_t in feat_t]
            projected.append([proj(source) for proj, (source, _) in zip(row, pairs)])
            targets.append([target for _, target in pairs])
        return projected, targets, attention


def process_batch(batch_size):
    """The per-process batch: --batch_size is global and split over the DDP processes."""
    dist = torch.distributed
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    return batch_size // world


@register("semckd")
class SemCKD(Distiller):
    """SemCKD: CE + KD + beta * attention-weighted MSE over every (student stage, teacher stage) pair."""

    needs_stages = True

    defaults = {"gamma": 1.0, "alpha": 1.0, "beta": 400.0}

    def __init__(self, student, teacher, attention, **weights):
        super().__init__(student, teacher, **weights)
        self.attention = attention

    @classmethod
    def build(cls, student, teacher, opt, data):
        feat_s = probe_features(student, data["image_size"], data["in_channels"])[1:-1]
        feat_t = probe_features(teacher, data["image_size"], data["in_channels"])[1:-1]
        if not feat_s or not feat_t or any(f.dim() != 4 for f in feat_s + feat_t):
            raise ValueError("SemCKD needs the intermediate stage maps feat[1:-1] of both networks")
        attention = SemanticAttention(process_batch(opt.batch_size), [f.shape[1] for f in feat_s],
                                      [f.shape[1] for f in feat_t])
        return cls(student, teacher, attention, **cls.weights(opt))

    def feature_losses(self, feat_s, feat_t, logits_s, logits_t, index, contrast_index):
        projected, targets, attention = self.attention(feat_s[1:-1], feat_t[1:-1])
        return {"semckd": self.beta * semckd_loss(projected, targets, attention)}
