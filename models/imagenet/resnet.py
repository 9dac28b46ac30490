"""ImageNet ResNets: torchvision teachers (resnet18/34/50) and the NORM students (resnet18S/34S/50_4S).

Every model here is a `torchvision.models.resnet.ResNet` built from torchvision's own `BasicBlock`/`Bottleneck`,
so a plain model's state dict has torchvision's key names (`conv1`, `bn1`, `layer{1..4}.{i}.*`, `fc`) and the
torchvision checkpoints load strictly. What this file adds:

* `forward(x, is_feat=False, preact=False)`: the logits, or `(features, logits)` with
  features = [stem (after maxpool), layer1, layer2, layer3, layer4, pooled vector]. NORM matches entry -2
  (the layer4 output, after its ReLU).
* the feature-transform contract of `models/norm.py`: `feature_transform` is None until
  `attach_feature_transform` hangs a module on it; it then runs on the layer4 output, its expanded tensor
  replaces entry -2 and the pooled vector and logits come from its output.

Teachers and students share the class: resnet18S/34S are ResNet-18/34 (the official students differ only by the
FT and by parameters they never use: `layer21/22`, `alpha`, `dropout`, left out here). resnet50_4S is
Bottleneck [3,4,6,3] with every stage's planes divided by 4 (16/32/64/128, outputs 64/128/256/512) on the
usual 64-channel stem, as the official resnet50_4S.
"""
from torchvision.models import resnet as tv

__all__ = ["ResNet", "resnet18", "resnet34", "resnet50", "resnet18S", "resnet34S", "resnet50_4S"]


class ResNet(tv.ResNet):
    """torchvision's ResNet with RepDistiller's `is_feat` forward and NORM's feature-transform hook."""

    def __init__(self, block, layers, num_classes=1000, **kwargs):
        super().__init__(block, layers, num_classes=num_classes, **kwargs)
        self.feature_transform = None  # plain attribute: no keys until a module is attached
        self.transform_in_channels = self.fc.in_features  # layer4 width == pooled width
        self.transform_init = "kaiming"  # the official resnets' init loop also ran over their FT
        self.transform_foldable = True  # FT -> global average pool -> fc
        self.classifier_name = "fc"

    def forward(self, x, is_feat=False, preact=False):
        # `preact` is accepted for RepDistiller's call signature; the features are always post-ReLU.
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        f0 = x
        f1 = self.layer1(f0)
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        x = f4 = self.layer4(f3)
        if self.feature_transform is not None:
            x, f4 = self.feature_transform(x)
        x = self.avgpool(x).flatten(1)
        f5 = x
        x = self.fc(x)
        if is_feat:
            return [f0, f1, f2, f3, f4, f5], x
        return x


class _QuarterBottleneck(tv.Bottleneck):
    """torchvision's Bottleneck re-parametrised for resnet50_4S.

    A Bottleneck with `planes` P, expansion 4 and base width 64 has widths P -> P -> 4P. The same block is
    obtained with `planes` 4P, expansion 1 and base width 16 (inner width 4P * 16/64 = P). ResNet hands the
    stages planes 64/128/256/512, so with this expansion and `width_per_group=16` torchvision's `_make_layer`
    builds exactly the ÷4 stages (inner 16/32/64/128, outputs 64/128/256/512), skips the downsample of
    layer1.0 (64 in == 64 out) and sizes `fc` as Linear(512, num_classes). Modules and key names are
    torchvision's Bottleneck ones.
    """

    expansion = 1


def _teacher(block, layers, weights_enum, num_classes, weights, progress, kwargs):
    """A torchvision-layout ResNet, optionally loaded strictly with a torchvision weight set."""
    weights = weights_enum.verify(weights)  # accepts None, an enum member or its name, e.g. "IMAGENET1K_V1"
    if weights is not None and num_classes != len(weights.meta["categories"]):
        raise ValueError(f"{weights} has {len(weights.meta['categories'])} classes, but num_classes={num_classes}")
    model = ResNet(block, layers, num_classes=num_classes, **kwargs)
    if weights is not None:
        model.load_state_dict(weights.get_state_dict(progress=progress, check_hash=True), strict=True)
    return model


def resnet18(num_classes=1000, weights=None, progress=True, **kwargs):
    """ResNet-18 teacher (BasicBlock [2,2,2,2]); `weights` as torchvision's, the reference uses IMAGENET1K_V1."""
    return _teacher(tv.BasicBlock, [2, 2, 2, 2], tv.ResNet18_Weights, num_classes, weights, progress, kwargs)


def resnet34(num_classes=1000, weights=None, progress=True, **kwargs):
    """ResNet-34 teacher (BasicBlock [3,4,6,3]); `weights` as torchvision's, the reference uses IMAGENET1K_V1."""
    return _teacher(tv.BasicBlock, [3, 4, 6, 3], tv.ResNet34_Weights, num_classes, weights, progress, kwargs)


def resnet50(num_classes=1000, weights=None, progress=True, **kwargs):
    """ResNet-50 teacher (Bottleneck [3,4,6,3]); `weights` as torchvision's, the reference uses IMAGENET1K_V1."""
    return _teacher(tv.Bottleneck, [3, 4, 6, 3], tv.ResNet50_Weights, num_classes, weights, progress, kwargs)


def resnet18S(num_classes=1000, **kwargs):
    """NORM student ResNet-18 (FT input: layer4, 512 channels)."""
    return ResNet(tv.BasicBlock, [2, 2, 2, 2], num_classes=num_classes, **kwargs)


def resnet34S(num_classes=1000, **kwargs):
    """NORM student ResNet-34 (FT input: layer4, 512 channels)."""
    return ResNet(tv.BasicBlock, [3, 4, 6, 3], num_classes=num_classes, **kwargs)


def resnet50_4S(num_classes=1000, **kwargs):
    """NORM student ResNet-50/4: Bottleneck [3,4,6,3], planes 16/32/64/128, expansion 4, 64-channel stem."""
    if "width_per_group" in kwargs or "groups" in kwargs:
        raise TypeError("resnet50_4S fixes the block widths; width_per_group/groups cannot be set")
    return ResNet(_QuarterBottleneck, [3, 4, 6, 3], num_classes=num_classes, width_per_group=16, **kwargs)
