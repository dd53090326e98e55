"""Quantization: ignore lists (``scope``), recipes (``configs``), torchao pt2e static PTQ
(``pt2e``), the backends behind one interface (``backends``: x86, xnnpack, onnxruntime - each
one's quantizer, lowering, export/load and dynamic path), dynamic int8 (``dynamic``), ONNX
Runtime int8 (``onnx_backend``), ExecuTorch programs (``executorch_backend``), accuracy-aware
layer selection (``auto``), saved variants (``artifacts``), the variants + results rows the CLI
and the pipeline share (``run``, ``variant_rows``) and their re-measurement (``bench``).
"""
