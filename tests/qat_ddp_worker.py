"""Run by ``torchrun`` in test_qat_ddp.py: QAT on digits_cnn, then save this rank's final state."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from vitquant.data import load_data
from vitquant.quant.qat import QATConfig, run_qat
from vitquant.registry import load_model


def main(out: Path) -> None:
    bundle = load_data("digits", val=100, calib=64)
    loaded = load_model("digits_cnn")
    cfg = QATConfig(
        epochs=2, lr=0.02, batch_size=64, train_limit=256, augment=False, freeze_observers_after=1
    )
    last = {}

    def keep_last(epoch, record, module) -> None:
        # Copies: run_qat later loads the best epoch's state into these same tensors.
        last.update({k: v.detach().clone() for k, v in module.state_dict().items()})

    result = run_qat(loaded.model, loaded.spec, bundle, cfg, log=print, on_epoch=keep_last)
    rank = dist.get_rank()
    state = {k: v.detach().clone() for k, v in result.prepared.state_dict().items()}
    torch.save(
        {"state": state, "last_state": last, "world": result.world_size, "history": result.history},
        out / f"rank{rank}.pt",
    )
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
