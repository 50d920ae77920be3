"""The analysis spells each axis as the sweep does: runs read back through their params (config_from_params), frame
columns, cell labels and the parent run's cell metric names all from experiments.axes' table and rule."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from analysis.cells import cell_label, iter_cells, study_axes
from analysis.frames import config_columns
from analysis.landing import cell_metric_name
from deeplab.config import flatten, to_dict
from deeplab.params import config_from_params
from experiments.axes import SHORT_NAMES, axis_tags
from experiments.spec import expand_grid, load_spec

REPO = Path(__file__).resolve().parents[2]
GRID = {
    "model.backbone": ["resnet50", "resnet101"],
    "train.iterations": [6, 8],
    "model.weights": ["none", "imagenet"],
    "train.seed": [0, 1],
    "data.crop_size": [[32, 64]],  # one value: in every run's tags and name, no cell axis
}


def _sweep(tmp_path: Path) -> tuple[list, pd.DataFrame]:
    """The grid's runs, and a runs frame built as runs_frame builds it: from each run's params as MLflow keeps them."""
    lines = "".join(f"  {k}: {v}\n" for k, v in GRID.items())
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"name: t\nbase: {REPO / 'configs' / 'synthetic_tiny.yaml'}\ngrid:\n{lines}"
        "overrides:\n  schedule.warmup_iters: 2\n"
    )
    runs = expand_grid(load_spec(spec))
    rows = []
    for run in runs:
        params = {k: str(v) for k, v in flatten(to_dict(run.config)).items()} | {"info.params": "1"}
        rows.append({"run_name": run.name, **config_columns(config_from_params(params)), "miou": 50.0})
    return runs, pd.DataFrame(rows)


def test_frame_columns_cell_labels_and_metric_names_spell_axes_as_the_runs_tags(tmp_path: Path) -> None:
    runs, frame = _sweep(tmp_path)
    assert set(SHORT_NAMES.values()) <= set(frame.columns) and not set(SHORT_NAMES) & set(frame.columns)
    assert frame.iterations.dtype.kind == "i" and frame.seed.dtype.kind == "i"  # typed by the config, not guessed
    tags = {run.name: axis_tags(run.config, GRID) for run in runs}
    axes = study_axes(GRID, frame)
    cells = list(iter_cells(frame, axes))
    assert [(c.key.iterations, c.key["model.weights"]) for c in cells] == [
        (6, "imagenet"), (6, "none"), (8, "imagenet"), (8, "none")
    ]  # fmt: skip
    for cell in cells:
        label = cell_label(axes, cell.key)
        for name in [*cell.a.run_name, *cell.b.run_name]:  # every piece of the label is one of the run's tags
            assert set(label.split(", ")) <= {f"{k}={v}" for k, v in tags[name].items()}, (label, name)
        assert cell_metric_name(axes, cell.key) == label.replace("=", "-").replace(", ", "_")
    assert cell_label(axes, cells[0].key) == "iterations=6, weights=imagenet"
