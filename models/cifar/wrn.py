"""RepDistiller's CIFAR Wide ResNets (WRN-d-k): pre-activation blocks, widths 16, 16k, 32k, 64k."""
import math

import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus an identity or 1x1 `convShortcut`."""

    def __init__(self, in_planes, out_planes, stride, dropRate=0.0):  # noqa: N803 (RepDistiller's keyword)
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.droprate = dropRate
        self.equalInOut = in_planes == out_planes
        self.convShortcut = None
        if not self.equalInOut:
            self.convShortcut = nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, padding=0,
                                          bias=False)

    def forward(self, x):
        activated = self.relu1(self.bn1(x))
        # a projecting block's shortcut sees the activated input; an identity block adds the raw input
        shortcut = x if self.equalInOut else self.convShortcut(activated)
        out = self.relu2(self.bn2(self.conv1(activated)))
        if self.droprate > 0:
            out = F.dropout(out, p=self.droprate, training=self.training)
        return shortcut + self.conv2(out)


class NetworkBlock(nn.Module):
    """One stage: `nb_layers` BasicBlocks in `self.layer`, the first changing width and stride."""

    def __init__(self, nb_layers, in_planes, out_planes, stride, dropRate=0.0):  # noqa: N803
        super().__init__()
        self.layer = nn.Sequential(*[
            BasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, dropRate)
            for i in range(nb_layers)])

    def forward(self, x):
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-depth-widen_factor for 32x32 input: three stages, then BN, ReLU, 8x8 average pool and `fc`."""

    transform_init = "kaiming"
    # the transform sits before the final BN+ReLU, so it is no affine map right before the classifier
    transform_foldable = False
    classifier_name = "fc"

    def __init__(self, depth, num_classes=100, widen_factor=1, dropRate=0.0):  # noqa: N803
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"a Wide ResNet needs depth 6n+4, got {depth}")
        n = (depth - 4) // 6
        channels = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(3, channels[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, channels[0], channels[1], 1, dropRate)
        self.block2 = NetworkBlock(n, channels[1], channels[2], 2, dropRate)
        self.block3 = NetworkBlock(n, channels[2], channels[3], 2, dropRate)
        self.bn1 = nn.BatchNorm2d(channels[3])
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(channels[3], num_classes)
        self.transform_in_channels = channels[3]
        self.feature_transform = None

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                m.weight.data.normal_(0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.data.fill_(1)
                m.bias.data.zero_()
            elif isinstance(m, nn.Linear):
                m.bias.data.zero_()

    def get_feat_modules(self):
        """The modules that produce the feature list, in order."""
        return nn.ModuleList([self.conv1, self.block1, self.block2, self.block3])

    def get_bn_before_relu(self):
        """The BatchNorm that follows each of the last three features (the next stage's first `bn1`, then `bn1`)."""
        return [self.block2.layer[0].bn1, self.block3.layer[0].bn1, self.bn1]

    def forward(self, x, is_feat=False, preact=False):
        """Logits, or (features, logits) with features [stem, block1, block2, block3 (before bn1), pooled].

        `preact` passes block1..block3 through the BatchNorm that follows each; in train mode this updates
        those BatchNorms' running statistics a second time, as RepDistiller does.
        """
        out = self.conv1(x)
        f0 = out
        out = self.block1(out)
        f1 = out
        out = self.block2(out)
        f2 = out
        out = self.block3(out)
        f3 = f3_plain = out
        if self.feature_transform is not None:
            out, f3 = self.feature_transform(out)
        out = self.relu(self.bn1(out))
        out = F.avg_pool2d(out, 8).flatten(1)
        f4 = out
        out = self.fc(out)
        if not is_feat:
            return out
        if preact:
            f1 = self.block2.layer[0].bn1(f1)
            f2 = self.block3.layer[0].bn1(f2)
            f3 = self.bn1(f3_plain)
        return [f0, f1, f2, f3, f4], out


def wrn_16_1(**kwargs):
    """WRN-16-1."""
    return WideResNet(depth=16, widen_factor=1, **kwargs)


def wrn_16_2(**kwargs):
    """WRN-16-2."""
    return WideResNet(depth=16, widen_factor=2, **kwargs)


def wrn_40_1(**kwargs):
    """WRN-40-1."""
    return WideResNet(depth=40, widen_factor=1, **kwargs)


def wrn_40_2(**kwargs):
    """WRN-40-2."""
    return WideResNet(depth=40, widen_factor=2, **kwargs)
