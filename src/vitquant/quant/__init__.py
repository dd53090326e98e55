"""Quantization: ignore lists (``scope``), recipes (``configs``), torchao pt2e static PTQ
(``pt2e``), dynamic int8 (``dynamic``), ONNX Runtime int8 (``onnx_backend``), accuracy-aware
layer selection (``auto``), saved variants (``artifacts``) and the variants + results rows the
CLI and the pipeline share (``run``).
"""
