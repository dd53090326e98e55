"""QAT under torchrun: 2 CPU processes (gloo) end with identical weights and fake-quant scales."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

WORKER = Path(__file__).with_name("qat_ddp_worker.py")


def test_torchrun_two_ranks_end_identical(tmp_path, digits_models):
    env = {**os.environ, "VITQUANT_QUIET": "1", "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        str(WORKER),
        str(tmp_path),
    ]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    a, b = ranks[0]["state"], ranks[1]["state"]
    assert a.keys() == b.keys()
    scales = [k for k in a if k.endswith(".scale")]
    weights = [k for k in a if k.endswith("weight")]
    bn = [k for k in a if k.endswith(("running_mean", "running_var"))]
    assert len(scales) >= 8 and len(weights) >= 4 and len(bn) == 6  # 8 fake-quant modules
    for key in a:  # weights, BN statistics, scales, zero points, observer ranges: bit-identical
        assert torch.equal(a[key], b[key]), key

    # Both ranks recorded the same per-epoch validation figures (rank 0 evaluates, broadcasts).
    def figures(history):
        return [{k: v for k, v in h.items() if k != "seconds"} for h in history]

    assert figures(ranks[0]["history"]) == figures(ranks[1]["history"])
    assert len(ranks[0]["history"]) == 3 and ranks[0]["history"][2]["loss"] > 0
    # The last epoch's state (not only the kept one) is identical too, and it did train.
    last_a, last_b = ranks[0]["last_state"], ranks[1]["last_state"]
    assert last_a.keys() == a.keys()
    for key in last_a:
        assert torch.equal(last_a[key], last_b[key]), key
    ref = torch.load(digits_models["digits_cnn"], weights_only=True)
    assert not torch.equal(last_a["conv2.weight"], ref["conv2.weight"])
