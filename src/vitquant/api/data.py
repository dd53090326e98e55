"""The user's own batches as vitquant data: one adapter with the ``DataBundle`` interface.

Every library function reads data through ``bundle.batches(role, spec, batch_size=...)`` and a
few sizes (``len(bundle.test_idx)``, ``bundle.labels(role)``, ``bundle.describe()``). ``UserData``
offers exactly that over re-iterable ``(images, labels)`` batches, one iterable per role:

=============== ======== ===============================================================
keyword         role     what reads it
=============== ======== ===============================================================
``calibration`` calib    activation statistics, static PTQ observers, QAT initialisation
``val``         val      every choice (sensitivity, ignore-list search, QAT epochs)
``test``        test     the reported figures (accuracy, agreement, latency examples)
``train``       fit      QAT
=============== ======== ===============================================================

What it guarantees:

- **images reach the model as they are**: no normalisation, resize or augmentation is applied
  to a user's batches. They are only re-cut to the batch size each step asks for (concatenated
  or split along the batch dimension; values untouched).
- each role is read in the same order on every pass, so multi-pass statistics and predictions
  of several models line up image by image; a DataLoader that shuffles ``val`` or ``test`` is
  refused for that reason, and a one-shot generator is refused because it can be read once.
- a role the user did not give comes from ``base`` (a ``DataBundle`` loaded by name), through
  that bundle's own preprocessing; without a base it is empty, and reading it raises an error
  that names the keyword to pass.

Random access (QAT's seeded epoch order) holds a role's tensors in memory once.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from vitquant.data import DataBundle
from vitquant.errors import VitquantError
from vitquant.progress import track

# role -> the API keyword that supplies it
KEYWORDS = {"calib": "calibration", "val": "val", "test": "test", "fit": "train"}
IMAGE_KEYS = ("pixel_values", "images", "image", "x", "input", "inputs")
LABEL_KEYS = ("labels", "label", "y", "target", "targets")


def _as_batch(item, keyword: str, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One user batch -> ``(x (N, C, H, W) float, y (N,) int64)``; labels -1 when absent."""
    if isinstance(item, dict):
        x = next((item[key] for key in IMAGE_KEYS if key in item), None)
        y = next((item[key] for key in LABEL_KEYS if key in item), None)
        if x is None:
            raise VitquantError(
                f"{keyword}= batch {k} is a dict without an image key ({', '.join(IMAGE_KEYS)})."
            )
    elif isinstance(item, tuple | list):
        if not item:
            raise VitquantError(f"{keyword}= batch {k} is empty; expected (images, labels).")
        x, y = item[0], (item[1] if len(item) > 1 else None)
    else:
        x, y = item, None
    x = torch.as_tensor(x)
    if x.dim() != 4:
        raise VitquantError(
            f"{keyword}= batch {k} holds images of shape {tuple(x.shape)}; expected a batch "
            "(N, C, H, W). Give (images, labels) batches, e.g. a DataLoader."
        )
    if not x.is_floating_point():
        raise VitquantError(
            f"{keyword}= batch {k} holds {x.dtype} images; vitquant feeds your batches to the "
            "model as they are (no scaling or normalisation), so convert and normalise them in "
            "your DataLoader (e.g. torchvision's ToTensor + Normalize)."
        )
    if y is None:
        y = torch.full((len(x),), -1, dtype=torch.long)
    y = torch.as_tensor(y).long().reshape(-1)
    if len(y) != len(x):
        raise VitquantError(
            f"{keyword}= batch {k} has {len(x)} images but {len(y)} labels; labels must be "
            "class indices, one per image."
        )
    return x, y


def _check_order(source, keyword: str) -> None:
    """Refuse inputs that cannot be read again in the same order."""
    if isinstance(source, Iterator):
        raise VitquantError(
            f"{keyword}= got a one-shot iterator ({type(source).__name__}), which can be read "
            "only once; vitquant reads each role several times (the analysis makes three "
            f"passes). Pass a DataLoader or a list of (images, labels) batches: "
            f"{keyword}=list(batches)."
        )
    if not isinstance(source, Iterable):
        raise VitquantError(
            f"{keyword}= takes a DataLoader or a list of (images, labels) batches, not a "
            f"{type(source).__name__}."
        )
    from torch.utils.data import DataLoader, RandomSampler

    if keyword in ("val", "test") and isinstance(source, DataLoader):
        if isinstance(source.sampler, RandomSampler):
            raise VitquantError(
                f"{keyword}= is a DataLoader with shuffle=True: predictions of several models "
                "are compared image by image, so each pass must read the same order. Pass "
                "shuffle=False."
            )


class Batches:
    """One role given as the user's re-iterable batches (see the module docstring).

    Args:
        keyword: the API keyword it came from (for messages).
        source: a DataLoader, a list/tuple of batches, or one ``(images, labels)`` pair of
            tensors. A batch is ``(x, y)``, ``x`` alone (labels unknown: -1) or a dict with
            ``pixel_values``/``images`` and ``labels``.
    """

    def __init__(self, keyword: str, source) -> None:
        if (
            isinstance(source, tuple)
            and len(source) == 2
            and all(isinstance(t, torch.Tensor) for t in source)
            and source[0].dim() == 4
        ):
            source = [source]  # one (images, labels) pair: a single batch
        _check_order(source, keyword)
        self.keyword = keyword
        self.source = source
        self._n: int | None = None
        self._labels: torch.Tensor | None = None
        self._tensors: tuple[torch.Tensor, torch.Tensor] | None = None

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for k, item in enumerate(self.source):
            yield _as_batch(item, self.keyword, k)

    def __len__(self) -> int:
        if self._n is None:
            self._n = self._cheap_len()
        if self._n is None:
            self._n = len(self.labels())
        return self._n

    def _cheap_len(self) -> int | None:
        """The number of images without decoding any, when the source can tell."""
        from torch.utils.data import DataLoader

        if isinstance(self.source, list | tuple):
            return sum(len(x) for x, _ in self)
        if isinstance(self.source, DataLoader) and self.source.batch_size is not None:
            try:
                n = len(self.source.sampler)
            except TypeError:  # an IterableDataset without a length
                return None
            if self.source.drop_last:
                n -= n % self.source.batch_size
            return n
        return None

    def first(self) -> torch.Tensor:
        """The first batch's images."""
        for x, _ in self:
            return x
        raise VitquantError(f"{self.keyword}= holds no batch.")

    def labels(self) -> torch.Tensor:
        """Every label in reading order (one pass over the data, then cached)."""
        if self._labels is None:
            if self._tensors is not None:
                self._labels = self._tensors[1]
            else:
                parts = [y for _, y in self]
                self._labels = torch.cat(parts) if parts else torch.empty(0, dtype=torch.long)
            self._n = len(self._labels)
        return self._labels

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All images and labels as two tensors (held in memory; for random access)."""
        if self._tensors is None:
            pairs = list(self)
            if not pairs:
                raise VitquantError(f"{self.keyword}= holds no batch.")
            self._tensors = (torch.cat([x for x, _ in pairs]), torch.cat([y for _, y in pairs]))
            self._labels, self._n = self._tensors[1], len(self._tensors[1])
        return self._tensors


def rebatch(
    pairs: Iterable[tuple[torch.Tensor, torch.Tensor]], batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Re-cut a stream of ``(x, y)`` batches into batches of ``batch_size`` (the last smaller).

    A batch that already has the size and starts a new batch is passed through unchanged.
    """
    xs: list[torch.Tensor] = []
    ys: list[torch.Tensor] = []
    count = 0
    for x, y in pairs:
        if not xs and len(x) == batch_size:
            yield x, y
            continue
        while len(x):
            take = min(batch_size - count, len(x))
            xs.append(x[:take])
            ys.append(y[:take])
            x, y, count = x[take:], y[take:], count + take
            if count == batch_size:
                yield (torch.cat(xs), torch.cat(ys)) if len(xs) > 1 else (xs[0], ys[0])
                xs, ys, count = [], [], 0
    if xs:
        yield (torch.cat(xs), torch.cat(ys)) if len(xs) > 1 else (xs[0], ys[0])


def _window(pairs, *, limit: int | None, shard: tuple[int, int] | None):
    """The first ``limit`` images of a stream, and of those every ``world``-th from ``rank``."""
    rank, world = shard or (0, 1)
    seen = 0
    for x, y in pairs:
        if limit is not None and seen >= limit:
            return
        take = len(x) if limit is None else min(len(x), limit - seen)
        if take < len(x):
            x, y = x[:take], y[:take]
        if world > 1:
            keep = torch.arange(seen, seen + take) % world == rank
            x, y = x[keep], y[keep]
        seen += take
        if len(x):
            yield x, y


@dataclass
class UserData:
    """A ``DataBundle`` look-alike over the user's batches (see the module docstring).

    Attributes:
        roles: role (``calib``, ``val``, ``test``, ``fit``) -> the user's ``Batches``.
        base: a loaded ``DataBundle`` giving the roles the user did not (None: those are empty).
        classes: class names in label order (the base's, else ``"0"``, ``"1"``, ...).
        name: what ``describe()`` calls the data.
    """

    roles: dict[str, Batches]
    base: DataBundle | None = None
    classes: tuple[str, ...] = ()
    name: str = "user batches"
    seed: int | None = None
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.base is not None:
            self.classes = self.classes or self.base.classes
            self.name = f"{self.base.name} + user batches ({', '.join(self._given())})"
            self.seed = self.base.seed
            self.notes = [*self.base.notes, *self.notes]

    def _given(self) -> list[str]:
        return [KEYWORDS[r] for r in ("calib", "val", "test", "fit") if r in self.roles]

    def has(self, role: str) -> bool:
        """Whether ``role`` has images (the user's or the base's)."""
        return self.size(role) > 0

    def size(self, role: str) -> int:
        if role in self.roles:
            return len(self.roles[role])
        if self.base is not None:
            return self.base.sizes()[role]
        return 0

    def _idx(self, role: str) -> np.ndarray:
        if role in self.roles or self.base is None:
            return np.arange(self.size(role))
        return getattr(self.base, f"{role}_idx")

    # What library code reads from a DataBundle -------------------------------------------
    val_idx = property(lambda self: self._idx("val"))
    calib_idx = property(lambda self: self._idx("calib"))
    fit_idx = property(lambda self: self._idx("fit"))
    test_idx = property(lambda self: self._idx("test"))

    @property
    def channels(self) -> int:
        for role in self.roles.values():
            return int(role.first().shape[1])
        return self.base.channels if self.base is not None else 3

    def sizes(self) -> dict[str, int]:
        return {role: self.size(role) for role in ("fit", "val", "calib", "test")}

    def describe(self) -> dict:
        sizes = {f"n_{k}": v for k, v in self.sizes().items()}
        return {
            "data": self.name,
            "classes": list(self.classes),
            "seed": self.seed,
            **sizes,
            "notes": self.notes,
        }

    def role(self, role: str):
        """Something with the role's length (``len(bundle.role(role))`` in the library)."""
        if role in self.roles:
            return self.roles[role]
        if self.base is not None:
            return self.base.role(role)
        return ()

    def labels(self, role: str, *, limit: int | None = None) -> torch.Tensor:
        if role in self.roles:
            return self.roles[role].labels()[:limit]
        if self.base is not None:
            return self.base.labels(role, limit=limit)
        self._missing(role)

    def _missing(self, role: str):
        raise VitquantError(
            f"no {KEYWORDS.get(role, role)} images: pass {KEYWORDS.get(role, role)}= batches "
            "(a DataLoader or a list of (images, labels)) or data='digits'/'cifar10'/a folder."
        )

    def batches(
        self,
        role: str,
        spec,
        *,
        batch_size: int = 256,
        shuffle: bool = False,
        augment: bool = False,
        generator: torch.Generator | None = None,
        limit: int | None = None,
        order: np.ndarray | torch.Tensor | None = None,
        shard: tuple[int, int] | None = None,
        progress: str | None = None,
        workers: int | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``DataBundle.batches`` over the user's role: same arguments, images untouched.

        ``augment`` and ``workers`` apply to named data only (augment in your own DataLoader);
        ``shuffle`` and ``order`` read the role into memory once (QAT's epoch order).
        """
        if role not in self.roles:
            if self.base is None:
                self._missing(role)
            yield from self.base.batches(
                role,
                spec,
                batch_size=batch_size,
                shuffle=shuffle,
                augment=augment,
                generator=generator,
                limit=limit,
                order=order,
                shard=shard,
                progress=progress,
                workers=workers,
            )
            return
        source = self.roles[role]
        if order is not None or shuffle:
            x_all, y_all = source.tensors()
            if order is None:
                n = len(y_all) if limit is None else min(limit, len(y_all))
                order = torch.randperm(len(y_all), generator=generator)[:n]
            pos = torch.as_tensor(np.asarray(order), dtype=torch.long)
            if shard is not None:
                pos = pos[shard[0] :: shard[1]]
            out = ((x_all[p], y_all[p]) for p in pos.split(batch_size))
        else:
            out = rebatch(_window(source, limit=limit, shard=shard), batch_size)
        if progress:
            n = source._n if source._n is not None else source._cheap_len()
            if n is not None and limit is not None:
                n = min(n, limit)
            total = -(-n // batch_size) if n is not None else None
            out = track(out, total=total, description=progress)
        yield from out
