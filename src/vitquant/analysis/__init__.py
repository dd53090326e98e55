"""Why a model loses accuracy under int8: activation outliers, weight change, layer sensitivity.

- ``hooks``: which tensors to observe (Linear/Conv outputs; LayerNorm, GELU, softmax in ViTs).
- ``stats``: exact streaming activation statistics (``collect_activation_stats``).
- ``weights``: weight statistics, the study's change score, SQNR / relative MSE.
- ``sensitivity``: accuracy/KL with one layer quantized alone, or all but one.
- ``summary``: the same results grouped by block index and by layer type.
"""
