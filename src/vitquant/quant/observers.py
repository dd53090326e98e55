"""Extra activation observers for the pt2e flow."""

from __future__ import annotations

import torch
from torchao.quantization.pt2e.observer import MinMaxObserver

MAX_SAMPLE = 1 << 20  # torch.quantile refuses > 16M elements; a 1M sample is plenty for a range


class PercentileObserver(MinMaxObserver):
    """Range = mean over batches of the ``100-p`` and ``p`` percentiles of the activations.

    Clips rare outliers that a min/max range would stretch to cover (the ViT failure mode), at
    the price of saturating them.
    """

    def __init__(self, percentile: float = 99.99, **kwargs) -> None:
        super().__init__(**kwargs)
        self.percentile = percentile
        self.register_buffer("batches", torch.tensor(0, dtype=torch.long))

    def forward(self, x_orig: torch.Tensor) -> torch.Tensor:
        if x_orig.numel() == 0:
            return x_orig
        x = x_orig.detach().float().flatten()
        if x.numel() > MAX_SAMPLE:
            x = x[
                torch.randperm(x.numel(), generator=torch.Generator().manual_seed(0))[:MAX_SAMPLE]
            ]
        q = torch.tensor([1.0 - self.percentile / 100.0, self.percentile / 100.0])
        lo, hi = torch.quantile(x, q.to(x.dtype))
        n = int(self.batches)
        if n == 0:
            self.min_val.resize_(lo.shape)
            self.max_val.resize_(hi.shape)
            self.min_val.copy_(lo)
            self.max_val.copy_(hi)
        else:
            self.min_val.copy_((self.min_val * n + lo) / (n + 1))
            self.max_val.copy_((self.max_val * n + hi) / (n + 1))
        self.batches += 1
        return x_orig


def observer_class(name: str, percentile: float = 99.99) -> tuple[type, dict]:
    """The activation observer class of ``name`` and its extra constructor arguments.

    ``minmax`` (running min/max), ``moving_average`` (EMA of per-batch min/max), ``histogram``
    (torch's L2-error-minimising histogram search) or ``percentile`` (``PercentileObserver``).
    """
    from torchao.quantization.pt2e.observer import (
        HistogramObserver,
        MovingAverageMinMaxObserver,
    )

    from vitquant.errors import VitquantError

    classes = {
        "minmax": (MinMaxObserver, {}),
        "moving_average": (MovingAverageMinMaxObserver, {}),
        "histogram": (HistogramObserver, {}),
        "percentile": (PercentileObserver, {"percentile": percentile}),
    }
    if name not in classes:
        raise VitquantError(
            f"unknown observer {name!r}; choose minmax, moving_average, histogram or percentile."
        )
    return classes[name]
