"""The study's cells from the sweep's recorded grid: backbone is compared, seeds replicate, every other axis
with more than one value splits the runs into cells that are compared only within themselves."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import pandas as pd

from analysis.errors import AnalysisError
from analysis.frames import column
from analysis.html import md_escape
from experiments.axes import pieces, short_names

COMPARE, REPLICATE, SCHEDULE = "model.backbone", "train.seed", "train.iterations"
SHORT = {"resnet50": "res50", "resnet101": "res101"}
# The one sign convention, for every text, table, figure axis, metric name and description a person reads:
# Δ = res101 − res50, res101's lead (positive when res101 is better), as the published tables are read.
PREFERRED = ("resnet101", "resnet50")  # Δ = a − b
DELTA_NAME = "res101 − res50"
DELTA_DEFINITION = f"Δ = {DELTA_NAME} (res101's lead: positive when res101 is better)"
DELTA_METRIC = "mIoU_res101_minus_res50"  # the parent run's metrics: DELTA_METRIC/<cell>


@dataclass(frozen=True)
class StudyAxes:
    a: str  # Δ = a − b
    b: str
    cell_keys: tuple[str, ...]  # dotted config keys; train.iterations first
    grid_keys: tuple[str, ...] = ()  # every axis of the recorded grid: short names are chosen among them all

    @property
    def cell_columns(self) -> list[str]:
        return [column(k) for k in self.cell_keys]

    @property
    def names(self) -> dict[str, str]:
        """Each axis's short name, as the sweep's tags and run names spell it (experiments.axes)."""
        return short_names([*self.grid_keys, *self.cell_keys])

    def label(self, values: Mapping[str, Any]) -> str:
        """'iterations=4, weights=none': cell axis values (dotted key → value) as the runs' tags spell them."""
        return ", ".join(pieces(values, self.names))

    @property
    def delta_name(self) -> str:
        """'res101 − res50' (DELTA_NAME) for the study's two backbones; 'a − b' in grid order for others."""
        return f"{SHORT.get(self.a, self.a)} − {SHORT.get(self.b, self.b)}"

    def ahead(self, delta: float) -> str:
        """Which backbone a Δ favours, in words: 'res101 ahead', 'res50 ahead' or 'level'."""
        if delta == 0 or math.isnan(delta):
            return "level"
        return f"{SHORT.get(self.a if delta > 0 else self.b, self.a if delta > 0 else self.b)} ahead"


@dataclass(frozen=True)
class CellKey:
    """A cell by the value of each cell axis: ``key.iterations``, ``key["model.weights"]``."""

    values: tuple[tuple[str, Any], ...]  # (dotted config key, value), the study's cell axes in order

    @classmethod
    def of(cls, axes: StudyAxes, values: Sequence | Any) -> CellKey:
        """From a group key of the runs frame's ``axes.cell_columns`` (a scalar when there is one)."""
        values = values if isinstance(values, tuple) else (values,)
        return cls(tuple(zip(axes.cell_keys, values, strict=True)))

    def __getitem__(self, key: str) -> Any:
        return dict(self.values)[key]

    @property
    def iterations(self) -> int:
        return int(self[SCHEDULE])

    @property
    def others(self) -> dict[str, Any]:
        """The cell's axes but the schedule (dotted key → value)."""
        return {k: v for k, v in self.values if k != SCHEDULE}


class Cell(NamedTuple):
    key: CellKey
    a: pd.DataFrame  # the runs of axes.a
    b: pd.DataFrame


def study_axes(grid: dict[str, list], runs: pd.DataFrame) -> StudyAxes:
    """Axes from the recorded grid (``{}`` for imported runs: schedule length is then the only cell axis)."""
    levels = list(dict.fromkeys(grid.get(COMPARE) or sorted(runs.backbone.dropna().unique())))
    if len(levels) != 2:
        raise AnalysisError(f"{COMPARE}: the comparison needs exactly two values, the sweep has {levels}")
    a, b = (PREFERRED if set(levels) == set(PREFERRED) else levels)[:2]
    others = [k for k, v in grid.items() if k not in (COMPARE, REPLICATE, SCHEDULE) and len(v) > 1]
    for key in others:
        if column(key) not in runs.columns:
            raise AnalysisError(f"sweep axis {key!r} is not a param of the runs")
    return StudyAxes(a, b, (SCHEDULE, *others), tuple(grid))


def cell_label(axes: StudyAxes, key: CellKey) -> str:
    """'iterations=4' or 'iterations=4, weights=none': a cell in the verdict and figures, as its runs' tags say."""
    return axes.label(dict(key.values))


def iter_cells(runs: pd.DataFrame, axes: StudyAxes) -> Iterator[Cell]:
    """Every cell that has runs of both backbones, in sorted order."""
    for values, cell in runs.groupby(axes.cell_columns, dropna=False, sort=True):
        a, b = cell[cell.backbone == axes.a], cell[cell.backbone == axes.b]
        if len(a) and len(b):
            yield Cell(CellKey.of(axes, values), a, b)


def missing_cells(runs_all: pd.DataFrame, runs: pd.DataFrame, axes: StudyAxes) -> list[str]:
    """'resnet50 @ iterations=4' for each backbone × cell seen in the experiment with no FINISHED run."""
    seen = {CellKey.of(axes, v) for v in runs_all[axes.cell_columns].itertuples(index=False, name=None)}
    rows = runs[["backbone", *axes.cell_columns]].itertuples(index=False, name=None)
    done = {(backbone, CellKey.of(axes, tuple(values))) for backbone, *values in rows}
    order = sorted(seen, key=lambda k: (k.iterations, str(tuple(k.others.values()))))
    return [f"{bb} @ {cell_label(axes, k)}" for k in order for bb in (axes.a, axes.b) if (bb, k) not in done]


def check_one_configuration(runs: pd.DataFrame, axes: StudyAxes) -> None:
    """Runs pooled as the seeds of one backbone in one cell share their whole configuration but the seed (an override
    edited between two sweeps, or two specs in one experiment, would otherwise pass for seed noise), and no seed
    comes twice (a duplicate is not a second sample)."""
    from deeplab.config import NON_IDENTITY, flatten, to_dict

    if "config" not in runs:
        return
    for (*values, backbone), group in runs.groupby([*axes.cell_columns, "backbone"], dropna=False, sort=True):
        where = f"{cell_label(axes, CellKey.of(axes, tuple(values)))}, {backbone}"
        twice = group[group.seed.duplicated(keep=False)]
        if len(twice):
            names = ", ".join(md_escape(n) for n in twice.run_name)
            raise AnalysisError(
                f"{where}: seed {int(twice.seed.iloc[0])} comes {len(twice)} times (runs {names}); a repeated seed "
                "is not a second sample: delete all but one of them"
            )
        configs = {}
        for name, config in zip(group.run_name, group.config, strict=True):  # defaults for keys a run predates
            flat = flatten(to_dict(config))
            configs[name] = {k: str(v) for k, v in flat.items() if k != REPLICATE and k not in NON_IDENTITY}
        (first, reference), *others = configs.items()
        for name, config in others:
            differ = sorted(k for k in reference.keys() | config.keys() if reference.get(k) != config.get(k))
            if differ:
                raise AnalysisError(
                    f"{where}: runs {md_escape(first)} and {md_escape(name)} differ in {', '.join(differ[:4])}"
                    f"{' …' if len(differ) > 4 else ''} as well as the seed: they are not seeds of one configuration "
                    "(make the key a grid axis, or report them as separate experiments)"
                )
