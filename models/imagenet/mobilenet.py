"""MobileNet-v1, the ImageNet student of NORM (the official `models/imagenet` MobileNet).

Layout and key names follow the official file, so its checkpoints load after the converter's FT rename:

* `model1` = a 3x3 conv_bn (3 -> 32, stride 2) and 11 depthwise-separable blocks, ending at 512 x 14 x 14
  (for a 224 input);
* `model2` = 2 depthwise-separable blocks, ending at 1024 x 7 x 7;
* a global average pool -> flatten -> `fc` = Linear(1024, num_classes). At 224 (a 7 x 7 map) it is the official
  AvgPool2d(7), bit for bit; at other `--image_size`s it still averages the whole map, where the fixed 7 x 7
  window fails below 224 and covers only part of the map above it.

A conv_bn is (conv, BN, ReLU) with keys `.0`, `.1`; a depthwise-separable block is (3x3 depthwise conv, BN, ReLU,
1x1 pointwise conv, BN, ReLU) with keys `.0`, `.1`, `.3`, `.4`. All convs are bias-free. Both are built from
torchvision's `Conv2dNormActivation` (padding (k-1)/2, no conv bias in front of a norm layer, in-place ReLU),
flattened into one Sequential per block so that the indices are the official ones.

The NORM feature transform sits on the `model2` output (C_s = 1024), before pooling. The official MobileNet has no
init loop, so everything (the FT included) keeps PyTorch's default init.
"""
import torch.nn.functional as F
from torch import nn
from torchvision.ops import Conv2dNormActivation

__all__ = ["GlobalAvgPool", "MobileNet"]

# (out channels, stride) of the 13 depthwise-separable blocks; the first 11 form `model1`, the last 2 `model2`.
_DW_BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
              (512, 1), (512, 1), (512, 1), (512, 1), (512, 1),
              (1024, 2), (1024, 1))
_MODEL1_BLOCKS = 11
_STEM_CHANNELS = 32
_OFFICIAL_MAP = 7  # the `model2` map of a 224 input, the official AvgPool2d's window


def _conv_bn(in_channels, out_channels, stride):
    """3x3 conv (bias-free) + BN + ReLU as one Sequential (keys .0 / .1)."""
    return nn.Sequential(*Conv2dNormActivation(in_channels, out_channels, kernel_size=3, stride=stride))


def _conv_dw(in_channels, out_channels, stride):
    """Depthwise 3x3 (+BN+ReLU) then pointwise 1x1 (+BN+ReLU) as one Sequential (keys .0/.1 and .3/.4)."""
    depthwise = Conv2dNormActivation(in_channels, in_channels, kernel_size=3, stride=stride, groups=in_channels)
    pointwise = Conv2dNormActivation(in_channels, out_channels, kernel_size=1)
    return nn.Sequential(*depthwise, *pointwise)


class GlobalAvgPool(nn.Module):
    """The mean over the whole map; on an official_size map it is AvgPool2d(official_size), the same op and bits."""

    def __init__(self, official_size):
        super().__init__()
        self.official_size = official_size

    def forward(self, x):
        # adaptive pooling sums in another order (last-bit differences), so the official map keeps the official op;
        # the shape test is static, so ONNX export at a fixed image size records one fixed-size op
        if tuple(x.shape[-2:]) == (self.official_size, self.official_size):
            return F.avg_pool2d(x, self.official_size)
        return F.adaptive_avg_pool2d(x, 1)


class MobileNet(nn.Module):
    """MobileNet-v1 (width 1.0) with RepDistiller's `is_feat` forward and NORM's feature-transform hook.

    `forward(x, is_feat=True)` returns ([model1 output, model2 output (or the FT's expanded tensor), pooled vector],
    logits). Any input size works: the map at `model2` (7 x 7 at 224) is averaged as a whole.
    """

    def __init__(self, num_classes=1000, **kwargs):
        super().__init__()
        if kwargs:
            raise TypeError(f"MobileNet got unexpected arguments: {', '.join(sorted(kwargs))}")
        blocks, in_channels = [_conv_bn(3, _STEM_CHANNELS, 2)], _STEM_CHANNELS
        for out_channels, stride in _DW_BLOCKS:
            blocks.append(_conv_dw(in_channels, out_channels, stride))
            in_channels = out_channels
        self.model1 = nn.Sequential(*blocks[:1 + _MODEL1_BLOCKS])
        self.model2 = nn.Sequential(*blocks[1 + _MODEL1_BLOCKS:])
        self.avgpool = GlobalAvgPool(_OFFICIAL_MAP)
        self.fc = nn.Linear(in_channels, num_classes)

        self.feature_transform = None  # plain attribute: no keys until a module is attached
        self.transform_in_channels = in_channels  # 1024
        self.transform_init = "default"  # the official MobileNet has no custom init
        self.transform_foldable = True  # FT -> average pool over the whole map -> fc
        self.classifier_name = "fc"

    def forward(self, x, is_feat=False, preact=False):
        # `preact` is accepted for RepDistiller's call signature; the features are always post-ReLU.
        f1 = self.model1(x)
        x = f2 = self.model2(f1)
        if self.feature_transform is not None:
            x, f2 = self.feature_transform(x)
        x = self.avgpool(x).flatten(1)
        f3 = x
        x = self.fc(x)
        if is_feat:
            return [f1, f2, f3], x
        return x
