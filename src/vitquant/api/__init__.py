"""The Python API behind ``import vitquant as vq``: one function per command, any ``nn.Module``,
named data or the user's own batches. ``vitquant/__init__.py`` exposes these names lazily.

- ``data``: the user's batches as a ``DataBundle`` look-alike (``UserData``), images untouched.
- ``model``: registry models, specs derived for any module, the logits view of a module.
- ``setup``: model + data resolved and checked together (what every function does first).
- ``analyze``, ``quantize``, ``evaluate``, ``train`` (QAT and its search), ``flows`` (pipeline,
  compare, report): the functions; ``results``: what they return.
"""
