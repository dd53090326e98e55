"""Low-bit (below int8) weight quantization."""
