"""ExecuTorch deployment: lower a converted pt2e graph to an XNNPACK ``.pte`` program and run it.

``export_pte(graph, example, path)`` re-exports the converted (quantize/dequantize) graph,
lowers it with ``to_edge_transform_and_lower(..., partitioner=[XnnpackPartitioner()])`` and
writes the ``.pte``. What XNNPACK does not take stays in the program as an ExecuTorch portable
(reference) kernel; ``PteExport.portable_ops`` names them, so a run says which operators did
not lower instead of silently running them slowly.

``PteModel(path)`` loads the program with ExecuTorch's Python runtime
(``executorch.runtime.Runtime``) and is a ``x -> logits`` callable like every other variant, so
accuracy, size on disk and latency are measured the same way.

The batch dimension is dynamic up to ``max_batch``: ExecuTorch plans its memory for the upper
bound, so it is kept small (256, the evaluation batch). Lowering may narrow it further: with a
convolution, XNNPACK's lowering guards on the traced batch (< 16 or >= 16) and the program is
planned for at most 15 images. ``PteModel`` reads the planned bound from the program and splits
larger inputs, so every batch size runs; ``PteExport.max_batch`` records the bound.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from vitquant.errors import VitquantError
from vitquant.io import atomic_write

BACKEND = "executorch-xnnpack"
DEFAULT_MAX_BATCH = 256
# Edge ops that only move or view memory; listed apart from the compute ops left to portable
# kernels (they cost a copy at most).
LAYOUT_OPS = {
    "view_copy",
    "slice_copy",
    "squeeze_copy",
    "unsqueeze_copy",
    "expand_copy",
    "select_copy",
    "permute_copy",
    "clone",
    "_to_copy",
    "cat",
    "split_with_sizes_copy",
    "transpose_copy",
    "alias_copy",
    "t_copy",
    "unbind_copy",
    "_clone_dim_order",
    "_to_dim_order_copy",
}


@dataclass
class PteExport:
    """A saved ``.pte`` program and what its lowering did.

    Attributes:
        path: the ``.pte`` file.
        max_batch: largest batch one call accepts, as planned in the program (``PteModel``
            splits bigger inputs).
        delegated: calls into XNNPACK subgraphs in the program.
        portable_ops: compute operators left to ExecuTorch's portable kernels -> count.
        layout_ops: view/copy operators left outside XNNPACK -> count.
    """

    path: Path
    max_batch: int
    delegated: int
    portable_ops: dict[str, int] = field(default_factory=dict)
    layout_ops: dict[str, int] = field(default_factory=dict)

    def note(self) -> str:
        """One line: what lowered and which operators did not."""
        if not self.portable_ops:
            rest = "every compute operator lowered to XNNPACK"
        else:
            ops = ", ".join(f"{k} x{v}" for k, v in sorted(self.portable_ops.items()))
            rest = f"not lowered (portable kernels): {ops}"
        layout = sum(self.layout_ops.values())
        return f"{self.delegated} XNNPACK subgraph(s); {rest}; {layout} view/copy op(s) outside"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


def _op_name(target) -> str:
    """``aten.native_layer_norm.default`` (namespace.op.overload) -> ``native_layer_norm``."""
    parts = str(getattr(target, "__name__", target)).split(".")
    return parts[1] if len(parts) >= 2 else parts[0]


def outside_ops(graph_module: torch.fx.GraphModule) -> tuple[int, dict[str, int], dict[str, int]]:
    """(delegate calls, compute ops, layout ops) of a lowered edge graph's top level."""
    delegated, compute, layout = 0, Counter(), Counter()
    for node in graph_module.graph.nodes:
        if node.op != "call_function":
            continue
        if "executorch_call_delegate" in str(node.target):
            delegated += 1
            continue
        if getattr(node.target, "__module__", "") == "_operator" or "getitem" in str(node.target):
            continue
        if "sym_size" in str(node.target):
            continue
        name = _op_name(node.target)
        (layout if name in LAYOUT_OPS else compute)[name] += 1
    return delegated, dict(compute), dict(layout)


def export_pte(
    graph: torch.fx.GraphModule,
    example: torch.Tensor,
    path: str | Path,
    *,
    max_batch: int = DEFAULT_MAX_BATCH,
) -> PteExport:
    """Lower a converted pt2e graph to an XNNPACK ExecuTorch program and save it atomically.

    Args:
        graph: the converted graph (``QuantizedModel.module`` or a QAT ``convert_pt2e`` result).
        example: an input batch (its image shape is used; the batch is dynamic).
        path: the ``.pte`` to write.
        max_batch: upper bound of the dynamic batch dimension.

    Raises:
        VitquantError: the graph cannot be exported or lowered (message names the failure).
    """
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    example = example[:2].clone()
    if example.shape[0] < 2:
        example = example.repeat(2, *([1] * (example.dim() - 1)))
    dims = ({0: torch.export.Dim("batch", min=1, max=max_batch)},)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.export(graph, (example,), dynamic_shapes=dims)
            edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
            delegated, compute, layout = outside_ops(edge.exported_program().graph_module)
            buffer = edge.to_executorch().buffer
    except Exception as exc:  # export/lowering raise many types
        raise VitquantError(
            f"ExecuTorch lowering failed ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:300] if str(exc) else ''})."
        ) from exc

    def write(tmp: Path) -> None:
        tmp.write_bytes(buffer)

    saved = atomic_write(Path(path), write)
    return PteExport(saved, PteModel(saved).max_batch, delegated, compute, layout)


@contextlib.contextmanager
def _quiet_stderr():
    """Silence the C++ runtime's start-up log lines (cpuinfo probing) on file descriptor 2.

    They are written by native code, so Python's ``sys.stderr`` cannot catch them; anything the
    runtime wrote is printed again if loading fails.
    """
    try:
        fd = os.dup(2)
    except OSError:  # no stderr to redirect
        yield
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(fd, 2)
            sink.seek(0)
            os.write(2, sink.read())
            raise
        finally:
            os.dup2(fd, 2)
            os.close(fd)


def set_runtime_threads(threads: int | None) -> int | None:
    """Size ExecuTorch's XNNPACK thread pool (None: leave it); returns the size in use.

    ExecuTorch's Python bindings expose only the experimental ``_unsafe_reset_threadpool``;
    latency rows must say how many threads ran, so it is used here and nowhere else.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the module warns that the API is experimental
        try:
            from executorch.extension.pybindings import portable_lib
        except ImportError:
            return None
        if threads:
            portable_lib._unsafe_reset_threadpool(int(threads))
        return int(portable_lib._threadpool_get_thread_count())


class PteModel:
    """A loaded ``.pte`` program as a ``x -> logits`` callable (ExecuTorch Python runtime).

    Args:
        path: the ``.pte`` file.
        threads: XNNPACK thread-pool size (None: ExecuTorch's default).

    Attributes:
        max_batch: the batch bound the program was planned for (read from its metadata);
            bigger inputs run in chunks of this size.
    """

    def __init__(self, path: str | Path, *, threads: int | None = None) -> None:
        path = Path(path)
        if not path.is_file():
            raise VitquantError(f"ExecuTorch program {path} not found.")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "experimental API" from its bindings
                from executorch.runtime import Runtime
        except ImportError as exc:
            raise VitquantError(
                "running a .pte needs ExecuTorch: pip install executorch==1.5.1."
            ) from exc
        self.path = path
        try:
            with _quiet_stderr():
                self.threads = set_runtime_threads(threads)
                program = Runtime.get().load_program(path)
                self.method = program.load_method("forward")
                self.max_batch = int(program.metadata("forward").input_tensor_meta(0).sizes()[0])
        except Exception as exc:
            raise VitquantError(
                f"ExecuTorch could not load {path} ({type(exc).__name__}: {exc}); is it a .pte "
                "written by `vitquant quantize --export pte`?"
            ) from exc

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        outs = [
            self.method.execute([x[i : i + self.max_batch].contiguous()])[0]
            for i in range(0, len(x), self.max_batch)
        ]
        return torch.cat(outs) if len(outs) > 1 else outs[0]
