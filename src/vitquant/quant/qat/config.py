"""The QAT recipe (``QATConfig``) and what a run produced (``QATResult``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

from torch import nn

from vitquant.errors import VitquantError
from vitquant.quant.configs import check_backend
from vitquant.quant.lowbit.bits import BitSetting, BitsPlan
from vitquant.quant.lowbit.narrow import is_low_bit
from vitquant.train import TrainConfig


@dataclass(frozen=True)
class QATConfig:
    """One QAT recipe.

    Attributes:
        epochs: fine-tuning epochs.
        lr: peak learning rate (cosine decay to 0 after ``warmup_epochs``).
        momentum: SGD momentum (Nesterov).
        weight_decay: weight decay.
        optimizer: ``sgd`` or ``adamw``.
        batch_size: global batch size (split across ranks under torchrun).
        freeze_observers_after: finished epochs after which observers stop updating (None: never).
        freeze_bn_after: finished epochs after which BatchNorm statistics freeze (None: never).
        train_limit: train on this many fit images per epoch, drawn afresh each epoch (None: all).
        calib: calibration images that initialise the observers before epoch 1 (None: all).
        augment: random crop + flip of 3-channel images.
        warmup_epochs: linear warm-up of the learning rate.
        label_smoothing: cross-entropy label smoothing.
        backend: pt2e quantizer, ``x86`` or ``xnnpack`` (see ``vitquant.quant.pt2e``).
        per_channel: per-output-channel weight scales.
        symmetric_activations: activations with zero point 0 (x86: int8 instead of uint8).
        seed: seed of the epoch order, augmentation and dropout.
        eval_batch: batch size of the validation passes.
        wbits: weight bits of every quantized layer (8: the backend's int8; below 8 the
            fake-quant ranges narrow, ``vitquant.quant.lowbit.narrow``, and the model is a
            simulated low-bit one: no CPU runtime has such kernels).
        abits: activation bits of every quantized input.
        bits: per-layer rules ``GLOB=W/A`` (``vitquant.quant.lowbit.bits``), last match wins.
    """

    epochs: int = 3
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 1e-4
    optimizer: Literal["sgd", "adamw"] = "sgd"
    batch_size: int = 64
    freeze_observers_after: int | None = None
    freeze_bn_after: int | None = None
    train_limit: int | None = None
    calib: int | None = None
    augment: bool = True
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    backend: str = "x86"
    per_channel: bool = True
    symmetric_activations: bool = False
    seed: int = 0
    eval_batch: int = 256
    wbits: int = 8
    abits: int = 8
    bits: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "bits", tuple(self.bits))
        self.plan  # noqa: B018 - validates the widths and the rules' syntax
        checks = [
            (self.epochs >= 1, f"--epochs must be >= 1 (got {self.epochs})."),
            (self.lr > 0, f"--lr must be > 0 (got {self.lr})."),
            (0 <= self.momentum < 1, f"--momentum must be in [0, 1) (got {self.momentum})."),
            (self.weight_decay >= 0, f"--weight-decay must be >= 0 (got {self.weight_decay})."),
            (
                self.optimizer in ("sgd", "adamw"),
                f"--optimizer must be sgd or adamw, not {self.optimizer!r}.",
            ),
            (self.batch_size >= 1, f"--batch-size must be >= 1 (got {self.batch_size})."),
            (
                self.train_limit is None or self.train_limit >= 1,
                f"--train-limit must be >= 1 (got {self.train_limit}).",
            ),
            (self.calib is None or self.calib >= 1, f"--calib must be >= 1 (got {self.calib})."),
        ]
        for name in ("freeze_observers_after", "freeze_bn_after"):
            value = getattr(self, name)
            flag = "--" + name.replace("_", "-")
            checks.append((value is None or value >= 0, f"{flag} must be >= 0 (got {value})."))
        for ok, message in checks:
            if not ok:
                raise VitquantError(message)
        check_backend(self.backend)

    @property
    def plan(self) -> BitsPlan:
        """The bit widths per layer (``--wbits``/``--abits`` and the ``--bits`` rules)."""
        return BitsPlan.from_texts(BitSetting(self.wbits, self.abits), self.bits)

    @property
    def low_bit(self) -> bool:
        """Whether any layer is set below 8 bits (the model is then simulated, not lowered)."""
        return is_low_bit(self.plan)

    @property
    def bits_label(self) -> str:
        """``W4A4``, with ``+rules`` when per-layer rules are given."""
        return str(self.plan.default) + ("+rules" if self.bits else "")

    def to_dict(self) -> dict:
        return asdict(self)

    def train_config(self) -> TrainConfig:
        """The ``TrainConfig`` whose optimizer and schedule QAT shares with ``vitquant train``."""
        return TrainConfig(
            epochs=self.epochs,
            lr=self.lr,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            optimizer=self.optimizer,
            batch_size=self.batch_size,
            label_smoothing=self.label_smoothing,
            augment=self.augment,
            warmup_epochs=self.warmup_epochs,
            seed=self.seed,
            train_limit=self.train_limit,
        )


@dataclass
class QATResult:
    """What a QAT run produced.

    Attributes:
        history: one dict per epoch (epoch 0 = after calibration, before training): ``epoch``,
            ``loss``, ``float_val_acc`` (fake-quant off), ``int8_val_acc`` (converted copy),
            ``observers_frozen``, ``bn_frozen``, ``seconds``.
        best_epoch: epoch whose int8 validation accuracy was highest (ties: the earliest).
        best_val: that accuracy.
        prepared: the fake-quant model with the best epoch's state (CPU).
        converted: the int8 reference model of the best epoch (CPU); None on ranks > 0.
        world_size: processes that trained.
        diverged: training stopped early on a non-finite loss.
    """

    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_val: float = -1.0
    prepared: nn.Module | None = None
    converted: nn.Module | None = None
    world_size: int = 1
    diverged: bool = False

    @property
    def seconds(self) -> float:
        return sum(h["seconds"] for h in self.history)
