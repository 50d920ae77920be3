"""The walkthrough notebook runs headless against a real sweep store, and is kept in git without outputs."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import nbformat
import pytest
from nbclient import NotebookClient
from tiny import REPO

from analysis.report import write_report

if TYPE_CHECKING:
    from conftest import SweepStore

NOTEBOOK = REPO / "notebooks" / "res50_vs_res101.ipynb"


def test_notebook_in_git_has_no_outputs() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code, "the notebook has no code cells"
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]


def test_notebook_runs_against_a_sweep_store(
    sweep_store: SweepStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the kernel inherits this process's environment; "python3" is ipykernel's own spec, i.e. this interpreter
    monkeypatch.setenv("DEEPLAB_TRACKING_URI", sweep_store.tracking_uri)
    monkeypatch.setenv("DEEPLAB_EXPERIMENT", sweep_store.experiment)
    monkeypatch.setenv("DEEPLAB_BOOTSTRAP", "200")
    monkeypatch.setenv("DEEPLAB_FIGURES", str(tmp_path / "figures"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        nb, kernel_name="python3", timeout=120, resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    )
    client.execute()  # raises CellExecutionError, naming the cell, on any error
    outputs = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"]
    images = [out for out in outputs if "image/png" in out.get("data", {})]
    assert len(images) >= 6  # the looks, Δ curves, curves, final vs schedule, per-class Δ, cost
    text = "".join(str(out.get("data", {}).get("text/markdown", "")) for out in outputs)
    assert "fewer than 3 seeds per backbone" in text and "synthetic data" in text
    assert sorted(p.name for p in (tmp_path / "figures").glob("*.svg")) == [
        "cost.svg",
        "curves.svg",
        "delta_curves.svg",
        "final_vs_schedule.svg",
        "looks.svg",
        "per_class_delta.svg",
    ]
    # the report on the same store says the same, line for line (the bootstrap is seeded)
    report = write_report(sweep_store.experiment, sweep_store.tracking_uri, tmp_path / "report", n_boot=200)
    verdict = report.read_text().split("## Verdict\n\n")[1].split("\n\n")[0]
    assert text.strip().splitlines() == verdict.splitlines()
    assert any("change with schedule length" in line for line in verdict.splitlines())
