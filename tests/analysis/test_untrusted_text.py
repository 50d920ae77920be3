"""Run names, tags, params and axis values are data: nothing in them adds a link, a script, an image or a request
to a local file to report.html or to the parent run's description."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from analysis.cells import CellKey, StudyAxes, cell_label
from analysis.html import markdown_table, markdown_to_html, md_escape

EVIL = [
    "r50 [click](javascript:alert(1))",
    "![leak](file:///etc/passwd)",
    "<script>alert(2)</script><img src=x onerror=alert(3)>",
    "[a](http://evil.example/x) **bold** `code` _it_",
    "<http://evil.example/auto>",
]


def _body(page: str) -> str:
    return page[page.index("<body>") :]


def test_data_in_tables_and_text_renders_as_text(tmp_path: Path) -> None:
    (tmp_path / "fig.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    table = markdown_table(pd.DataFrame({"run": EVIL, "value": [1.0] * len(EVIL)}))
    text = "\n\n".join(f"verdict for {md_escape(name)}" for name in EVIL)
    own = "[own anchor](#t) ![figure](fig.png)"
    body = _body(markdown_to_html(f"# T\n\n{table}\n\n{text}\n\n{own}\n", tmp_path))
    for needle in (
        "<script",
        '<img src="x',
        'href="javascript',
        'src="file',
        'href="http://evil',
        "<code>",
    ):
        assert needle not in body, needle
    assert body.count("<a ") == 1 and '<a href="#t">own anchor</a>' in body  # the report's own link stays
    assert body.count("<img ") == 1 and 'src="data:image/png;base64,' in body  # and its own figure, inlined
    assert "[click](javascript:alert(1))" in body and "&lt;script&gt;" in body  # shown, as text


def test_links_and_images_the_report_did_not_make_are_dropped_to_their_text(tmp_path: Path) -> None:
    outside = tmp_path.parent / "secret.png"
    outside.write_bytes(b"\x89PNG\r\n\x1a\n")
    page = markdown_to_html(
        "# T\n\n[x](javascript:alert(1)) [y](http://evil.example/) ![z](../secret.png) ![w](http://evil.example/p.png) "
        "[run](http://mlflow.example:5000/#/experiments/3/runs/" + "ab" * 16 + ")\n",
        tmp_path,
    )
    body = _body(page)
    assert "<img" not in body and 'href="http://evil' not in body and 'href="javascript' not in body
    assert body.count("<a ") == 1 and "/#/experiments/3/runs/" in body  # an MLflow run page, as run_link makes
    assert "x y z w" in body


def test_axis_values_in_a_table_or_a_verdict_are_text() -> None:
    axes = StudyAxes("resnet101", "resnet50", ("train.iterations", "model.weights"))
    label = cell_label(axes, CellKey.of(axes, (40000, "[x](javascript:alert(1))")))
    table = markdown_table(pd.DataFrame({"cell": [label]}))
    page = _body(markdown_to_html(f"# T\n\n{table}\n\nat {md_escape(label)}: Δ\n", Path("/nonexistent")))
    assert "<a " not in page and page.count("javascript:alert(1)") == 2


def test_a_non_finite_final_miou_is_missing_not_a_number(tmp_path: Path) -> None:
    """A diverged or corrupted run's NaN/inf reaches no mean, figure or metric: runs_frame leaves it missing and
    flags it, curves_frame drops the point."""
    import math

    from analysis.frames import curves_frame, runs_frame
    from experiments.store import record_run

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ids = {}
    for name, value in (("ok", 71.5), ("inf", math.inf), ("nan", math.nan)):
        ids[name] = record_run(
            uri, "nonfinite", key=name, run_name=name, tags={"config_hash": name, "backbone": "resnet50"},
            params={"model.backbone": "resnet50", "train.iterations": "6", "train.seed": "0"},
            metrics=[("val/mIoU", 60.0, 3), ("val/mIoU", value, 6)],
        )  # fmt: skip
    frame = runs_frame(uri, "nonfinite").set_index("run_name")
    assert frame.loc["ok", "miou"] == 71.5 and not frame.loc["ok", "miou_nonfinite"]
    assert frame.loc[["inf", "nan"], "miou"].isna().all() and frame.loc[["inf", "nan"], "miou_nonfinite"].all()
    curves = curves_frame(uri, [r.run_id for r in ids.values()], ("val/mIoU",))
    assert curves.value.map(math.isfinite).all() and len(curves) == 4  # two points of "ok", one of each other
