"""RepDistiller's CIFAR VGG with BatchNorm: five conv blocks, no FC stack, one linear `classifier`."""
import math

import torch.nn.functional as F
from torch import nn

# conv widths per block (block0..block4) of each configuration
CONFIGS = {
    "S": [[64], [128], [256], [512], [512]],
    "A": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "B": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "D": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "E": [[64, 64], [128, 128], [256, 256, 256, 256], [512, 512, 512, 512], [512, 512, 512, 512]],
}


def make_block(widths, in_channels):
    """conv3x3 (with bias) + BN + ReLU per width, without the block's last ReLU (applied in `forward`)."""
    layers = []
    for width in widths:
        layers += [nn.Conv2d(in_channels, width, kernel_size=3, padding=1), nn.BatchNorm2d(width),
                   nn.ReLU(inplace=True)]
        in_channels = width
    return nn.Sequential(*layers[:-1])


class VGG(nn.Module):
    """VGG-BN for CIFAR: block0..block4 with max pools between them, global average pool, `classifier`."""

    transform_init = "kaiming"
    transform_foldable = True
    classifier_name = "classifier"

    def __init__(self, cfg, num_classes=100):
        super().__init__()
        in_channels = [3] + [widths[-1] for widths in cfg[:-1]]
        self.block0 = make_block(cfg[0], in_channels[0])
        self.block1 = make_block(cfg[1], in_channels[1])
        self.block2 = make_block(cfg[2], in_channels[2])
        self.block3 = make_block(cfg[3], in_channels[3])
        self.block4 = make_block(cfg[4], in_channels[4])
        self.pool0 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool1 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool2 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool3 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool4 = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Linear(512, num_classes)
        self.transform_in_channels = cfg[4][-1]
        self.feature_transform = None

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                m.weight.data.normal_(0, math.sqrt(2.0 / fan_out))
                if m.bias is not None:
                    m.bias.data.zero_()
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.data.fill_(1)
                m.bias.data.zero_()
            elif isinstance(m, nn.Linear):
                m.weight.data.normal_(0, 0.01)
                m.bias.data.zero_()

    def get_feat_modules(self):
        """The modules that produce the feature list, in order."""
        return nn.ModuleList([self.block0, self.pool0, self.block1, self.pool1, self.block2, self.pool2,
                              self.block3, self.pool3, self.block4, self.pool4])

    def get_bn_before_relu(self):
        """The last BatchNorm of block1..block4 (each block ends in a BN; the ReLU follows in `forward`)."""
        return [self.block1[-1], self.block2[-1], self.block3[-1], self.block4[-1]]

    def forward(self, x, is_feat=False, preact=False):
        """Logits, or (features, logits) with features [ReLU(block0) ... ReLU(block4), pooled]."""
        size = x.shape[2]
        x = F.relu(self.block0(x))
        f0 = x
        x = self.block1(self.pool0(x))
        f1_pre = x
        x = f1 = F.relu(x)
        x = self.block2(self.pool1(x))
        f2_pre = x
        x = f2 = F.relu(x)
        x = self.block3(self.pool2(x))
        f3_pre = x
        x = f3 = F.relu(x)
        if size == 64:  # 32 px inputs keep block3's resolution for block4
            x = self.pool3(x)
        x = self.block4(x)
        f4_pre = x
        x = f4 = F.relu(x)
        if self.feature_transform is not None:
            x, f4 = self.feature_transform(x)
        x = self.pool4(x).flatten(1)
        f5 = x
        x = self.classifier(x)
        if not is_feat:
            return x
        if preact:
            return [f0, f1_pre, f2_pre, f3_pre, f4_pre, f5], x
        return [f0, f1, f2, f3, f4, f5], x


def vgg8_bn(**kwargs):
    """VGG-8 with BN (configuration S)."""
    return VGG(CONFIGS["S"], **kwargs)


def vgg11_bn(**kwargs):
    """VGG-11 with BN (configuration A)."""
    return VGG(CONFIGS["A"], **kwargs)


def vgg13_bn(**kwargs):
    """VGG-13 with BN (configuration B)."""
    return VGG(CONFIGS["B"], **kwargs)


def vgg16_bn(**kwargs):
    """VGG-16 with BN (configuration D)."""
    return VGG(CONFIGS["D"], **kwargs)


def vgg19_bn(**kwargs):
    """VGG-19 with BN (configuration E)."""
    return VGG(CONFIGS["E"], **kwargs)
