"""ViT-specific post-training quantization methods."""
