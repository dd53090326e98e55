"""A converted pt2e graph compiled once by inductor and run on its int8 kernels, at any batch.

Why: run eagerly, a converted graph *emulates* int8 (quantize/dequantize around float kernels)
and is no faster than fp32 - DeiT-S at 224 px takes about as long per image as the float model.
Compiled by inductor (x86) the same graph runs oneDNN int8 kernels, about 10x faster here. So the
pipeline measures each x86 variant's val and test accuracy on the lowered model - the thing that
is deployed and timed - instead of on the emulation, and compiles each variant once.

Inductor compiles one static graph per input shape (``dynamic=False``; its dynamic-shape int8
kernels failed a stride check on the second shape). ``LoweredModel`` therefore runs every batch
in chunks of ``chunk`` images, padding the last chunk by repeating its last image, so an
evaluation compiles one shape whatever the role's size; latency at batch 1 compiles a second.

The operators left in float (attention's matmuls and softmax, LayerNorm, GELU) run in bfloat16
where the CPU multiplies bf16 natively (AMX or AVX512-BF16): PyTorch's "int8-mixed-bf16"
recipe for the x86 quantizer, the graph called under ``torch.autocast("cpu", bfloat16)``.
On DeiT-S at 224 px that made the x86 path about 1.3-1.5x faster (the float attention had taken
40% of its time) for no measurable loss (logit SQNR 29.8 dB vs 29.7 all-fp32; see the README's
benchmark). ``float_ops="fp32"`` keeps them in fp32; elsewhere ``"auto"`` is fp32 (bf16 would be
emulated and slower).
"""

from __future__ import annotations

import contextlib

import torch

from vitquant.quant import x86_attention
from vitquant.quant.pt2e import QuantizedModel

FLOAT_OPS = ("auto", "bf16", "fp32")


def native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AMX tiles or AVX512-BF16)."""
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def resolve_float_ops(float_ops: str) -> str:
    """``"bf16"`` or ``"fp32"``: what ``float_ops`` (one of ``FLOAT_OPS``) means on this CPU."""
    if float_ops not in FLOAT_OPS:
        raise ValueError(f"float_ops must be one of {', '.join(FLOAT_OPS)}, not {float_ops!r}")
    if float_ops == "auto":
        return "bf16" if native_bf16() else "fp32"
    return float_ops


def lower(qm: QuantizedModel | torch.fx.GraphModule, *, freezing: bool = True):
    """Compile a converted graph with inductor so int8 patterns run as int8 kernels (x86).

    Returns the compiled callable; the first calls compile (tens of seconds on a small CPU).
    Raises whatever ``torch.compile`` raises - callers fall back to eager and mark the
    measurement ``simulated``.
    """
    import torch._inductor.config as inductor_config

    gm = qm.module if isinstance(qm, QuantizedModel) else qm
    inductor_config.freezing = freezing
    # dynamic=False: one static graph per batch size (inductor's dynamic-shape int8 conv
    # kernels failed a stride check here on the second shape).
    return torch.compile(gm, backend="inductor", dynamic=False)


class LoweredModel:
    """``gm`` compiled by inductor; ``__call__`` takes any batch size.

    Args:
        qm: a converted graph (or the ``QuantizedModel`` holding it).
        chunk: images per compiled call for batches larger than one.
        float_ops: ``"auto"`` (bf16 where native, else fp32), ``"bf16"`` or ``"fp32"``: the
            precision of the operators left in float (``FLOAT_OPS``).
        cpp_wrapper: compile with inductor's C++ wrapper (no Python between kernels): DeiT-S
            at batch 1 about 13% faster, compilation about twice as long.

    Raises:
        Exception: whatever ``torch.compile`` raises on the first call (callers fall back to the
            emulation and mark the row ``simulated``).
    """

    def __init__(
        self,
        qm: QuantizedModel | torch.fx.GraphModule,
        *,
        chunk: int = 32,
        float_ops: str = "auto",
        cpp_wrapper: bool = False,
    ) -> None:
        self.graph = qm.module if isinstance(qm, QuantizedModel) else qm
        self.chunk = chunk
        self.float_ops = resolve_float_ops(float_ops)
        self.compiled = lower(self.graph)
        # inductor settings in force while a shape compiles (its first call only)
        self.patch = x86_attention.inductor_patch()  # fuses int8 attention blocks, if any
        if cpp_wrapper:
            self.patch["cpp_wrapper"] = True
        self.compiled_shapes: set[torch.Size] = set()

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        bf16 = self.float_ops == "bf16"
        patch = contextlib.nullcontext()
        if x.shape not in self.compiled_shapes:  # this call compiles the shape
            import torch._inductor.config as inductor_config

            patch = inductor_config.patch(self.patch)
        with patch, torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = self.compiled(x)
        self.compiled_shapes.add(x.shape)
        return out.float() if bf16 else out

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if n == 1:
            return self._run(x)
        outs = []
        for start in range(0, n, self.chunk):
            part = x[start : start + self.chunk]
            k = part.shape[0]
            if k < self.chunk:  # pad to the compiled shape; the padding rows are dropped
                pad = part[-1:].expand(self.chunk - k, *part.shape[1:])
                part = torch.cat([part, pad])
            outs.append(self._run(part)[:k])
        return torch.cat(outs)

    def eval(self) -> LoweredModel:  # evaluate.accuracy calls .eval() on nn.Modules only
        return self
