"""Ignore lists as a validated object: names, glob patterns and module types kept in float.

Like NNCF's ``IgnoredScope(names, patterns, types)``, every entry must match something: a typo
raises ``VitquantError`` naming the closest real layer names instead of silently quantizing
everything. Entries resolve to the *quantizable* modules (Linear/Conv) they cover, since those are
what a quantizer turns into int8:

- a module name (``head``, ``blocks.0.attn.qkv``) covers itself; a container name (``blocks.0``)
  covers its Linear/Conv descendants;
- a parameter or buffer name (``blocks.0.attn.proj.weight``) is mapped to its module, with a note;
- a glob (``blocks.0.*``, ``*.fc2``) is matched with ``fnmatch`` against every module name;
- a type (``Linear``, ``Conv2d``, or a fully qualified ``torch.nn.Linear``) covers every module of
  that class.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from vitquant.errors import VitquantError
from vitquant.evaluate import QUANTIZABLE

GLOB_CHARS = "*?["
TYPE_PREFIX = "type:"


@dataclass
class ResolvedScope:
    """What an ``IgnoreScope`` means for one model.

    Attributes:
        modules: quantizable module names (Linear/Conv) to keep in float, in model order.
        notes: human-readable remarks, e.g. ``mapped parameter X to module Y``.
        matches: entry -> the quantizable modules it covers (for reports).
    """

    modules: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    matches: dict[str, list[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class IgnoreScope:
    """Layers to keep in float: exact ``names``, glob ``patterns`` and module ``types``."""

    names: tuple[str, ...] = ()
    patterns: tuple[str, ...] = ()
    types: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.names or self.patterns or self.types)

    @classmethod
    def from_cli(
        cls,
        entries: Iterable[str] = (),
        types: Iterable[str] = (),
        file: str | Path | None = None,
    ) -> IgnoreScope:
        """Build a scope from ``--ignore`` entries, ``--ignore-type`` and ``--ignore-file``.

        An entry with ``*``, ``?`` or ``[`` is a glob; ``type:Linear`` is a type. The file holds
        one entry per line; blank lines and ``#`` comments are skipped.
        """
        items = [e.strip() for e in entries if e and e.strip()]
        if file is not None:
            path = Path(file).expanduser()
            if not path.is_file():
                raise VitquantError(f"--ignore-file {path} does not exist.")
            for line in path.read_text().splitlines():
                line = line.split("#", 1)[0].strip()
                if line:
                    items.append(line)
        names, patterns, type_names = [], [], [t.strip() for t in types if t and t.strip()]
        for item in items:
            if item.startswith(TYPE_PREFIX):
                type_names.append(item.removeprefix(TYPE_PREFIX))
            elif any(c in item for c in GLOB_CHARS):
                patterns.append(item)
            else:
                names.append(item)
        return cls(
            tuple(dict.fromkeys(names)),
            tuple(dict.fromkeys(patterns)),
            tuple(dict.fromkeys(type_names)),
        )

    def entries(self) -> list[str]:
        """The entries as the user wrote them (types with the ``type:`` prefix)."""
        return [*self.names, *self.patterns, *(TYPE_PREFIX + t for t in self.types)]

    def resolve(self, model: nn.Module) -> ResolvedScope:
        """The quantizable modules of ``model`` this scope keeps in float.

        Raises:
            VitquantError: an entry matches nothing (the message lists the closest real names),
                or matches only modules that hold no Linear/Conv layer.
        """
        modules = dict(model.named_modules())
        modules.pop("", None)
        quantizable = [n for n, m in modules.items() if isinstance(m, QUANTIZABLE)]
        params = {n for n, _ in model.named_parameters()} | {n for n, _ in model.named_buffers()}
        out = ResolvedScope()
        errors: list[str] = []

        def covered(name: str) -> list[str]:
            return [q for q in quantizable if q == name or q.startswith(name + ".")]

        for name in self.names:
            target = name
            if name not in modules and name in params:
                target = name.rsplit(".", 1)[0] if "." in name else ""
                if target not in modules:
                    errors.append(f"{name!r} is a parameter of the model root, not of a layer")
                    continue
                out.notes.append(f"mapped parameter {name} to module {target}")
            if target not in modules:
                errors.append(_unknown(name, [*modules, *params], layers=quantizable))
                continue
            hit = covered(target)
            if not hit:
                errors.append(
                    f"{name!r} is a {type(modules[target]).__name__} with no "
                    f"Linear/Conv layer in it; nothing to keep in float"
                )
                continue
            out.matches[name] = hit

        for pattern in self.patterns:
            matched = [n for n in modules if fnmatch.fnmatchcase(n, pattern)]
            hit = sorted({q for n in matched for q in covered(n)}, key=quantizable.index)
            if not hit:
                stem = pattern.translate({ord(c): None for c in GLOB_CHARS + "]"}).strip(".")
                if matched:
                    errors.append(
                        f"pattern {pattern!r} matches only modules without "
                        f"Linear/Conv layers ({', '.join(matched[:5])})"
                    )
                else:
                    errors.append(_unknown(pattern, list(modules), probe=stem, layers=quantizable))
                continue
            out.matches[pattern] = hit

        present = {}
        for n, m in modules.items():
            for key in (type(m).__name__, f"{type(m).__module__}.{type(m).__name__}"):
                present.setdefault(key.lower(), []).append(n)
        for type_name in self.types:
            key = type_name.lower().removeprefix("torch.nn.").removeprefix("nn.")
            names = present.get(key) or present.get(type_name.lower(), [])
            hit = sorted({q for n in names for q in covered(n)}, key=quantizable.index)
            if not hit:
                kinds = sorted({type(m).__name__ for m in modules.values()})
                close = difflib.get_close_matches(key, [k.lower() for k in kinds], n=3, cutoff=0.5)
                close = [k for k in kinds if k.lower() in close]
                hint = f" Did you mean: {', '.join(close)}?" if close else ""
                what = "has no Linear/Conv layer" if names else "is not a module type of this model"
                errors.append(f"type {type_name!r} {what}.{hint} Types present: {', '.join(kinds)}")
                continue
            out.matches[TYPE_PREFIX + type_name] = hit

        if errors:
            raise VitquantError(
                "ignore list does not fit this model: "
                + "; ".join(errors)
                + ". List the layers with `vitquant layers MODEL`."
            )
        chosen = {q for hit in out.matches.values() for q in hit}
        out.modules = [q for q in quantizable if q in chosen]
        return out


def _unknown(
    entry: str, candidates: list[str], *, probe: str | None = None, layers: list[str] = ()
) -> str:
    close = difflib.get_close_matches(probe or entry, candidates, n=3, cutoff=0.5)
    if not close and probe:
        close = [c for c in candidates if probe and probe in c][:3]
    if close:
        return f"{entry!r} matches no layer (closest: {', '.join(close)})"
    if layers:
        shown = layers if len(layers) <= 6 else [*layers[:4], "...", layers[-1]]
        return f"{entry!r} matches no layer (the Linear/Conv layers are {', '.join(shown)})"
    return f"{entry!r} matches no layer"


def resolve_modules(model: nn.Module, ignore: IgnoreScope | Iterable[str] | None) -> ResolvedScope:
    """Accept an ``IgnoreScope``, a list of entries (names/globs) or None; resolve it."""
    if ignore is None:
        return ResolvedScope()
    if not isinstance(ignore, IgnoreScope):
        ignore = IgnoreScope.from_cli(list(ignore))
    if not ignore:
        return ResolvedScope()
    return ignore.resolve(model)
