"""The N-to-one student feature transform of NORM (Liu et al., ICLR 2023).

Every backbone in `models/` has an attribute `feature_transform` (``None`` by default, so a plain model's
state dict is RepDistiller's) and applies it at one fixed place of its forward pass:

    x, matched = self.feature_transform(x)     # x continues to pooling, `matched` enters the is_feat list

The model also declares `transform_in_channels` (C_s at that place). `attach_feature_transform` builds the
module and hangs it on the model; the same module serves every architecture.
"""
import torch
from torch import nn

FT_MODES = ("residual", "plain", "none")


def conv1x1_bn(in_channels, out_channels):
    """A bias-free 1x1 convolution followed by BatchNorm (keys `.0` and `.1`, as the official `layer31`)."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels))


class NormTransform(nn.Module):
    """expand (1x1 conv+BN to N*C_t) -> contract (1x1 conv+BN back to C_s) [+ identity]; returns (y, expanded)."""

    def __init__(self, in_channels, teacher_channels, n, residual=True, init="kaiming"):
        super().__init__()
        if n < 1:
            raise ValueError(f"N (-s/--co-sponge) must be at least 1, got {n}")
        self.in_channels, self.teacher_channels, self.n = in_channels, teacher_channels, n
        self.residual = residual
        self.expand = conv1x1_bn(in_channels, n * teacher_channels)
        self.contract = conv1x1_bn(n * teacher_channels, in_channels)
        if init == "kaiming":  # the host family's own init loop ran over the official FT; 'default' keeps PyTorch's
            for conv in (self.expand[0], self.contract[0]):
                nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        expanded = self.expand(x)
        y = self.contract(expanded)
        if self.residual:
            y = y + x
        return y, expanded

    @torch.no_grad()
    def as_affine(self):
        """Eval-mode FT as y = A x + c per pixel: returns (A [C_s, C_s], c [C_s])."""
        a1, b1 = _bn_affine(self.expand[1])
        a2, b2 = _bn_affine(self.contract[1])
        w1 = self.expand[0].weight.flatten(1)
        w2 = self.contract[0].weight.flatten(1)
        a = (a2[:, None] * w2) @ (a1[:, None] * w1)
        if self.residual:
            a = a + torch.eye(self.in_channels, dtype=a.dtype, device=a.device)
        c = a2 * (w2 @ b1) + b2
        return a, c

    def extra_repr(self):
        return f"C_s={self.in_channels}, C_t={self.teacher_channels}, N={self.n}, residual={self.residual}"


def _bn_affine(bn):
    """Eval-mode BatchNorm as a per-channel scale and shift."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias - scale * bn.running_mean


def attach_feature_transform(model, teacher_channels, n, mode="residual"):
    """Give `model` its NORM transform (N*teacher_channels wide); `mode` is residual | plain | none."""
    if mode not in FT_MODES:
        raise ValueError(f"unknown feature transform {mode!r}; choose one of {', '.join(FT_MODES)}")
    if n < 1:
        raise ValueError(f"N (-s/--co-sponge) must be at least 1, got {n}")
    prepare = getattr(model, "prepare_norm_student", None)
    if prepare is not None:  # e.g. MobileNetV2's official student variant drops two ReLUs
        prepare()
    if mode == "none":
        model.feature_transform = None
        return model
    # made on the CPU (the same initial weights wherever the run is) and put where the model is, so that a model
    # already on its GPU can be probed and trained at once
    device = next(model.parameters()).device
    model.feature_transform = NormTransform(
        model.transform_in_channels, teacher_channels, n, residual=(mode == "residual"),
        init=getattr(model, "transform_init", "kaiming")).to(device)
    return model


def fold_transform_into_classifier(model):
    """Fold an eval-mode residual/plain FT into the linear classifier; returns the plain model's state dict.

    Valid only where FT -> global average pool -> linear follow each other (`model.transform_foldable`).
    """
    ft = model.feature_transform
    if ft is None:
        return _with_metadata({k: v for k, v in model.state_dict().items()}, model.state_dict())
    if not getattr(model, "transform_foldable", False):
        raise ValueError(f"{type(model).__name__}: the feature transform sits before a BatchNorm+ReLU and cannot "
                         "be folded into the classifier")
    a, c = ft.as_affine()
    linear = model.get_submodule(model.classifier_name)
    weight = linear.weight.detach() @ a
    bias = linear.weight.detach() @ c + (linear.bias.detach() if linear.bias is not None else 0)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("feature_transform.")}
    state[model.classifier_name + ".weight"] = weight.clone()
    state[model.classifier_name + ".bias"] = bias.clone()
    return _with_metadata(state, model.state_dict())


def _with_metadata(state, source):
    """`state` as an OrderedDict carrying `source`'s per-module versions (torchvision's MNASNet refuses a state
    dict without them)."""
    from collections import OrderedDict

    out = OrderedDict(state)
    metadata = getattr(source, "_metadata", None)
    if metadata is not None:
        out._metadata = OrderedDict((k, v) for k, v in metadata.items() if not k.startswith("feature_transform"))
    return out


def probe_features(model, image_size, in_channels=3):
    """Feature list of `model` on a throw-away input, in eval mode under no_grad (BN statistics untouched)."""
    was_training = model.training
    param = next(model.parameters())
    x = torch.randn(2, in_channels, image_size, image_size, device=param.device, dtype=param.dtype)
    model.eval()
    try:
        with torch.no_grad():
            feats, _ = model(x, is_feat=True)
    finally:
        model.train(was_training)
    return feats


def matched_feature(features):
    """The feature NORM matches: the last spatial map, i.e. entry -2 of RepDistiller's is_feat list."""
    return features[-2]

