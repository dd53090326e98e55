"""`vitquant eval`: float accuracy, size and latency of a model."""

from __future__ import annotations

import torch

from vitquant.cli.app import app, console
from vitquant.cli.common import model_and_data, prepare_out, save_result
from vitquant.cli.options import (
    CalibOpt,
    CheckpointOpt,
    DataOpt,
    LatencyBatchOpt,
    LimitOpt,
    ModelArg,
    NumClassesOpt,
    OutOpt,
    OverwriteOpt,
    PretrainedOpt,
    RandomOpt,
    SeedOpt,
    ThreadsOpt,
    ValOpt,
    VerboseOpt,
)
from vitquant.distributed import dist_context
from vitquant.evaluate import state_dict_bytes
from vitquant.layers import quantizable_names
from vitquant.measure import Candidate, Measurer


@app.command("eval")
def eval_(
    model: ModelArg,
    data: DataOpt = "digits",
    checkpoint: CheckpointOpt = None,
    pretrained: PretrainedOpt = False,
    random_weights: RandomOpt = False,
    num_classes: NumClassesOpt = None,
    limit: LimitOpt = None,
    val: ValOpt = None,
    calib: CalibOpt = 256,
    seed: SeedOpt = 0,
    latency_batch: LatencyBatchOpt = 1,
    threads: ThreadsOpt = None,
    out: OutOpt = None,
    overwrite: OverwriteOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Float accuracy on the test split (progress bar), artifact size and latency -> eval.json."""
    directory = prepare_out(out, "eval", model, overwrite)
    loaded, bundle = model_and_data(
        model,
        data=data,
        checkpoint=checkpoint,
        pretrained=pretrained,
        random_weights=random_weights,
        num_classes=num_classes,
        calib=calib,
        val=val,
        limit=limit,
        seed=seed,
    )
    ctx = dist_context()  # under torchrun each rank tests its shard; rank 0 times and writes
    measurer = Measurer(
        bundle,
        loaded.spec,
        roles=("test",),
        latency_batches=sorted({1, 32, latency_batch}),
        latency_batch=latency_batch,
        # torchrun gives each rank its share of the cores: keep it unless --threads says otherwise
        threads=threads if ctx.world == 1 or threads else torch.get_num_threads(),
        progress=True,
        ctx=ctx,
        log=None,
    )
    measurer.measure(
        Candidate(
            variant="fp32",
            backend="pytorch",
            runner=loaded.model.eval(),
            size_bytes=state_dict_bytes(loaded.model),
            float_layers=quantizable_names(loaded.model),
        )
    )
    if not ctx.is_main:
        return
    (row,) = measurer.finalize()
    payload = {
        "model": model,
        "checkpoint": loaded.checkpoint,
        **bundle.describe(),
        **row.to_dict(),
        "results": [row.to_dict()],
    }
    path = save_result(directory, "eval", payload)
    console.print(
        f"{model} on {bundle.name} test ({row.n} images): accuracy [bold]{row.accuracy:.4f}[/], "
        f"size {row.size_mb:.2f} MiB, latency {row.latency_ms_per_image:.3f} ms/img "
        f"(batch {latency_batch}, {row.latency_threads} threads)"
    )
    console.print(f"wrote {path}")
