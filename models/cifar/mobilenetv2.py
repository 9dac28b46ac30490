"""CIFAR MobileNetV2 with RepDistiller's layout (its `mobile_half`: expansion T=6, width 0.5)."""
import math

from torch import nn


def conv_bn_relu(in_channels, out_channels, kernel_size, stride):
    """Bias-free conv + BN + ReLU as one Sequential (keys `.0` conv, `.1` BN)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class InvertedResidual(nn.Module):
    """Pointwise expand -> depthwise 3x3 -> linear pointwise projection, with identity when shapes allow."""

    def __init__(self, in_channels, out_channels, stride, expand_ratio):
        super().__init__()
        hidden = in_channels * expand_ratio
        self.use_res_connect = stride == 1 and in_channels == out_channels
        # Unlike torchvision, the pointwise expansion is kept even when expand_ratio == 1.
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        )

    def forward(self, x):
        out = self.conv(x)
        return x + out if self.use_res_connect else out


class MobileNetV2(nn.Module):
    """RepDistiller's CIFAR MobileNetV2 (`mobile_half` by default); `prepare_norm_student` gives NORM's variant."""

    # (expansion, channels before width scaling, blocks, first stride); None means "use T"
    SETTINGS = ((1, 16, 1, 1), (None, 24, 2, 1), (None, 32, 3, 2), (None, 64, 4, 2),
                (None, 96, 3, 1), (None, 160, 3, 2), (None, 320, 1, 1))

    def __init__(self, num_classes=100, T=6, width_mult=0.5, norm_student=False):
        super().__init__()
        channels = int(32 * width_mult)
        self.conv1 = conv_bn_relu(3, channels, 3, 2)
        self.blocks = nn.ModuleList()
        for t, c, n, s in self.SETTINGS:
            out_channels = int(c * width_mult)
            layers = []
            for i in range(n):
                layers.append(InvertedResidual(channels, out_channels, s if i == 0 else 1, T if t is None else t))
                channels = out_channels
            self.blocks.append(nn.Sequential(*layers))
        self.last_channel = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = conv_bn_relu(channels, self.last_channel, 1, 1)
        self.classifier = nn.Sequential(nn.Linear(self.last_channel, num_classes))
        # A 32x32 input reaches conv2 at 2x2, so this is a global average pool on CIFAR.
        self.avgpool = nn.AvgPool2d(2, ceil_mode=True)
        self._initialize_weights()

        self.norm_student = norm_student  # True: the official NORM student (e.g. a folded export)
        self.feature_transform = None
        self.transform_in_channels = self.last_channel
        self.transform_init = "kaiming"
        self.transform_foldable = True
        self.classifier_name = "classifier.0"

    def _initialize_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0, math.sqrt(2.0 / fan_out))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def prepare_norm_student(self):
        """Switch to the official NORM student: no ReLU after conv1 and conv2 (state-dict keys unchanged)."""
        self.norm_student = True

    def get_bn_before_relu(self):
        """The last BN of blocks 1, 2, 4 and 6 (RepDistiller's choice for OFD)."""
        return [self.blocks[i][-1].conv[-1] for i in (1, 2, 4, 6)]

    def get_feat_modules(self):
        """Feature-extracting modules: conv1 and the inverted-residual blocks."""
        return nn.ModuleList([self.conv1, self.blocks])

    def _conv_bn(self, layer, x):
        # conv1/conv2 keep their ReLU module (RepDistiller's layout); the NORM student variant skips it here.
        x = layer[1](layer[0](x))
        return x if self.norm_student else layer[2](x)

    def forward(self, x, is_feat=False, preact=False):
        """Logits, or ([f0..f5], logits) with `is_feat`; `preact` is ignored, as in RepDistiller."""
        out = self._conv_bn(self.conv1, x)
        feats = [out]
        for i, stage in enumerate(self.blocks):
            out = stage(out)
            if i in (1, 2, 4, 6):
                feats.append(out)
        out = self._conv_bn(self.conv2, out)
        if self.feature_transform is not None:
            out, feats[-1] = self.feature_transform(out)
        out = self.avgpool(out).flatten(1)
        feats.append(out)
        logits = self.classifier(out)
        return (feats, logits) if is_feat else logits
