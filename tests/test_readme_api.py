"""README's "Python API" example, extracted from README.md and run as written."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def api_example() -> str:
    """The first ```python block under the "## Python API" heading."""
    text = README.read_text()
    section = text.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_api_example_runs(tmp_path, monkeypatch, capsys):
    script = tmp_path / "readme_api.py"
    script.write_text(api_example())
    monkeypatch.chdir(tmp_path)  # the example writes its exports to the current folder
    runpy.run_path(str(script), run_name="__main__")
    out = capsys.readouterr().out
    assert "['patch', 'mlp.0', 'mlp.2'] in int8; ['head'] kept in float" in out
    agreements = re.findall(r"(patch_mlp\.\w+) agrees with the pt2e model on ([\d.]+)%", out)
    assert [name for name, _ in agreements] == ["patch_mlp.onnx", "patch_mlp.pte"]
    assert all(float(pct) >= 99.0 for _, pct in agreements), out
    assert (tmp_path / "patch_mlp.onnx").is_file() and (tmp_path / "patch_mlp.pte").is_file()
