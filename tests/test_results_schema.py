"""The results row's JSON Schema: docs/results.md names exactly its fields, and the rows that
`eval`, `quantize`, `bench`, `qat` and `pipeline` write validate against it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from test_quant_cli import run  # `python -m vitquant ...` in a subprocess
from vitquant.errors import VitquantError
from vitquant.results import ResultRow, schema, validate_rows

DOCS = Path(__file__).resolve().parents[1] / "docs" / "results.md"
TINY = ("--limit", "60", "--val", "60", "--calib", "32", "--threads", "1")


def doc_table(heading: str) -> list[str]:
    """First-column names (``| `name` | ...``) of the table under ``heading`` in results.md."""
    text = DOCS.read_text()
    section = text.split(heading, 1)[1]
    table = section.split("\n\n|", 1)[1].split("\n\n", 1)[0]
    return re.findall(r"^\| `([^`]+)` \|", "|" + table, flags=re.M)


def test_docs_list_exactly_the_schemas_fields():
    props = schema()["properties"]
    assert doc_table("## The results row") == list(props)
    assert doc_table("### `extra` keys") == list(props["extra"]["properties"])
    # the dataclass and the schema agree too: every row field is required, none else allowed
    assert list(ResultRow("fp32", "pytorch").to_dict()) == list(props) == schema()["required"]


def test_a_row_with_an_unknown_key_or_a_wrong_type_is_refused():
    row = ResultRow("static", "pt2e-x86", accuracy=0.9, n=10, extra={"int8": ["head"]})
    validate_rows([row])
    bad = row.to_dict() | {"extra": {"pred_agreement": 0.99}}
    with pytest.raises(VitquantError, match="static/pt2e-x86.*pred_agreement"):
        validate_rows([bad])
    with pytest.raises(VitquantError, match="accuracy"):
        validate_rows([row.to_dict() | {"accuracy": "high"}])
    with pytest.raises(VitquantError, match="speedup"):
        validate_rows([row.to_dict() | {"speedup": 2.0}])


@pytest.fixture(scope="module")
def outputs(tmp_path_factory, digits_models) -> Path:
    out = tmp_path_factory.mktemp("schema")
    proc = run("eval", "digits_cnn", *TINY, "--out", str(out / "eval"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run(
        "quantize",
        "digits_cnn",  # every variant and backend; the ViT's rows are validated elsewhere
        "--method",
        "all",
        "--ignore",
        "fc",
        "--no-lower",
        *TINY,
        "--out",
        str(out / "q"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run("bench", str(out / "q"), "--no-lower", "--limit", "60", "--threads", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    qat = ("qat", "digits_cnn", "--epochs", "1", "--train-limit", "128")
    proc = run(*qat, *TINY, "--out", str(out / "qat"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.mark.parametrize(
    "name", ["eval/eval.json", "q/quantize.json", "q/bench.json", "qat/qat.json"]
)
def test_command_rows_validate_against_the_schema(outputs, name):
    doc = json.loads((outputs / name).read_text())
    validate_rows(doc["results"])
    assert doc["results"] and all(r["n"] == 60 for r in doc["results"])


def test_quantize_rows_carry_the_new_fields(outputs):
    rows = {
        (r["variant"], r["backend"]): r
        for r in json.loads((outputs / "q" / "quantize.json").read_text())["results"]
    }
    fp32 = rows[("fp32", "pytorch")]
    assert fp32["agreement_fp32"] == 1.0 and fp32["speedup_vs_fp32_eager"] == pytest.approx(1.0)
    ort = rows[("static-ignore", "onnxruntime")]
    assert ort["runtime"] == "onnxruntime" and ort["extra"]["twin"] == ["static-ignore", "pt2e-x86"]
    assert 0.9 <= ort["agreement_pt2e"] <= 1.0
    # the same-runtime speedup is against the fp32 ONNX Runtime row at the same batch
    b = str(ort["latency_batch"])
    fp32_ort = rows[("fp32", "onnxruntime")]["latency_ms_per_image_by_batch"][b]
    assert ort["speedup_vs_fp32_same_runtime"] == pytest.approx(
        fp32_ort / ort["latency_ms_per_image"]
    )
    assert ort["speedup_vs_fp32_eager"] == pytest.approx(
        fp32["latency_ms_per_image_by_batch"][b] / ort["latency_ms_per_image"]
    )
    assert rows[("static", "pt2e-x86")]["agreement_pt2e"] is None


def test_pipeline_rows_validate_against_the_schema(forced_qat_pipeline):
    """The pipeline (with its QAT branch) still builds rows its own way; their extra keys are
    enumerated in the schema too."""
    doc = json.loads((forced_qat_pipeline / "pipeline" / "pipeline.json").read_text())
    validate_rows(doc["results"])
    assert doc["results"][-1]["variant"] == "qat"
