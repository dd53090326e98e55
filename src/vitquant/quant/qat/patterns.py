"""A memo over torchao's pattern export, which ``prepare_qat_pt2e`` and ``convert_pt2e`` repeat.

This patches private torchao functions (``_get_aten_graph_module_for_pattern`` in
``torchao.quantization.pt2e.utils`` and ``qat_utils``, and ``qat_utils._fold_conv_bn_qat_helper``)
for the duration of a ``with`` block only; ``tests/test_qat_freeze.py`` checks that a conversion
under the memo equals torchao's own.
"""

from __future__ import annotations

import contextlib
import copy

import torch

_PATTERNS: dict = {}
_aten = torch.ops.aten
_CONV_TARGETS = {  # F.<name> -> the aten ops it exports to
    "conv1d": {_aten.conv1d.default, _aten.conv1d.padding},
    "conv2d": {_aten.conv2d.default, _aten.conv2d.padding},
    "conv_transpose1d": {_aten.conv_transpose1d.default},
    "conv_transpose2d": {_aten.conv_transpose2d.input},
}


def _pattern_key(pattern, example_inputs, is_cuda, kwargs):
    """A hashable identity of a pattern function and its example shapes, or None."""
    fn = getattr(pattern, "fn", pattern)  # torchao's WrapperModule holds the function
    code = getattr(fn, "__code__", None)
    if code is None:
        return None

    def shape(v):
        return ("t", tuple(v.shape), v.dtype) if isinstance(v, torch.Tensor) else ("v", repr(v))

    try:
        cells = tuple(c.cell_contents for c in fn.__closure__ or ())
        key = (
            code,
            cells,
            tuple(map(shape, example_inputs)),
            bool(is_cuda),
            tuple(sorted((k, shape(v)) for k, v in kwargs.items())),
        )
        hash(key)
    except (TypeError, ValueError):
        return None
    return key


@contextlib.contextmanager
def cached_patterns():
    """Memoise torchao's pattern export while converting or preparing QAT graphs.

    ``convert_pt2e`` re-exports about a hundred small Conv+BN patterns with ``torch.export`` on
    every call (tens of seconds for a three-layer CNN); they depend only on the pattern function
    and the example shapes, so one process exports each once. Each caller gets a copy.
    """
    from torchao.quantization.pt2e import qat_utils, utils

    original = utils._get_aten_graph_module_for_pattern

    def cached(pattern, example_inputs, is_cuda=False, **kwargs):
        key = _pattern_key(pattern, example_inputs, is_cuda, kwargs)
        if key is None:
            return original(pattern, example_inputs, is_cuda, **kwargs)
        if key not in _PATTERNS:
            _PATTERNS[key] = original(pattern, example_inputs, is_cuda, **kwargs)
        return copy.deepcopy(_PATTERNS[key])

    fold = qat_utils._fold_conv_bn_qat_helper

    def fold_present(m, conv_fn, example_inputs, is_cuda):
        """torchao's Conv+BN fold for ``conv_fn``, only when the graph has such a conv: the
        fold exports ~27 patterns per conv kind (1d, 2d, transposed) before matching any, and
        a ViT or CNN has one kind (3/4 of a first conversion's ~50 s on ``digits_cnn``)."""
        targets = _CONV_TARGETS.get(getattr(conv_fn, "__name__", ""))
        if targets is not None and not any(n.target in targets for n in m.graph.nodes):
            return m
        return fold(m, conv_fn, example_inputs, is_cuda)

    utils._get_aten_graph_module_for_pattern = cached
    qat_utils._get_aten_graph_module_for_pattern = cached
    qat_utils._fold_conv_bn_qat_helper = fold_present
    try:
        yield
    finally:
        utils._get_aten_graph_module_for_pattern = original
        qat_utils._get_aten_graph_module_for_pattern = original
        qat_utils._fold_conv_bn_qat_helper = fold
