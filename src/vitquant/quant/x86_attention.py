"""Int8 attention on the x86 path: torchao's fused quantized-SDPA kernel.

With ``StaticPTQ(int8_attention=True)`` the x86 quantizer also annotates ``torch.matmul`` (both
inputs of ``q @ k^T`` and ``attn @ v``), and inductor replaces each dequantize -> ``q @ k^T`` ->
softmax -> quantize -> ``@ v`` -> quantize block by one int8 kernel
(``torchao.prototype.inductor.fx_passes.qsdpa_fusion``). On DeiT-S at 224 px, with the float
operators in bf16, that made the x86 path about 5% faster at batch 1 and 10% at batch 32
(``benchmarks/x86_int8_attention.py``; logit SQNR 28.6 dB against 28.7 with float attention).

Hand-written pieces, and why:

- ``int8_attention_forward``: the fusion matches one graph layout only (q, k and v reshaped and
  permuted from the ``qkv`` output; ``q @ k^T * scale`` plus a mask; softmax; ``@ v``; heads
  merged by permute + contiguous), not timm's (the scale on ``q``, one reshape for all three).
  This forward is timm's math in that layout.
- The zero ``attn_mask`` buffer: torch 2.14 rewrites ``softmax(x * scale)`` with an inf guard
  (``where``) that torchao's patterns predate; adding a float mask keeps that rewrite off, so
  the masked pattern matches.
- The kernel is a C++ template inductor generates for AMX only (the torchao wheel carries no
  prebuilt CPU kernel), so ``available()`` is false elsewhere: there the graph still runs, with
  the attention matmuls as quantize/dequantize around float matmuls.
"""

from __future__ import annotations

import types

import torch
from torch import nn


def available() -> bool:
    """Whether inductor can generate the fused int8 attention kernel here (AMX tiles and
    torchao's prototype fusion importable)."""
    if not getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)():
        return False
    try:
        from torchao.prototype.inductor.fx_passes import qsdpa_fusion  # noqa: F401
    except ImportError:
        return False
    return True


def int8_attention_forward(self, x: torch.Tensor, attn_mask=None, is_causal: bool = False):
    """timm ``Attention.forward`` (no mask, no q/k norm, no gate) in the layout of torchao's
    qsdpa patterns: the same math up to float rounding."""
    b, n, c = x.shape
    q, k, v = self.qkv(x).chunk(3, dim=-1)
    heads = (b, n, self.num_heads, self.head_dim)
    q, k, v = (t.reshape(heads).permute(0, 2, 1, 3) for t in (q, k, v))
    scores = torch.matmul(q, k.transpose(-1, -2)) * self.scale + self.qsdpa_zero_mask
    out = torch.matmul(scores.softmax(dim=-1), v)
    return self.proj(out.permute(0, 2, 1, 3).contiguous().reshape(b, n, c))


def _plain_timm_attention(module: nn.Module) -> bool:
    from timm.models.vision_transformer import Attention

    if not isinstance(module, Attention) or getattr(module, "gate", None) is not None:
        return False
    norms = [getattr(module, name, None) for name in ("q_norm", "k_norm", "norm")]
    return all(m is None or isinstance(m, nn.Identity) for m in norms)


def use_int8_attention_layout(model: nn.Module, tokens: int) -> int:
    """Switch ``model``'s plain timm attention blocks (in place) to ``int8_attention_forward``
    with a zero mask over ``tokens`` keys; returns how many were switched."""
    switched = 0
    for module in model.modules():
        if _plain_timm_attention(module):
            module.register_buffer("qsdpa_zero_mask", torch.zeros(1, 1, 1, tokens))
            module.forward = types.MethodType(int8_attention_forward, module)
            switched += 1
    return switched


def token_count(model: nn.Module) -> int | None:
    """Tokens per image of a timm ViT (patches plus prefix tokens), None for other models."""
    embed = getattr(model, "patch_embed", None)
    if embed is None or not hasattr(embed, "num_patches"):
        return None
    return int(embed.num_patches) + int(getattr(model, "num_prefix_tokens", 0))


def inductor_patch() -> dict:
    """The inductor config entries that turn the fusion on (empty where ``available()`` is
    false); its patterns are registered once, into the pass they are applied by."""
    if not available():
        return {}
    import torch._inductor.config as inductor_config
    from torchao.prototype.inductor.fx_passes.qsdpa_fusion import _qsdpa_init, custom_pass

    with inductor_config.patch(post_grad_custom_pre_pass=custom_pass):
        _qsdpa_init()  # lru-cached: registers into the pass dict in force at its first call
    return {"post_grad_custom_pre_pass": custom_pass}
