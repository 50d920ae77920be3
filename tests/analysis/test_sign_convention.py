"""One sign everywhere a person reads a difference: Δ = res101 − res50 (analysis.cells), in every output — the
report (md, html), the public-evidence report, figure axes, the parent run's description and metric names, the
experiment's headline, the notebook and the docs — and the reverse nowhere."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import nbformat
import pytest
from mlflow.tracking import MlflowClient
from tiny import REPO

from analysis.cells import DELTA_DEFINITION, DELTA_METRIC, DELTA_NAME
from analysis.report import write_report
from experiments.store import sweep_parent
from experiments.store.publish import NOTE

if TYPE_CHECKING:
    from conftest import SweepStore

REVERSE = re.compile(r"res50(-seed)?\s*[−-]\s*res101|res50_minus_res101|mean\(res50\)\s*[−-]")
DELTA_AXES = ("looks", "delta_curves", "per_class_delta")  # figures with a Δ axis; the forest plot is the evidence's


@pytest.fixture(scope="module")
def outputs(sweep_store: SweepStore, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Every text a reader meets, by where it is."""
    out = tmp_path_factory.mktemp("sign")
    write_report(sweep_store.experiment, sweep_store.tracking_uri, out, n_boot=50)
    client = MlflowClient(sweep_store.tracking_uri)
    parent = sweep_parent(sweep_store.tracking_uri, sweep_store.experiment)[1]
    run = client.get_run(parent)
    texts = {name: (out / name).read_text() for name in ("report.md", "report.html")}
    texts |= {f"evidence/{name}": (out / "evidence" / name).read_text() for name in ("report.md", "report.html")}
    texts |= {f"figure {n}": (out / "figures" / f"{n}.svg").read_text() for n in DELTA_AXES}
    texts["figure forest"] = (out / "evidence" / "figures" / "forest.svg").read_text()
    texts["parent run description"] = run.data.tags[NOTE]
    texts["parent run metrics"] = "\n".join(run.data.metrics)
    texts["experiment headline"] = client.get_experiment_by_name(sweep_store.experiment).tags[NOTE]
    notebook = nbformat.read(REPO / "notebooks" / "res50_vs_res101.ipynb", as_version=4)
    texts["notebook"] = "\n".join(cell.source for cell in notebook.cells)
    texts["docs/design.md"] = (REPO / "docs" / "design.md").read_text()
    return texts


def test_every_output_says_delta_is_res101_minus_res50_and_never_the_reverse(outputs: dict[str, str]) -> None:
    for where, text in outputs.items():
        assert not REVERSE.search(text), f"{where}: {REVERSE.search(text).group(0)!r}"
        if where != "parent run metrics":
            assert f"Δ = {DELTA_NAME}" in text, where
    defined = ("report.md", "report.html", "evidence/report.md", "evidence/report.html", "parent run description")
    for where in defined:
        assert DELTA_DEFINITION in outputs[where].replace("&#x27;", "'").replace("&#39;", "'"), where


def test_metric_names_and_their_docs_use_the_same_sign(outputs: dict[str, str]) -> None:
    names = outputs["parent run metrics"].splitlines()
    deltas = [n for n in names if n.startswith(DELTA_METRIC)]
    # cost/: the sweep's summed cost; study/: an advanced study's looks (Δ = res101 − res50 too)
    allowed = ("mIoU_res101_minus_res50/", "seeds/", "sequential/", "cost/", "study/")
    assert deltas and all(n.startswith(allowed) for n in names), names
    assert f"`{DELTA_METRIC}/<cell>`" in outputs["parent run description"]
    assert f"`{DELTA_METRIC}/" in outputs["docs/design.md"]


def test_figures_axes_name_the_difference_as_the_text_does(outputs: dict[str, str]) -> None:
    for name in DELTA_AXES:
        labels = re.findall(r"<text[^>]*>([^<]*)</text>", outputs[f"figure {name}"])
        assert any(label.startswith(f"Δ = {DELTA_NAME} [") for label in labels), (name, labels)
    assert "Δ = res101 − res50" in outputs["figure forest"] and "res101 ahead" in outputs["figure forest"]
