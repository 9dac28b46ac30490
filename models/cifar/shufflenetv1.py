"""CIFAR ShuffleNet V1 (Zhang et al., 2018) with RepDistiller's layout: stages 240/480/960, blocks 4/8/4, g=3."""
import torch
import torch.nn.functional as F
from torch import nn


def channel_shuffle(x, groups):
    """Interleave the channels of `groups` groups: [B, g*c, H, W] -> [B, c*g, H, W]."""
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class Bottleneck(nn.Module):
    """Grouped 1x1 -> shuffle -> depthwise 3x3 -> grouped 1x1; stride 2 concatenates an avg-pooled shortcut."""

    def __init__(self, in_planes, out_planes, stride, groups, is_last=False):
        super().__init__()
        self.stride, self.is_last = stride, is_last
        mid_planes = out_planes // 4
        # The stem has only 24 channels, so the first 1x1 conv after it is not grouped.
        self.groups1 = 1 if in_planes == 24 else groups
        self.conv1 = nn.Conv2d(in_planes, mid_planes, 1, groups=self.groups1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_planes)
        self.conv2 = nn.Conv2d(mid_planes, mid_planes, 3, stride, 1, groups=mid_planes, bias=False)
        self.bn2 = nn.BatchNorm2d(mid_planes)
        self.conv3 = nn.Conv2d(mid_planes, out_planes, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = channel_shuffle(out, self.groups1)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.stride == 2:
            preact = torch.cat([out, F.avg_pool2d(x, 3, 2, 1)], 1)
        else:
            preact = out + x
        out = F.relu(preact)
        return (out, preact) if self.is_last else out


class ShuffleStages:
    """What ShuffleV1 and ShuffleV2 share: the stem, three stages and their feature lists (RepDistiller's layout)."""

    def get_feat_modules(self):
        """Feature-extracting modules: conv1, bn1 and the three stages."""
        return nn.ModuleList([self.conv1, self.bn1, self.layer1, self.layer2, self.layer3])

    def get_bn_before_relu(self):
        """Not supported, as in RepDistiller (no OFD teacher)."""
        raise NotImplementedError(f"{type(self).__name__} has no BN-before-ReLU list (not supported as an OFD teacher)")

    def stem_and_stages(self, x, preact=False):
        """(layer3 output, [f0, f1, f2, f3]) with the stages' outputs, or their pre-ReLU maps with `preact`."""
        out = F.relu(self.bn1(self.conv1(x)))
        feats, pre = [out], [out]
        for layer in (self.layer1, self.layer2, self.layer3):
            out, out_pre = layer(out)
            feats.append(out)
            pre.append(out_pre)
        return out, (pre if preact else feats)


class ShuffleV1(ShuffleStages, nn.Module):
    """RepDistiller's CIFAR ShuffleNet V1; each stage returns (output, pre-ReLU output)."""

    def __init__(self, num_classes=100, out_planes=(240, 480, 960), num_blocks=(4, 8, 4), groups=3):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.in_planes = 24
        self.layer1 = self._make_layer(out_planes[0], num_blocks[0], groups)
        self.layer2 = self._make_layer(out_planes[1], num_blocks[1], groups)
        self.layer3 = self._make_layer(out_planes[2], num_blocks[2], groups)
        self.linear = nn.Linear(out_planes[2], num_classes)

        self.feature_transform = None
        self.transform_in_channels = out_planes[2]
        self.transform_init = "default"
        self.transform_foldable = True
        self.classifier_name = "linear"

    def _make_layer(self, out_planes, num_blocks, groups):
        layers = []
        for i in range(num_blocks):
            # The first block's conv branch only adds the channels its concatenated shortcut lacks.
            branch_planes = out_planes - self.in_planes if i == 0 else out_planes
            layers.append(Bottleneck(self.in_planes, branch_planes, 2 if i == 0 else 1, groups,
                                     is_last=(i == num_blocks - 1)))
            self.in_planes = out_planes
        return nn.Sequential(*layers)

    def forward(self, x, is_feat=False, preact=False):
        """Logits, or ([f0..f4], logits) with `is_feat`; `preact` gives the stages' pre-ReLU maps."""
        out, feats = self.stem_and_stages(x, preact)
        if self.feature_transform is not None:
            out, feats[-1] = self.feature_transform(out)
        out = F.avg_pool2d(out, 4).flatten(1)
        feats.append(out)
        logits = self.linear(out)
        return (feats, logits) if is_feat else logits
