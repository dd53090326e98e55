"""DeiT-style Vision Transformers built with timm (same module names as DeiT-S)."""

from __future__ import annotations

from timm.models.vision_transformer import VisionTransformer

# The reference CIFAR-10 ViT (see $VITQUANT_ASSETS/models/vit_cifar10/vit_cifar10.json).
CIFAR_VIT_CONFIG = dict(
    img_size=32, patch_size=4, embed_dim=128, depth=12, num_heads=4, mlp_ratio=4
)

# A small ViT for scikit-learn's 8x8 digits: 4x4 patches -> 4 tokens + cls; trains in seconds.
# (2x2 patches overfit the 1,222 training images: 93-95% test against 97% here.)
DIGITS_VIT_CONFIG = dict(
    img_size=8, patch_size=4, in_chans=1, embed_dim=64, depth=3, num_heads=4, mlp_ratio=2
)


def cifar_vit(num_classes: int = 10) -> VisionTransformer:
    return VisionTransformer(num_classes=num_classes, **CIFAR_VIT_CONFIG)


def digits_vit(num_classes: int = 10) -> VisionTransformer:
    return VisionTransformer(num_classes=num_classes, **DIGITS_VIT_CONFIG)
