"""Running averages and top-k accuracy."""
import torch


class AverageMeter:
    """Running sum and count of a scalar; `avg` is their ratio."""

    def __init__(self):
        self.sum, self.count = 0.0, 0

    def update(self, value, n=1):
        self.sum += float(value) * n
        self.count += n

    @property
    def avg(self):
        return self.sum / max(self.count, 1)


def correct_topk(logits, targets, ks=(1, 5)):
    """Number of samples whose target is among the top-k logits, for each k, as a tensor (no host sync)."""
    maxk = min(max(ks), logits.shape[1])
    top = logits.topk(maxk, dim=1).indices
    hits = top.eq(targets[:, None])
    return torch.stack([hits[:, :min(k, maxk)].any(dim=1).sum() for k in ks])


def accuracy(logits, targets, ks=(1, 5)):
    """Top-k accuracies in percent, as Python floats."""
    counts = correct_topk(logits, targets, ks)
    return [100.0 * c / targets.shape[0] for c in counts.tolist()]
