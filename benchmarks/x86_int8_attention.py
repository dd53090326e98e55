"""Int8 attention kernels on the x86 path, measured against vitquant's default (int8-mixed-bf16).

Issue 14 names int8 kernels for the attention matmuls as the way past the float attention of
the x86 path. torchao ships one: its quantized-SDPA fusion
(``torchao.prototype.inductor.fx_passes.qsdpa_fusion``), which replaces q/k/v dequantize ->
``q @ k^T`` -> softmax -> quantize -> ``@ v`` -> quantize by one generated int8 kernel
(``torchao::qscaled_dot_product``). This script builds it for DeiT-S at 224 px and times it,
interleaved, against fp32 eager and the x86 path vitquant ships:

================================ ===========================================================
variant                          what
================================ ===========================================================
fp32-eager                       the float timm model (the reference of every speedup)
x86-bf16                         vitquant's x86 path: int8 Linear layers, the rest in bf16
x86-int8-attention               int8 Linear layers and int8 q@k^T / attn@v (fused qsdpa)
x86-int8-attention-bf16          the same, the remaining float operators in bf16
...-cpp-wrapper                  the two bf16 variants with inductor's ``cpp_wrapper``
================================ ===========================================================

Every graph is built by vitquant's own ``quantize_static`` (the int8-attention ones with
``StaticPTQ(int8_attention=True)``: the layout and fusion pass of ``vitquant.quant.x86_attention``,
whose docstring says why they are hand-written) and runs in vitquant's own ``LoweredModel``.
``fused`` counts the attention blocks inductor fused. The kernel exists on AMX CPUs only;
elsewhere the script says so and stops.

Timing (``deit_s_cpu.interleaved``): ``--repeats`` rounds round-robin over the variants (start
rotated), one untimed and ``--iters`` timed calls each, at batch 1 and 32, 2 threads; speedups
are the median (and IQR) of per-round ratios. Agreement: logit SQNR against fp32 eager on a
batch of CIFAR-10 test images through DeiT-S's eval transform (random weights: the hubs are
offline, so no accuracy).

    python benchmarks/x86_int8_attention.py            # ~10 min alone on 2 cores
    python benchmarks/x86_int8_attention.py --variants x86-bf16-cpp-wrapper \
        x86-int8-attention-bf16 x86-int8-attention-bf16-cpp-wrapper --out runs/bench/x.json

Writes runs/bench/x86_int8_attention.json (or --out).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch
from deit_s_cpu import DEIT, interleaved, median_iqr  # same folder: one timing method

VARIANTS = (
    "fp32-eager",
    "x86-bf16",
    "x86-int8-attention",
    "x86-int8-attention-bf16",
    "x86-bf16-cpp-wrapper",
    "x86-int8-attention-bf16-cpp-wrapper",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--iters", type=int, default=3, help="timed calls per variant per round")
    parser.add_argument("--calib", type=int, default=32, help="calibration images")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--variants", nargs="+", choices=VARIANTS[1:], default=list(VARIANTS[1:4]), metavar="V"
    )
    parser.add_argument("--out", type=Path, default=Path("runs/bench/x86_int8_attention.json"))
    args = parser.parse_args(argv)

    from torch._dynamo.utils import counters

    from vitquant.data import load_data
    from vitquant.io import write_json
    from vitquant.quant import x86_attention
    from vitquant.quant.configs import StaticPTQ
    from vitquant.quant.lowered import LoweredModel, native_bf16
    from vitquant.quant.pt2e import quantize_static
    from vitquant.registry import get_spec

    if not x86_attention.available():
        print("torchao's int8 attention kernel is generated for AMX CPUs only; this one has none.")
        return 2
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    spec = get_spec(DEIT)
    model = spec.build(spec.num_classes or 1000).eval()
    bundle = load_data("cifar10", val=0, calib=args.calib, limit=32)
    x32 = next(bundle.batches("test", spec, batch_size=32))[0]

    def convert(attention: bool) -> torch.fx.GraphModule:
        cfg = StaticPTQ(backend="x86", calib=args.calib, calib_batch=8, int8_attention=attention)
        return quantize_static(model, bundle, spec, cfg).module

    plain, fused = convert(False), convert(True)

    def lowered(graph, float_ops: str, cpp_wrapper: bool = False):
        # vitquant's own runner: the fusion pass is on wherever available(), which is a no-op
        # for a graph without int8 attention blocks
        return LoweredModel(copy.deepcopy(graph), float_ops=float_ops, cpp_wrapper=cpp_wrapper)

    make = {
        "fp32-eager": lambda: model,
        "x86-bf16": lambda: lowered(plain, "bf16"),
        "x86-int8-attention": lambda: lowered(fused, "fp32"),
        "x86-int8-attention-bf16": lambda: lowered(fused, "bf16"),
        "x86-bf16-cpp-wrapper": lambda: lowered(plain, "bf16", cpp_wrapper=True),
        "x86-int8-attention-bf16-cpp-wrapper": lambda: lowered(fused, "bf16", cpp_wrapper=True),
    }
    runners = {name: make[name]() for name in ["fp32-eager", *args.variants]}
    doc: dict = {
        "benchmark": "x86_int8_attention",
        "model": DEIT,
        "machine": {
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "native_bf16": native_bf16(),
            "amx": True,
        },
        "threads": args.threads,
        "repeats": args.repeats,
        "iters": args.iters,
        "versions": {"torch": torch.__version__},
        "variants": {},
    }
    with torch.no_grad():
        ref = model(x32)
        for name, fn in runners.items():
            start, fused_blocks = time.perf_counter(), {}
            for b in (1, 32):  # compile both shapes before timing, counting fused blocks
                counters.clear()
                fn(x32[:b])
                fused_blocks[b] = int(counters["inductor"].get("qsdpa_fuse_attention", 0))
            out = fn(x32).float()
            noise = (ref - out).pow(2).sum()
            sqnr = None if noise == 0 else float(10 * torch.log10(ref.pow(2).sum() / noise))
            doc["variants"][name] = {
                "warmup_seconds": time.perf_counter() - start,
                "logit_sqnr_db": sqnr,
                "fused_attention_blocks": None if fn is model else fused_blocks,
                "batches": {},
            }
            print(f"{name}: compiled/warmed in {time.perf_counter() - start:.0f} s", flush=True)
    for b in (1, 32):
        timed = interleaved(
            runners, x32[:b], rounds=args.repeats, iters=args.iters, label=f"batch {b}"
        )
        eager = timed["fp32-eager"]["rounds_ms"]
        for name, t in timed.items():
            ratios = [e / m for e, m in zip(eager, t["rounds_ms"], strict=True)]
            lat = median_iqr(t["samples"])
            doc["variants"][name]["batches"][str(b)] = {
                "ms_per_image": lat["median"],
                "iqr_ms": lat["iqr"],
                "speedup_vs_fp32_eager": median_iqr(ratios),
                "rounds_ms": t["rounds_ms"],
            }
    for name, v in doc["variants"].items():
        cells = [
            f"b{b} {v['batches'][str(b)]['ms_per_image']:.2f} ms "
            f"({v['batches'][str(b)]['speedup_vs_fp32_eager']['median']:.2f}x)"
            for b in (1, 32)
        ]
        print(name, *cells, f"SQNR {v['logit_sqnr_db']}", f"fused {v['fused_attention_blocks']}")
    write_json(args.out, doc)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
