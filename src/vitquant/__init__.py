"""vitquant: why a Vision Transformer loses accuracy under int8, and the best int8 model.

The importable API mirrors the command line: ``load_model`` (registry), ``load_data`` (data bundle),
``evaluate`` (accuracy/size/latency) and ``train``.
"""

from vitquant.errors import VitquantError

__all__ = ["VitquantError", "__version__"]
__version__ = "0.1.0"
