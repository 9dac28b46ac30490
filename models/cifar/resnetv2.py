"""RepDistiller's CIFAR "resnetv2" ResNet50: four Bottleneck stages on a stride-1 3x3 stem."""
import torch.nn.functional as F
from torch import nn


class Bottleneck(nn.Module):
    """1x1-3x3-1x1 bottleneck (x4 expansion) plus shortcut, then ReLU; the block also returns the pre-ReLU sum."""

    expansion = 4

    def __init__(self, in_channels, planes, stride=1, is_last=False):
        super().__init__()
        out_channels = self.expansion * planes
        self.is_last = is_last
        self.conv1 = nn.Conv2d(in_channels, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_channels, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        preact = self.bn3(self.conv3(out)) + self.shortcut(x)
        out = F.relu(preact)
        return (out, preact) if self.is_last else out


class ResNet(nn.Module):
    """CIFAR Bottleneck ResNet: stem 64, stages of width 64/128/256/512 (x4), strides 1/2/2/2, `linear` head."""

    transform_init = "kaiming"
    transform_foldable = True
    classifier_name = "linear"

    def __init__(self, num_blocks, num_classes=100, zero_init_residual=False):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = _make_stage(64, 64, num_blocks[0], stride=1)
        self.layer2 = _make_stage(256, 128, num_blocks[1], stride=2)
        self.layer3 = _make_stage(512, 256, num_blocks[2], stride=2)
        self.layer4 = _make_stage(1024, 512, num_blocks[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.linear = nn.Linear(512 * Bottleneck.expansion, num_classes)
        self.transform_in_channels = 512 * Bottleneck.expansion
        self.feature_transform = None

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        if zero_init_residual:  # each residual branch starts as zero, so every block starts as the identity
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.constant_(m.bn3.weight, 0)

    def get_feat_modules(self):
        """The modules that produce the feature list, in order."""
        return nn.ModuleList([self.conv1, self.bn1, self.layer1, self.layer2, self.layer3, self.layer4])

    def get_bn_before_relu(self):
        """The BatchNorm before each stage's final ReLU."""
        return [self.layer1[-1].bn3, self.layer2[-1].bn3, self.layer3[-1].bn3, self.layer4[-1].bn3]

    def forward(self, x, is_feat=False, preact=False):
        """Logits, or (features, logits) with features [stem, layer1, layer2, layer3, layer4, pooled]."""
        out = F.relu(self.bn1(self.conv1(x)))
        f0 = out
        out, f1_pre = self.layer1(out)
        f1 = out
        out, f2_pre = self.layer2(out)
        f2 = out
        out, f3_pre = self.layer3(out)
        f3 = out
        out, f4_pre = self.layer4(out)
        f4 = out
        if self.feature_transform is not None:
            out, f4 = self.feature_transform(out)
        out = self.avgpool(out).flatten(1)
        f5 = out
        out = self.linear(out)
        if not is_feat:
            return out
        if preact:
            return [f0, f1_pre, f2_pre, f3_pre, f4_pre, f5], out
        return [f0, f1, f2, f3, f4, f5], out


def _make_stage(in_channels, planes, blocks, stride):
    """`blocks` Bottlenecks, the first with `stride`; only the last returns its pre-ReLU sum."""
    strides = [stride] + [1] * (blocks - 1)
    layers = []
    for i, s in enumerate(strides):
        layers.append(Bottleneck(in_channels, planes, s, is_last=(i == blocks - 1)))
        in_channels = planes * Bottleneck.expansion
    return nn.Sequential(*layers)


def ResNet50(**kwargs):  # noqa: N802 (RepDistiller's model name)
    """ResNet-50: Bottleneck stages of 3, 4, 6 and 3 blocks."""
    return ResNet([3, 4, 6, 3], **kwargs)
