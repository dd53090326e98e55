"""The registry's entries, registered explicitly (no import side effects elsewhere)."""

from __future__ import annotations

from vitquant.models.digits_cnn import digits_cnn
from vitquant.models.mobilenet import cifar_mobilenetv2
from vitquant.models.resnet_cifar import resnet20
from vitquant.models.vit import cifar_vit, digits_vit

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# scikit-learn digits pixels are 0..16, scaled to [0, 1]; mean/std over the whole set.
DIGITS_MEAN = (0.3040,)
DIGITS_STD = (0.3778,)


def register_all(register) -> None:
    from vitquant.registry import CIFAR10_CLASSES, DIGITS_CLASSES, ModelSpec

    register(
        ModelSpec(
            name="cifar_vit",
            family="vit",
            build=cifar_vit,
            input_size=(3, 32, 32),
            mean=CIFAR_MEAN,
            std=CIFAR_STD,
            classes=CIFAR10_CLASSES,
            checkpoint="models/vit_cifar10/vit_cifar10.pt",
            description="DeiT-style ViT (12 blocks, dim 128) trained on CIFAR-10 JPEGs",
        )
    )
    register(
        ModelSpec(
            name="cifar_resnet20",
            family="cnn",
            build=resnet20,
            input_size=(3, 32, 32),
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            classes=CIFAR10_CLASSES,
            checkpoint="models/resnet_cifar10/resnet20-12fca82f.th",
            description="ResNet-20 (He et al.), externally trained on lossless CIFAR-10",
        )
    )
    register(
        ModelSpec(
            name="cifar_mobilenetv2",
            family="cnn",
            build=cifar_mobilenetv2,
            input_size=(3, 32, 32),
            mean=CIFAR_MEAN,
            std=CIFAR_STD,
            classes=CIFAR10_CLASSES,
            checkpoint="models/mobilenetv2_cifar10/mobilenetv2_cifar10.pt",
            description="torchvision MobileNetV2, CIFAR strides, trained on CIFAR-10 JPEGs",
            trainable_hint="Produce it with `vitquant train cifar_mobilenetv2 --data cifar10 "
            "--epochs N` (about 8 min/epoch on 2 cores) or pass --checkpoint PATH.",
        )
    )
    register(
        ModelSpec(
            name="digits_vit",
            family="vit",
            build=digits_vit,
            input_size=(1, 8, 8),
            mean=DIGITS_MEAN,
            std=DIGITS_STD,
            classes=DIGITS_CLASSES,
            checkpoint="digits_vit.pt",
            checkpoint_root="cache",
            description="small ViT (3 blocks, dim 64) for scikit-learn's 8x8 digits",
            trainable_hint="Train it (about 20 s): `vitquant train digits_vit --data digits`.",
            extra={
                "train": {
                    "epochs": 40,
                    "lr": 1e-3,
                    "weight_decay": 0.01,
                    "optimizer": "adamw",
                    "batch_size": 32,
                    "augment": False,
                }
            },
        )
    )
    register(
        ModelSpec(
            name="digits_cnn",
            family="cnn",
            build=digits_cnn,
            input_size=(1, 8, 8),
            mean=DIGITS_MEAN,
            std=DIGITS_STD,
            classes=DIGITS_CLASSES,
            checkpoint="digits_cnn.pt",
            checkpoint_root="cache",
            description="small CNN with BatchNorm for scikit-learn's 8x8 digits",
            trainable_hint="Train it (about 10 s): `vitquant train digits_cnn --data digits`.",
            extra={
                "train": {
                    "epochs": 15,
                    "lr": 0.05,
                    "weight_decay": 5e-4,
                    "optimizer": "sgd",
                    "batch_size": 64,
                    "augment": False,
                }
            },
        )
    )
