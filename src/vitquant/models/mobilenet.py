"""MobileNetV2 for 32x32 inputs: torchvision's model with the first two strides set to 1."""

from __future__ import annotations

from torchvision.models import mobilenet_v2


def cifar_mobilenetv2(num_classes: int = 10):
    model = mobilenet_v2(num_classes=num_classes)
    # The CIFAR variant of $VITQUANT_ASSETS/models/mobilenetv2_cifar10 (keeps 32x32 detail).
    model.features[0][0].stride = (1, 1)
    model.features[2].conv[1][0].stride = (1, 1)
    return model
