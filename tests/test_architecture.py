"""The layout's rules, checked on the source: arrows point down, modules stay small.

- the library never imports the command line (``vitquant.cli``): only ``cli/`` and
  ``__main__.py`` may, so every library function can be called without Typer;
- no module is over ``MAX_LINES`` lines (split by concept instead);
- the formatter decides: a ``fmt: skip`` marker stays the exception (a table literal).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "vitquant"
MAX_LINES = 450
MAX_FMT_SKIPS = 15
# Written without the marker itself, so this file does not count as one.
FMT_SKIP = re.compile(r"#\s*fmt:\s*skip")


def module_name(path: Path) -> str:
    """``src/vitquant/quant/scope.py`` -> ``vitquant.quant.scope`` (a package: its name)."""
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(source: str, module: str, *, is_package: bool = False) -> set[str]:
    """Every module ``source`` imports, anywhere (functions too), as absolute dotted names.

    ``from a import b`` yields both ``a`` and ``a.b`` (``b`` may be a submodule); relative
    imports are resolved against ``module``; ``importlib.import_module("...")`` with a literal
    name counts too.
    """
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - (node.level - 1)])
                origin = f"{base}.{node.module}" if node.module else base
            else:
                origin = node.module or ""
            found.add(origin)
            found.update(f"{origin}.{alias.name}" for alias in node.names)
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.add(node.args[0].value)
    return found


def imports_cli(names: set[str]) -> set[str]:
    return {n for n in names if n == "vitquant.cli" or n.startswith("vitquant.cli.")}


def library_modules() -> list[Path]:
    """Every module but the command line's own (``cli/`` and ``__main__.py``)."""
    return [
        p
        for p in sorted(PACKAGE.rglob("*.py"))
        if "cli" not in p.relative_to(PACKAGE).parts[:-1] and p.name != "__main__.py"
    ]


@pytest.mark.parametrize(
    ("source", "module", "expected"),
    [
        ("import vitquant.cli.common", "vitquant.pipeline", True),
        ("from vitquant.cli.app import console", "vitquant.pipeline", True),
        ("from vitquant import cli", "vitquant.pipeline", True),
        ("def f():\n    from vitquant.cli import app", "vitquant.quant.run", True),
        ("from .cli import common", "vitquant.pipeline", True),
        ("from ..cli.analyze_cmd import x", "vitquant.quant.run", True),
        ("from .. import cli", "vitquant.quant.run", True),
        ("import importlib\nimportlib.import_module('vitquant.cli')", "vitquant.io", True),
        ("from vitquant.client import x", "vitquant.pipeline", False),
        ("from .plots.analysis import write_analysis_figures", "vitquant.pipeline", False),
        ("from . import scope", "vitquant.quant.run", False),
    ],
)
def test_the_import_check_sees_every_spelling(source, module, expected):
    assert bool(imports_cli(imported_modules(source, module))) is expected


def test_a_package_resolves_relative_imports_from_itself():
    names = imported_modules("from .cli import app", "vitquant", is_package=True)
    assert imports_cli(names) == {"vitquant.cli", "vitquant.cli.app"}


def test_the_library_never_imports_the_command_line():
    offenders = {}
    for path in library_modules():
        found = imports_cli(
            imported_modules(
                path.read_text(), module_name(path), is_package=path.name == "__init__.py"
            )
        )
        if found:
            offenders[str(path.relative_to(REPO))] = sorted(found)
    assert offenders == {}, f"the library imports vitquant.cli (arrows point down): {offenders}"


def test_the_walk_covers_the_library():
    names = {module_name(p) for p in library_modules()}
    assert {"vitquant", "vitquant.pipeline", "vitquant.pipeline.bound"} <= names
    assert not any(n.startswith("vitquant.cli") for n in names)
    assert "vitquant.__main__" not in names


def test_no_module_is_over_the_line_limit():
    lengths = {
        str(p.relative_to(REPO)): len(p.read_text().splitlines())
        for p in sorted(PACKAGE.rglob("*.py"))
    }
    assert lengths, "no modules found"
    too_long = {path: n for path, n in lengths.items() if n > MAX_LINES}
    assert too_long == {}, f"modules over {MAX_LINES} lines (split them by concept): {too_long}"


def test_fmt_skip_stays_rare():
    counts = {}
    for folder in ("src", "tests", "benchmarks"):
        for path in sorted((REPO / folder).rglob("*.py")):
            n = len(FMT_SKIP.findall(path.read_text()))
            if n:
                counts[str(path.relative_to(REPO))] = n
    total = sum(counts.values())
    assert total <= MAX_FMT_SKIPS, (
        f"{total} '# fmt" + f": skip' markers (at most {MAX_FMT_SKIPS}): {counts}"
    )
