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
from vitquant.evaluate import (
    accuracy,
    count_layers,
    example_batch,
    latency_ms_per_image,
    set_threads,
    state_dict_size_mb,
)
from vitquant.results import ResultRow


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
    n_threads = set_threads(threads) if ctx.world == 1 or threads else torch.get_num_threads()
    acc = accuracy(loaded.model, bundle, "test", loaded.spec, progress="evaluating", ctx=ctx)
    if not ctx.is_main:
        return
    lat = {
        b: latency_ms_per_image(loaded.model, example_batch(bundle, loaded.spec, b))
        for b in sorted({1, 32, latency_batch})
    }
    row = ResultRow(
        variant="fp32",
        backend="pytorch",
        accuracy=acc,
        n=len(bundle.test_idx),
        float_layers=count_layers(loaded.model),
        size_mb=state_dict_size_mb(loaded.model),
        latency_ms_per_image=lat[latency_batch],
        latency_batch=latency_batch,
        latency_threads=n_threads,
        extra={"latency_ms_per_image_by_batch": {str(b): v for b, v in lat.items()}},
    )
    payload = {
        "model": model,
        "checkpoint": loaded.checkpoint,
        **bundle.describe(),
        **row.to_dict(),
        "results": [row.to_dict()],
    }
    path = save_result(directory, "eval", payload)
    console.print(
        f"{model} on {bundle.name} test ({row.n} images): accuracy [bold]{acc:.4f}[/], "
        f"size {row.size_mb:.2f} MiB, latency {lat[latency_batch]:.3f} ms/img "
        f"(batch {latency_batch}, {n_threads} threads)"
    )
    console.print(f"wrote {path}")
