"""Quantization-aware training with torchao's pt2e flow (``prepare_qat_pt2e``).

The float model is exported, annotated by the x86 quantizer in QAT mode (fake-quant modules on
weights and activations, Conv+BN kept as a foldable QAT pattern) and fine-tuned. Before the first
epoch the fake-quant observers are initialised on calibration images, so epoch 0 of the history
is plain static PTQ with the same quantizer. After every epoch a *copy* is converted to the int8
reference model and evaluated on the validation images; the kept weights are those of the best
validation epoch (epoch 0 included), never chosen on test.

Freezing, counted in finished epochs:

- ``freeze_observers_after=E1``: from epoch ``E1 + 1`` on the observers stop updating, so the
  scales and zero points stay fixed while the weights keep learning;
- ``freeze_bn_after=E2``: from epoch ``E2 + 1`` on BatchNorm uses and keeps its running
  statistics (the ``training`` flag of the graph's batch_norm nodes is set to False).

Distributed: under ``torchrun`` (``WORLD_SIZE > 1``) the prepared graph is wrapped in
DistributedDataParallel (gloo on CPU, nccl with CUDA); each rank trains on its shard of the
epoch's images, buffers (observer ranges, scales, BN statistics) are broadcast from rank 0 after
every epoch, and only rank 0 evaluates.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
import types
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from vitquant.data import DataBundle
from vitquant.distributed import DistContext, dist_context
from vitquant.errors import VitquantError
from vitquant.evaluate import accuracy
from vitquant.progress import track
from vitquant.quant.configs import check_backend, check_export
from vitquant.quant.lowered import inductor_lowers
from vitquant.quant.pt2e import (
    edge_friendly_attention,
    export_model,
    make_quantizer,
)
from vitquant.train import TrainConfig, make_optimizer, make_scheduler

BN_TARGETS = (
    torch.ops.aten.batch_norm.default,
    torch.ops.aten._native_batch_norm_legit.default,
    torch.ops.aten.cudnn_batch_norm.default,
)  # the ``training`` flag is argument 5
DROPOUT_TARGETS = (
    torch.ops.aten.dropout.default,
    torch.ops.aten.feature_dropout.default,
    torch.ops.aten.alpha_dropout.default,
)  # the ``train`` flag is argument 2


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

    def __post_init__(self) -> None:
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


# --------------------------------------------------------------------------- distributed


def _broadcast_buffers(module: nn.Module, ctx: DistContext) -> None:
    """Make every rank's buffers (observer ranges, scales, BN statistics) equal to rank 0's."""
    if ctx.world <= 1:
        return
    import torch.distributed as dist

    for buf in module.buffers():
        dist.broadcast(buf.data, src=0)


def _broadcast_object(obj, ctx: DistContext):
    if ctx.world <= 1:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# --------------------------------------------------------------------------- graph helpers


def make_qat_quantizer(cfg: QATConfig, ignore: Sequence[str] = ()):
    """The pt2e quantizer of ``cfg.backend`` in QAT mode, with ``ignore`` modules left in float."""
    return make_quantizer(
        backend=cfg.backend,
        per_channel=cfg.per_channel,
        symmetric_activations=cfg.symmetric_activations,
        is_qat=True,
        ignore=list(ignore),
    )


def prepare_qat(
    model: nn.Module, example: torch.Tensor, cfg: QATConfig, ignore: Sequence[str] = ()
) -> torch.fx.GraphModule:
    """Export ``model`` and insert fake-quant modules (``prepare_qat_pt2e``), in train mode."""
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    if example.shape[0] < 2:  # batch 1 would be specialised
        example = example.repeat(2, 1, 1, 1)
    model = copy.deepcopy(model)
    try:
        with edge_friendly_attention(model, cfg.backend):
            graph = export_model(model, example)
    except Exception as exc:  # torch raises many types for untraceable models
        raise VitquantError(
            f"torch.export could not trace the model for QAT ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:300]})."
        ) from exc
    with cached_patterns():
        prepared = prepare_qat_pt2e(graph, make_qat_quantizer(cfg, ignore))
    set_graph_mode(prepared, training=True)
    return allow_train_eval(prepared)


_PATTERNS: dict = {}


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

    utils._get_aten_graph_module_for_pattern = cached
    qat_utils._get_aten_graph_module_for_pattern = cached
    try:
        yield
    finally:
        utils._get_aten_graph_module_for_pattern = original
        qat_utils._get_aten_graph_module_for_pattern = original


def set_graph_mode(
    graph: torch.fx.GraphModule, *, training: bool, bn_training: bool | None = None
) -> dict[str, int]:
    """Switch an exported graph between train and eval behaviour, keeping every literal.

    ``module.train()`` has no effect on an exported graph: dropout and BatchNorm carry their mode
    as a flag argument. This sets the dropout ``train`` flags to ``training`` and the batch_norm
    ``training`` flags to ``bn_training`` (default ``training``); ``bn_training=False`` while
    training is how BatchNorm is frozen (normalise with, and stop updating, the running
    statistics). torchao's ``move_exported_model_to_train`` is not used because its pattern
    rewrite also replaces every dropout probability by its pattern's 0.5 (torchao 0.18).

    Returns:
        ``{"dropout": n, "batch_norm": m}``: the nodes found.
    """
    bn_training = training if bn_training is None else bn_training
    found = {"dropout": 0, "batch_norm": 0}
    changed = False
    for node in graph.graph.nodes:
        if node.op != "call_function":
            continue
        if node.target in BN_TARGETS:
            index, value, kind = 5, bn_training, "batch_norm"
        elif node.target in DROPOUT_TARGETS:
            index, value, kind = 2, training, "dropout"
        else:
            continue
        found[kind] += 1
        args = list(node.args)
        if args[index] != value:
            args[index] = value
            node.args = tuple(args)
            changed = True
    if changed:
        graph.recompile()
    return found


def allow_train_eval(graph: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Let ``graph.train()`` / ``graph.eval()`` work (``accuracy`` calls ``.eval()``).

    They flip the graph's dropout and BatchNorm flags with ``set_graph_mode``; a frozen BatchNorm
    stays frozen.
    """

    def _train(self, mode: bool = True):
        frozen = getattr(self, "_vitquant_bn_frozen", False)
        set_graph_mode(self, training=mode, bn_training=mode and not frozen)
        return self

    graph.train = types.MethodType(_train, graph)
    graph.eval = types.MethodType(lambda self: _train(self, False), graph)
    return graph


def freeze_bn(graph: torch.fx.GraphModule) -> None:
    """Freeze BatchNorm: normalise with the running statistics and stop updating them."""
    graph._vitquant_bn_frozen = True
    set_graph_mode(graph, training=True, bn_training=False)


def fake_quant_modules(graph: nn.Module) -> dict[str, nn.Module]:
    """The fake-quant modules (they carry ``scale`` and ``zero_point``) by name."""
    from torchao.quantization.pt2e import FakeQuantizeBase

    return {n: m for n, m in graph.named_modules() if isinstance(m, FakeQuantizeBase)}


def freeze_observers(graph: nn.Module) -> None:
    """Stop every observer: scales and zero points keep their current values."""
    from torchao.quantization.pt2e import disable_observer

    graph.apply(disable_observer)


def eval_copy(prepared: nn.Module, *, fake_quant: bool = True) -> nn.Module:
    """A CPU copy of ``prepared`` in eval mode (``fake_quant=False``: the latent float model)."""
    from torchao.quantization.pt2e import disable_fake_quant, disable_observer

    model = copy.deepcopy(prepared).cpu()
    set_graph_mode(model, training=False)
    model.apply(disable_observer)
    if not fake_quant:
        model.apply(disable_fake_quant)
    return allow_train_eval(model)


def convert_copy(prepared: nn.Module) -> nn.Module:
    """The int8 reference model (``convert_pt2e``) of a copy of ``prepared``; it stays as is."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    model = eval_copy(prepared)
    with cached_patterns():
        model = convert_pt2e(model)
    set_graph_mode(model, training=False)
    drop_unused_state(model)
    return allow_train_eval(model)


def drop_unused_state(graph: torch.fx.GraphModule) -> list[str]:
    """Delete parameters and buffers the graph never reads; returns their names.

    After ``convert_pt2e`` of a QAT graph the float weights stay attached to their (now unused)
    holder modules beside the folded int8 constants, and ``torch.export`` would save both.
    """
    used = {n.target for n in graph.graph.nodes if n.op == "get_attr"}
    called = {n.target for n in graph.graph.nodes if n.op == "call_module"}
    dropped = []
    for name, _ in [*graph.named_parameters(), *graph.named_buffers()]:
        owner, _, attr = name.rpartition(".")
        if name in used or any(owner == c or owner.startswith(c + ".") for c in called):
            continue
        module = graph.get_submodule(owner) if owner else graph
        delattr(module, attr)
        dropped.append(name)
    return dropped


# --------------------------------------------------------------------------- the loop


def _fit_batches(bundle: DataBundle, spec, cfg: QATConfig, epoch: int, ctx: DistContext):
    """This rank's batches of epoch ``epoch``: a seeded permutation of (a subset of) fit, sharded.

    Every rank draws the same permutation, keeps every ``world``-th image and the same number of
    them (so the ranks take the same number of steps), in batches of ``batch_size // world``.
    """
    n_fit = len(bundle.fit_idx)
    n = n_fit if cfg.train_limit is None else min(cfg.train_limit, n_fit)
    order = torch.randperm(
        n_fit, generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
    )[:n]
    per_rank = n // ctx.world
    mine = order[ctx.rank :: ctx.world][:per_rank]
    batch = max(1, cfg.batch_size // ctx.world)
    aug = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch * 1_009 + ctx.rank)
    yield from bundle.batches(
        "fit", spec, batch_size=batch, order=mine, augment=cfg.augment, generator=aug
    )


def _steps(n_fit: int, cfg: QATConfig, world: int) -> int:
    n = n_fit if cfg.train_limit is None else min(cfg.train_limit, n_fit)
    batch = max(1, cfg.batch_size // world)
    return max(1, -(-(n // world) // batch))


@torch.no_grad()
def calibrate(prepared: torch.fx.GraphModule, bundle: DataBundle, spec, cfg: QATConfig) -> int:
    """Initialise the observers on ``calib`` images (BN in inference mode); returns images used."""
    role = "calib" if len(bundle.calib_idx) else "fit"
    limit = cfg.calib if cfg.calib is not None else (None if role == "calib" else 256)
    set_graph_mode(prepared, training=False)
    seen = 0
    for x, _ in bundle.batches(role, spec, batch_size=64, limit=limit, progress="calibrating"):
        prepared(x.to(_device(prepared)))
        seen += len(x)
    set_graph_mode(prepared, training=True)
    return seen


def _device(module: nn.Module) -> torch.device:
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def run_qat(
    model: nn.Module,
    spec,
    bundle: DataBundle,
    cfg: QATConfig,
    *,
    ignore: Sequence[str] = (),
    on_epoch: Callable[[int, dict, nn.Module], None] | None = None,
    log: Callable[[str], None] = print,
) -> QATResult:
    """Fine-tune ``model`` with fake quantization and keep the best int8-validation epoch.

    Args:
        model: the float model (not modified).
        spec: its ``ModelSpec``.
        bundle: data; trains on ``fit``, initialises observers on ``calib``, selects on ``val``.
        cfg: the recipe.
        ignore: quantizable module names to keep in float.
        on_epoch: called as ``on_epoch(epoch, record, prepared)`` after every epoch's
            evaluation (epoch 0 included), on every rank; Optuna reports and prunes here, and an
            exception stops the run.
        log: where progress lines go (rank 0 only).

    Returns:
        The ``QATResult``; ``converted`` is the best epoch's int8 model (rank 0).
    """
    if len(bundle.fit_idx) == 0:
        raise VitquantError(
            f"{bundle.name} has no training split; QAT needs one (a folder with train/ and test/)."
        )
    ctx = dist_context()
    say = log if ctx.is_main else (lambda s: None)
    torch.manual_seed(cfg.seed)
    example, _ = next(bundle.batches("fit", spec, batch_size=2))
    prepared = prepare_qat(model, example, cfg, ignore)
    n_bn = set_graph_mode(prepared, training=True)["batch_norm"]
    n_calib = calibrate(prepared, bundle, spec, cfg)
    prepared.to(ctx.device)
    net: nn.Module = prepared
    if ctx.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        net = DistributedDataParallel(prepared, device_ids=ids)  # buffers synced from rank 0
    _broadcast_buffers(prepared, ctx)

    tcfg = cfg.train_config()
    opt = make_optimizer(prepared, tcfg)
    steps = _steps(len(bundle.fit_idx), cfg, ctx.world)
    sched = make_scheduler(opt, tcfg, steps)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    result = QATResult(world_size=ctx.world)
    say(
        f"QAT: {len(fake_quant_modules(prepared))} fake-quant modules, {n_bn} BatchNorm nodes, "
        f"observers initialised on {n_calib} images; {steps} steps/epoch on {ctx.world} "
        "process(es)"
    )

    best_state = None
    observers_frozen = bn_frozen = False
    for epoch in range(0, cfg.epochs + 1):
        t0 = time.perf_counter()
        loss = None
        if epoch > 0:
            if cfg.freeze_observers_after is not None and epoch > cfg.freeze_observers_after:
                if not observers_frozen:
                    freeze_observers(prepared)
                    observers_frozen = True
                    say(f"epoch {epoch}: observers frozen")
            if cfg.freeze_bn_after is not None and epoch > cfg.freeze_bn_after and not bn_frozen:
                freeze_bn(prepared)
                bn_frozen = True
                if n_bn:
                    say(f"epoch {epoch}: BatchNorm statistics frozen")
            loss = _train_epoch(
                net, prepared, bundle, spec, cfg, epoch, ctx, opt, sched, loss_fn, steps
            )
            _broadcast_buffers(prepared, ctx)
        record = {
            "epoch": epoch,
            "loss": loss,
            "observers_frozen": observers_frozen,
            "bn_frozen": bn_frozen,
        }
        if ctx.is_main:
            record["float_val_acc"] = accuracy(
                eval_copy(prepared, fake_quant=False),
                bundle,
                "val",
                spec,
                batch_size=cfg.eval_batch,
            )
            record["int8_val_acc"] = accuracy(
                convert_copy(prepared), bundle, "val", spec, batch_size=cfg.eval_batch
            )
        record = _broadcast_object(record, ctx)
        record["seconds"] = time.perf_counter() - t0
        result.history.append(record)
        loss_txt = "-" if loss is None else f"{loss:.4f}"
        say(
            f"epoch {epoch}/{cfg.epochs}: loss {loss_txt}, val float "
            f"{record['float_val_acc']:.4f}, int8 {record['int8_val_acc']:.4f} "
            f"({record['seconds']:.1f} s)"
        )
        if record["int8_val_acc"] > result.best_val:
            result.best_val, result.best_epoch = record["int8_val_acc"], epoch
            best_state = {k: v.detach().cpu().clone() for k, v in prepared.state_dict().items()}
        if loss is not None and not math.isfinite(loss):
            result.diverged = True
            say(f"epoch {epoch}: the loss is not finite; stopping (lower --lr)")
            break
        if on_epoch is not None:
            on_epoch(epoch, record, prepared)

    prepared.load_state_dict(best_state)
    result.prepared = prepared.cpu()
    if ctx.is_main:
        result.converted = convert_copy(prepared)
    return result


def _train_epoch(net, prepared, bundle, spec, cfg, epoch, ctx, opt, sched, loss_fn, steps) -> float:
    """One epoch of this rank's shard; returns the mean loss over all ranks."""
    total = torch.zeros(2, dtype=torch.float64)
    batches = _fit_batches(bundle, spec, cfg, epoch, ctx)
    desc = f"QAT epoch {epoch}/{cfg.epochs}"
    for x, y in track(batches, total=steps, description=desc) if ctx.is_main else batches:
        x, y = x.to(ctx.device), y.to(ctx.device)
        loss = loss_fn(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(prepared.parameters(), 5.0)
        opt.step()
        sched.step()
        total += torch.tensor([loss.item() * len(y), len(y)], dtype=torch.float64)
        if ctx.world == 1 and not math.isfinite(loss.item()):
            break  # under DDP every rank must take the same number of steps
    if ctx.world > 1:
        import torch.distributed as dist

        dist.all_reduce(total)
    return (total[0] / total[1].clamp(min=1)).item()


# --------------------------------------------------------------------------- deploy and report


def export_qdq_onnx(converted: nn.Module, example: torch.Tensor, path) -> Path:
    """Export the converted int8 graph to ONNX (QuantizeLinear/DequantizeLinear, dynamic batch).

    ONNX Runtime fuses the Q/DQ pairs around Conv/MatMul into integer kernels on x86.
    """
    import warnings

    from vitquant.io import atomic_write
    from vitquant.quant.onnx_backend import INPUT_NAME, OUTPUT_NAME

    dynamic = ({0: torch.export.Dim("batch", min=1, max=65536)},) if len(example) >= 2 else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            converted,
            (example,),
            None,
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=dynamic,
            verbose=False,
        )
    return atomic_write(Path(path), lambda p: program.save(str(p), external_data=False))


@dataclass(frozen=True)
class DeployOptions:
    """What ``deploy_and_report`` saves and measures.

    Attributes:
        onnx: also export the int8 model to ONNX and evaluate it with ONNX Runtime.
        latency: time every row (x86 pt2e after inductor lowering; can take a minute).
        latency_batch: batch size of the timing.
        stem: file name stem of the artifacts.
        backend: the quantizer the model was trained with (names the pt2e row; only ``x86``
            graphs are lowered by inductor, others are timed as the eager emulation).
        export: ``pte``: also lower to an ExecuTorch XNNPACK program, run and measure it.
    """

    onnx: bool = True
    latency: bool = True
    latency_batch: int = 32
    stem: str = "qat_int8"
    backend: str = "x86"
    export: str = "none"

    def __post_init__(self) -> None:
        check_export(self.export, self.backend)


def deploy_and_report(
    model: nn.Module,
    spec,
    bundle: DataBundle,
    result: QATResult,
    directory,
    *,
    ignored: Sequence[str] = (),
    options: DeployOptions = DeployOptions(),
    log: Callable[[str], None] = print,
) -> dict:
    """Save the kept int8 model (``.pt2`` and ``.onnx``) and measure it on the test split.

    Rows (``vitquant.results.ResultRow``): ``fp32``/pytorch, ``qat``/pt2e-<backend> (the
    converted graph; x86 timed after inductor lowering), ``qat``/executorch-xnnpack (the
    ``.pte`` program, ``options.export == "pte"``) and ``qat``/onnxruntime (the ONNX export),
    finalized against fp32.

    Returns:
        ``{"results": [row dicts], "artifacts": {...}, "test_acc": ..., "fp32_test_acc": ...,
        "notes": [...]}``.
    """
    from vitquant.evaluate import count_layers, example_batch, file_size_mb, state_dict_size_mb
    from vitquant.quant.artifacts import lowered_latency, measure_latency, save_pt2e
    from vitquant.quant.pt2e import split_int8
    from vitquant.results import ResultRow, finalize

    directory = Path(directory)
    converted = result.converted
    notes: list[str] = []
    threads = torch.get_num_threads()
    example = next(bundle.batches("val", spec, batch_size=8))[0]
    lat_x = {options.latency_batch: example_batch(bundle, spec, options.latency_batch)}

    def timed(row: ResultRow, lat: dict[int, float] | None) -> ResultRow:
        if lat:
            row.latency_ms_per_image = lat[options.latency_batch]
            row.latency_batch, row.latency_threads = options.latency_batch, threads
        return row

    n_test = len(bundle.test_idx)
    fp32_acc = accuracy(model, bundle, "test", spec, progress="test fp32")
    fp32 = ResultRow(
        "fp32",
        "pytorch",
        fp32_acc,
        n_test,
        int8_layers=0,
        float_layers=count_layers(model),
        size_mb=state_dict_size_mb(model),
    )
    timed(fp32, measure_latency(model.eval(), lat_x) if options.latency else None)

    pt2 = save_pt2e(converted, example, directory / f"{options.stem}.pt2")
    int8_layers, float_layers = split_int8(model, converted)
    q_acc = accuracy(converted, bundle, "test", spec, progress="test int8")
    qrow = ResultRow(
        "qat",
        f"pt2e-{options.backend}",
        q_acc,
        n_test,
        int8_layers=len(int8_layers),
        float_layers=len(float_layers),
        size_mb=file_size_mb(pt2),
        ignored=list(ignored),
        artifact=str(pt2),
        simulated=True,
        extra={"best_epoch": result.best_epoch, "best_val_acc": result.best_val},
    )
    if options.latency and inductor_lowers(options.backend):
        lat, simulated, error, agree = lowered_latency(converted, lat_x)
        timed(qrow, lat)
        qrow.simulated = simulated
        qrow.extra["lowered_agreement"] = agree
        if error:
            notes.append(f"inductor lowering failed, eager emulation timed: {error}")
    elif options.latency:
        timed(qrow, measure_latency(converted, lat_x))
    rows = [fp32, qrow]
    artifacts = {"pt2": str(pt2), "onnx": None, "pte": None}

    if options.export == "pte":
        from vitquant.quant.executorch_backend import BACKEND, PteModel, export_pte

        exported = export_pte(converted, example, directory / f"{options.stem}.pte")
        notes.append(f".pte: {exported.note()}")
        artifacts["pte"] = str(exported.path)
        runner = PteModel(exported.path, threads=threads)
        logits, labels = predict_fn(runner, bundle, spec)
        ref_logits, _ = predict_fn(converted, bundle, spec)
        erow = ResultRow(
            "qat",
            BACKEND,
            (logits.argmax(1) == labels).float().mean().item(),
            n_test,
            int8_layers=len(int8_layers),
            float_layers=len(float_layers),
            size_mb=file_size_mb(exported.path),
            ignored=list(ignored),
            artifact=str(exported.path),
            extra={
                "lowering": exported.to_dict(),
                "runtime_threads": runner.threads,
                "pred_agreement_vs_pt2e": (logits.argmax(1) == ref_logits.argmax(1))
                .float()
                .mean()
                .item(),
            },
        )
        erow.extra["vs_pytorch_pts"] = round((erow.accuracy - q_acc) * 100, 4)
        timed(erow, measure_latency(runner, lat_x) if options.latency else None)
        rows.append(erow)

    if options.onnx:
        from vitquant.quant.onnx_backend import OrtModel

        try:
            onnx_path = export_qdq_onnx(converted, example, directory / f"{options.stem}.onnx")
        except Exception as exc:  # an op the exporter cannot translate
            notes.append(f"ONNX export failed: {type(exc).__name__}: {str(exc)[:300]}")
        else:
            artifacts["onnx"] = str(onnx_path)
            ort_model = OrtModel(onnx_path, threads=threads)
            logits, labels = predict_fn(ort_model, bundle, spec)
            ref_logits, _ = predict_fn(converted, bundle, spec)
            agree = (logits.argmax(1) == ref_logits.argmax(1)).float().mean().item()
            ort_acc = (logits.argmax(1) == labels).float().mean().item()
            orow = ResultRow(
                "qat",
                "onnxruntime",
                ort_acc,
                n_test,
                int8_layers=len(int8_layers),
                float_layers=len(float_layers),
                size_mb=file_size_mb(onnx_path),
                ignored=list(ignored),
                artifact=str(onnx_path),
                extra={"pred_agreement_vs_pt2e": agree},
            )
            timed(orow, measure_latency(ort_model, lat_x) if options.latency else None)
            rows.append(orow)
    finalize(rows)
    for row in rows:
        log(
            f"{row.variant:5s} {row.backend:18s} test acc {row.accuracy:.4f} "
            f"(drop {row.drop_pts:+.2f} pts), {row.size_mb:.2f} MiB"
        )
    return {
        "results": [r.to_dict() for r in rows],
        "artifacts": artifacts,
        "test_acc": q_acc,
        "fp32_test_acc": fp32_acc,
        "int8_layers": int8_layers,
        "float_layers": float_layers,
        "notes": notes,
    }


def predict_fn(fn, bundle: DataBundle, spec) -> tuple[torch.Tensor, torch.Tensor]:
    """Test-split logits and labels of any callable model (ONNX Runtime sessions included)."""
    from vitquant.evaluate import predict

    return predict(fn, bundle, "test", spec)
