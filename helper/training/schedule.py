"""Learning-rate schedules, set once per epoch (epochs are numbered 1..E, as in RepDistiller)."""
import math


def learning_rate(epoch, base_lr, epochs, decay="step", milestones=(150, 180, 210), rate=0.1, warmup=0):
    """lr for `epoch`: `step` multiplies by `rate` after each milestone; `cos` anneals from base_lr to 0. The first
    `warmup` epochs (scripts/train_teacher.py's fine-tuning) scale it linearly by epoch / (warmup + 1)."""
    scale = epoch / (warmup + 1) if epoch <= warmup else 1.0
    if decay == "step":
        return scale * base_lr * rate ** sum(epoch > m for m in milestones)
    if decay == "cos":
        return scale * base_lr * 0.5 * (1.0 + math.cos(math.pi * (epoch - 1) / epochs))
    raise ValueError(f"unknown lr schedule {decay!r}; use step or cos")


def set_learning_rate(optimizer, lr):
    """Write `lr` into every parameter group."""
    for group in optimizer.param_groups:
        group["lr"] = lr
