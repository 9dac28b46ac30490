"""Model zoo: RepDistiller's 22 CIFAR names (`model_dict`) and the ImageNet teachers/students (`imagenet_model_dict`)."""
from .cifar.mobilenetv2 import MobileNetV2
from .cifar.resnet import resnet8, resnet8x4, resnet14, resnet20, resnet32, resnet32x4, resnet44, resnet56, resnet110
from .cifar.resnetv2 import ResNet50
from .cifar.shufflenetv1 import ShuffleV1
from .cifar.shufflenetv2 import ShuffleV2
from .cifar.vgg import vgg8_bn, vgg11_bn, vgg13_bn, vgg16_bn, vgg19_bn
from .cifar.wrn import wrn_16_1, wrn_16_2, wrn_40_1, wrn_40_2
from .imagenet.mobilenet import MobileNet
from .imagenet.resnet import resnet18, resnet18S, resnet34, resnet34S, resnet50, resnet50_4S

model_dict = {
    "resnet8": resnet8, "resnet14": resnet14, "resnet20": resnet20, "resnet32": resnet32, "resnet44": resnet44,
    "resnet56": resnet56, "resnet110": resnet110, "resnet8x4": resnet8x4, "resnet32x4": resnet32x4,
    "ResNet50": ResNet50,
    "wrn_16_1": wrn_16_1, "wrn_16_2": wrn_16_2, "wrn_40_1": wrn_40_1, "wrn_40_2": wrn_40_2,
    "vgg8": vgg8_bn, "vgg11": vgg11_bn, "vgg13": vgg13_bn, "vgg16": vgg16_bn, "vgg19": vgg19_bn,
    "MobileNetV2": MobileNetV2, "ShuffleV1": ShuffleV1, "ShuffleV2": ShuffleV2,
}

imagenet_model_dict = {
    "resnet18": resnet18, "resnet34": resnet34, "resnet50": resnet50,
    "resnet18S": resnet18S, "resnet34S": resnet34S, "resnet50_4S": resnet50_4S, "MobileNet": MobileNet,
}
