"""The experiment's one-line headline (analysis.landing) in each state a study passes through."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd

from analysis.cells import CellKey, study_axes
from analysis.comparison import CellComparison
from analysis.landing import HEADLINE_MAX, headline
from analysis.looks import Cost, cell_looks
from analysis.stats import tost_equivalence
from experiments.sequential import SequentialDesign

DESIGN = SequentialDesign((4, 8, 12, 16), 0.5, futility=True)


def _study(n: int, lead: float = 0.1, sequential: bool = True) -> SimpleNamespace:
    """What headline reads of a Comparison: n seeds per backbone at 40000 iterations."""
    rng = np.random.default_rng(1)
    runs = pd.DataFrame(
        [
            {
                "run_id": f"{bb}-{s}",
                "backbone": bb,
                "iterations": 40000,
                "seed": s,
                "status": "FINISHED",
                "miou": 78 + lead * (bb == "resnet101") + rng.normal(0, 0.2),
            }
            for bb in ("resnet50", "resnet101")
            for s in range(n)
        ]
    )
    axes = study_axes({}, runs)
    a, b = (runs[runs.backbone == x].miou.to_numpy() for x in (axes.a, axes.b))
    tost = tost_equivalence(a, b, 0.5)
    cell = CellComparison(CellKey.of(axes, 40000), "iterations=40000", n, n, tost, tost, None, None)
    cost = Cost(pd.Series(1.0, index=runs.run_id.to_numpy()), "GPU-hours", "a test's")
    looks = cell_looks(runs, axes, DESIGN, list(range(16)), cost) if sequential else []
    return SimpleNamespace(synthetic=False, cells=[cell], looks=looks, margin=0.5)


def test_the_headline_says_delta_its_interval_and_equivalence_in_one_short_line() -> None:
    lines = {
        "before the first look": headline(_study(3)),
        "between looks": headline(_study(6)),
        "fixed design": headline(_study(3, sequential=False)),
        "futility": headline(_study(8, lead=2.0)),
    }
    two = _study(2, sequential=False)
    lines["synthetic, two cells"] = headline(
        SimpleNamespace(**{**vars(two), "synthetic": True, "cells": two.cells * 2})
    )
    for state, line in lines.items():
        assert line.startswith(("Δ = res101 − res50: ", "synthetic: Δ = res101 − res50: ")), (state, line)
        assert len(line) <= HEADLINE_MAX, (state, len(line), line)
    assert "(90% CI " in lines["before the first look"] and lines["before the first look"].endswith(
        "untested: look 1 needs 4 seeds"
    )
    assert "(RCI " in lines["between looks"] and lines["between looks"].endswith("open after look 1 of 4")
    assert "(90% CI " in lines["fixed design"] and lines["fixed design"].endswith("equivalence ±0.5 shown")  # sd 0.2
    assert lines["futility"].endswith("equivalence ±0.5 not shown") and "(RCI " in lines["futility"]
    assert lines["synthetic, two cells"].endswith("equivalence ±0.5 untested (n<3); +1 cell")
