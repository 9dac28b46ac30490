"""RepDistiller's CIFAR ResNets: three stages of BasicBlocks, a 3x3 stem and an 8x8 average pool."""
import torch.nn.functional as F
from torch import nn


def conv3x3(in_channels, out_channels, stride=1):
    """A 3x3 convolution with padding 1 and no bias."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus shortcut, then ReLU; a stage's last block also returns the pre-ReLU sum."""

    expansion = 1

    def __init__(self, in_channels, channels, stride=1, downsample=None, is_last=False):
        super().__init__()
        self.is_last = is_last
        self.conv1 = conv3x3(in_channels, channels, stride)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(channels, channels)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        preact = out + shortcut
        out = F.relu(preact)
        return (out, preact) if self.is_last else out


class ResNet(nn.Module):
    """CIFAR ResNet of depth 6n+2 with stage widths `num_filters[1:]` (strides 1, 2, 2)."""

    transform_init = "kaiming"
    transform_foldable = True
    classifier_name = "fc"

    def __init__(self, depth, num_filters, num_classes=100):
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"a BasicBlock CIFAR ResNet needs depth 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, num_filters[0], kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(num_filters[0])
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = _make_stage(num_filters[0], num_filters[1], n, stride=1)
        self.layer2 = _make_stage(num_filters[1], num_filters[2], n, stride=2)
        self.layer3 = _make_stage(num_filters[2], num_filters[3], n, stride=2)
        self.avgpool = nn.AvgPool2d(8)
        self.fc = nn.Linear(num_filters[3], num_classes)
        self.transform_in_channels = num_filters[3]
        self.feature_transform = None

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def get_feat_modules(self):
        """The modules that produce the feature list, in order."""
        return nn.ModuleList([self.conv1, self.bn1, self.relu, self.layer1, self.layer2, self.layer3])

    def get_bn_before_relu(self):
        """The BatchNorm before each stage's final ReLU."""
        return [self.layer1[-1].bn2, self.layer2[-1].bn2, self.layer3[-1].bn2]

    def forward(self, x, is_feat=False, preact=False):
        """Logits, or (features, logits) with features [stem, layer1, layer2, layer3, pooled]."""
        x = self.relu(self.bn1(self.conv1(x)))
        f0 = x
        x, f1_pre = self.layer1(x)
        f1 = x
        x, f2_pre = self.layer2(x)
        f2 = x
        x, f3_pre = self.layer3(x)
        f3 = x
        if self.feature_transform is not None:
            x, f3 = self.feature_transform(x)
        x = self.avgpool(x).flatten(1)
        f4 = x
        x = self.fc(x)
        if not is_feat:
            return x
        if preact:
            return [f0, f1_pre, f2_pre, f3_pre, f4], x
        return [f0, f1, f2, f3, f4], x


def _make_stage(in_channels, channels, blocks, stride):
    """`blocks` BasicBlocks; the first projects the shortcut when the stride or the width changes."""
    downsample = None
    if stride != 1 or in_channels != channels:
        downsample = nn.Sequential(
            nn.Conv2d(in_channels, channels, kernel_size=1, stride=stride, bias=False),
            nn.BatchNorm2d(channels),
        )
    layers = [BasicBlock(in_channels, channels, stride, downsample, is_last=(blocks == 1))]
    layers += [BasicBlock(channels, channels, is_last=(i == blocks - 1)) for i in range(1, blocks)]
    return nn.Sequential(*layers)


def resnet8(**kwargs):
    """ResNet-8, widths 16/16/32/64."""
    return ResNet(8, [16, 16, 32, 64], **kwargs)


def resnet14(**kwargs):
    """ResNet-14, widths 16/16/32/64."""
    return ResNet(14, [16, 16, 32, 64], **kwargs)


def resnet20(**kwargs):
    """ResNet-20, widths 16/16/32/64."""
    return ResNet(20, [16, 16, 32, 64], **kwargs)


def resnet32(**kwargs):
    """ResNet-32, widths 16/16/32/64."""
    return ResNet(32, [16, 16, 32, 64], **kwargs)


def resnet44(**kwargs):
    """ResNet-44, widths 16/16/32/64."""
    return ResNet(44, [16, 16, 32, 64], **kwargs)


def resnet56(**kwargs):
    """ResNet-56, widths 16/16/32/64."""
    return ResNet(56, [16, 16, 32, 64], **kwargs)


def resnet110(**kwargs):
    """ResNet-110, widths 16/16/32/64."""
    return ResNet(110, [16, 16, 32, 64], **kwargs)


def resnet8x4(**kwargs):
    """ResNet-8 with four times the width: 32/64/128/256."""
    return ResNet(8, [32, 64, 128, 256], **kwargs)


def resnet32x4(**kwargs):
    """ResNet-32 with four times the width: 32/64/128/256."""
    return ResNet(32, [32, 64, 128, 256], **kwargs)
