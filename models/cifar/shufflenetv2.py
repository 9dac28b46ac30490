"""CIFAR ShuffleNet V2 (Ma et al., 2018) with RepDistiller's layout (net size 1: 116/232/464/1024, blocks 3/7/3)."""
import torch
import torch.nn.functional as F
from torch import nn

from .shufflenetv1 import ShuffleStages, channel_shuffle


def conv_bn(in_channels, out_channels, kernel_size=1, stride=1, depthwise=False):
    """A bias-free conv and its BN (returned as a pair; the block stores them as convK/bnK)."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2,
                     groups=in_channels if depthwise else 1, bias=False)
    return conv, nn.BatchNorm2d(out_channels)


class BasicBlock(nn.Module):
    """Split channels in half, transform one half (1x1, dw 3x3, 1x1), concatenate, shuffle."""

    def __init__(self, channels, is_last=False):
        super().__init__()
        self.is_last = is_last
        half = channels // 2
        self.conv1, self.bn1 = conv_bn(half, half)
        self.conv2, self.bn2 = conv_bn(half, half, 3, depthwise=True)
        self.conv3, self.bn3 = conv_bn(half, half)

    def forward(self, x):
        x1, x2 = x.chunk(2, dim=1)
        out = F.relu(self.bn1(self.conv1(x2)))
        out = self.bn2(self.conv2(out))
        preact = self.bn3(self.conv3(out))
        out = channel_shuffle(torch.cat([x1, F.relu(preact)], 1), 2)
        # RepDistiller's pre-activation output is neither ReLU'd nor shuffled.
        return (out, torch.cat([x1, preact], 1)) if self.is_last else out


class DownBlock(nn.Module):
    """Stride-2 block: two branches on the full input (dw 3x3 -> 1x1; 1x1 -> dw 3x3 -> 1x1), concatenated."""

    def __init__(self, in_channels, out_channels):
        super().__init__()
        mid = out_channels // 2
        self.conv1, self.bn1 = conv_bn(in_channels, in_channels, 3, 2, depthwise=True)
        self.conv2, self.bn2 = conv_bn(in_channels, mid)
        self.conv3, self.bn3 = conv_bn(in_channels, mid)
        self.conv4, self.bn4 = conv_bn(mid, mid, 3, 2, depthwise=True)
        self.conv5, self.bn5 = conv_bn(mid, mid)

    def forward(self, x):
        left = self.bn1(self.conv1(x))
        left = F.relu(self.bn2(self.conv2(left)))
        right = F.relu(self.bn3(self.conv3(x)))
        right = self.bn4(self.conv4(right))
        right = F.relu(self.bn5(self.conv5(right)))
        return channel_shuffle(torch.cat([left, right], 1), 2)


class ShuffleV2(ShuffleStages, nn.Module):
    """RepDistiller's CIFAR ShuffleNet V2; each stage returns (output, pre-ReLU output)."""

    def __init__(self, num_classes=100, out_channels=(116, 232, 464, 1024), num_blocks=(3, 7, 3)):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.in_channels = 24
        self.layer1 = self._make_layer(out_channels[0], num_blocks[0])
        self.layer2 = self._make_layer(out_channels[1], num_blocks[1])
        self.layer3 = self._make_layer(out_channels[2], num_blocks[2])
        self.conv2 = nn.Conv2d(out_channels[2], out_channels[3], 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels[3])
        self.linear = nn.Linear(out_channels[3], num_classes)

        self.feature_transform = None
        self.transform_in_channels = out_channels[3]
        self.transform_init = "default"
        self.transform_foldable = True
        self.classifier_name = "linear"

    def _make_layer(self, out_channels, num_blocks):
        layers = [DownBlock(self.in_channels, out_channels)]
        layers += [BasicBlock(out_channels, is_last=(i == num_blocks - 1)) for i in range(num_blocks)]
        self.in_channels = out_channels
        return nn.Sequential(*layers)

    def forward(self, x, is_feat=False, preact=False):
        """Logits, or ([f0..f4], logits) with `is_feat`; `preact` gives the stages' pre-ReLU maps."""
        out, feats = self.stem_and_stages(x, preact)
        out = F.relu(self.bn2(self.conv2(out)))
        if self.feature_transform is not None:
            # The matched map replaces f3 (layer3's output) although the FT sits after conv2.
            out, feats[-1] = self.feature_transform(out)
        out = F.avg_pool2d(out, 4).flatten(1)
        feats.append(out)
        logits = self.linear(out)
        return (feats, logits) if is_feat else logits
