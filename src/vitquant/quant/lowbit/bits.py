"""Bit widths per layer: a default ``W/A`` setting and glob rules that override it.

A rule is written ``GLOB=W/A`` on the command line (``blocks.0.*=8/8``, ``*.fc2=8/4``,
``head=8/8``); the glob is matched with ``fnmatch`` against module names and, when several
rules match one module, the *last* one wins, so a general rule comes first and its exceptions
after it. Like an ignore list, a rule that matches no module is an error naming the closest
real module names (a typo must not silently quantize a layer at the default width).
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass

from vitquant.errors import VitquantError

MIN_BITS = 2
MAX_BITS = 8  # the simulated codes are stored in (u)int8 tensors
_RULE = re.compile(r"^\s*(?P<glob>[^=\s][^=]*?)\s*=\s*(?P<w>\d+)\s*/\s*(?P<a>\d+)\s*$")
RULE_EXAMPLE = "expected GLOB=W/A, e.g. 'blocks.0.*=8/8'"


def check_bits(bits: int, what: str = "bits") -> int:
    """``bits`` if it is an int in [2, 8], else a ``VitquantError`` saying so."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise VitquantError(
            f"{what} must be an integer from {MIN_BITS} to {MAX_BITS} (got {bits!r}); "
            f"the simulated codes are stored in 8-bit tensors."
        )
    return bits


@dataclass(frozen=True)
class BitSetting:
    """Bit widths of one layer.

    Attributes:
        wbits: weight bits (symmetric, per output channel, restricted range +-(2^(w-1)-1)).
        abits: activation bits of the layer's input (asymmetric, per tensor, codes 0..2^a-1).
    """

    wbits: int = 8
    abits: int = 8

    def __post_init__(self) -> None:
        check_bits(self.wbits, "weight bits")
        check_bits(self.abits, "activation bits")

    def __str__(self) -> str:
        return f"W{self.wbits}A{self.abits}"


def parse_bits_rule(text: str) -> tuple[str, BitSetting]:
    """``'blocks.0.*=8/6'`` -> ``('blocks.0.*', BitSetting(8, 6))``.

    Raises:
        VitquantError: the text is not ``GLOB=W/A`` or a width is outside [2, 8].
    """
    m = _RULE.match(text) if isinstance(text, str) else None
    if m is None:
        raise VitquantError(f"bad bits rule {text!r}: {RULE_EXAMPLE}.")
    try:
        setting = BitSetting(int(m["w"]), int(m["a"]))
    except VitquantError as exc:
        raise VitquantError(f"bad bits rule {text!r}: {exc}") from None
    return m["glob"], setting


@dataclass(frozen=True)
class BitsPlan:
    """The bit widths of every module: ``default`` unless a rule matches (last match wins).

    Attributes:
        default: the setting of modules no rule matches.
        rules: ``(glob, setting)`` pairs in the order they were given.
    """

    default: BitSetting = BitSetting()
    rules: tuple[tuple[str, BitSetting], ...] = ()

    @classmethod
    def from_texts(cls, default: BitSetting, texts: Iterable[str]) -> BitsPlan:
        """A plan from ``GLOB=W/A`` strings (see ``parse_bits_rule``)."""
        return cls(default, tuple(parse_bits_rule(t) for t in texts))

    def for_module(self, name: str) -> BitSetting:
        """The setting of module ``name``: the last rule whose glob matches it, else default."""
        setting = self.default
        for glob, rule in self.rules:
            if fnmatch.fnmatchcase(name, glob):
                setting = rule
        return setting

    def check(self, module_names: Iterable[str]) -> None:
        """Refuse rules that match none of ``module_names``.

        Raises:
            VitquantError: naming each such rule and the closest real module names.
        """
        names = [n for n in module_names if n]
        problems = []
        for glob, setting in self.rules:
            if any(fnmatch.fnmatchcase(n, glob) for n in names):
                continue
            close = difflib.get_close_matches(glob, names, n=3, cutoff=0.4)
            hint = f"; closest module names: {', '.join(close)}" if close else ""
            problems.append(f"'{glob}={setting.wbits}/{setting.abits}' matches no module{hint}")
        if problems:
            raise VitquantError(
                "bits rule(s) match nothing: "
                + "; ".join(problems)
                + ". Fix the glob (fnmatch over module names, e.g. 'blocks.0.*' or '*.fc2')."
            )
