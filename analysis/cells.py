"""The study's cells from the sweep's recorded grid: backbone is compared, seeds replicate, every other axis
with more than one value splits the runs into cells that are compared only within themselves."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import pandas as pd

from analysis.errors import AnalysisError
from analysis.frames import CONFIG_COLUMNS
from analysis.html import md_escape

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

    @property
    def cell_columns(self) -> list[str]:
        return [column(k) for k in self.cell_keys]

    @property
    def delta_name(self) -> str:
        """'res101 − res50' (DELTA_NAME) for the study's two backbones; 'a − b' in grid order for others."""
        return f"{SHORT.get(self.a, self.a)} − {SHORT.get(self.b, self.b)}"

    def ahead(self, delta: float) -> str:
        """Which backbone a Δ favours, in words: 'res101 ahead', 'res50 ahead' or 'level'."""
        if delta == 0 or math.isnan(delta):
            return "level"
        return f"{SHORT.get(self.a if delta > 0 else self.b, self.a if delta > 0 else self.b)} ahead"


def column(key: str) -> str:
    """The runs frame's column for a dotted config key (short names for the three classic ones)."""
    return CONFIG_COLUMNS.get(key, key)


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
    return StudyAxes(a, b, (SCHEDULE, *others))


def cell_label(axes: StudyAxes, key: tuple) -> str:
    """'4 iterations' or '4 iterations, model.weights=none': how a cell is named in the verdict and figures."""
    text = f"{int(key[0])} iterations"
    return ", ".join([text, *(f"{k}={v}" for k, v in zip(axes.cell_keys[1:], key[1:], strict=True))])


def iter_cells(runs: pd.DataFrame, axes: StudyAxes) -> Iterator[tuple[tuple, pd.DataFrame, pd.DataFrame]]:
    """(cell key, runs of a, runs of b) for every cell that has runs of both backbones, in sorted order."""
    for key, cell in runs.groupby(axes.cell_columns, dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        a, b = cell[cell.backbone == axes.a], cell[cell.backbone == axes.b]
        if len(a) and len(b):
            yield key, a, b


def missing_cells(runs_all: pd.DataFrame, runs: pd.DataFrame, axes: StudyAxes) -> list[str]:
    """'resnet50 @ 4 iterations' for each backbone × cell seen in the experiment with no FINISHED run."""
    seen = set(runs_all[axes.cell_columns].itertuples(index=False, name=None))
    done = set(runs[["backbone", *axes.cell_columns]].itertuples(index=False, name=None))
    order = sorted(seen, key=lambda k: (k[0], str(k[1:])))  # schedule numerically, then the other axes
    return [f"{bb} @ {cell_label(axes, k)}" for k in order for bb in (axes.a, axes.b) if (bb, *k) not in done]


def check_one_configuration(runs: pd.DataFrame, axes: StudyAxes) -> None:
    """Runs pooled as the seeds of one backbone in one cell share their whole configuration but the seed (an override
    edited between two sweeps, or two specs in one experiment, would otherwise pass for seed noise), and no seed
    comes twice (a duplicate is not a second sample)."""
    from deeplab.config import NON_IDENTITY, flatten, to_dict
    from deeplab.errors import DeeplabError
    from deeplab.params import config_from_params

    if "config_params" not in runs:
        return
    for key, group in runs.groupby([*axes.cell_columns, "backbone"], dropna=False, sort=True):
        where = f"{cell_label(axes, key[:-1])}, {key[-1]}"
        twice = group[group.seed.duplicated(keep=False)]
        if len(twice):
            names = ", ".join(md_escape(n) for n in twice.run_name)
            raise AnalysisError(
                f"{where}: seed {int(twice.seed.iloc[0])} comes {len(twice)} times (runs {names}); a repeated seed "
                "is not a second sample: delete all but one of them"
            )
        configs = {}
        for run in group.itertuples():
            try:  # defaults for keys a run predates, so that an older run does not differ by them
                flat = flatten(to_dict(config_from_params(run.config_params)))
            except DeeplabError:  # e.g. an imported log's few params: compare what was recorded
                flat = {k: v for k, v in run.config_params.items() if not k.startswith("info.")}
            configs[run.run_name] = {k: str(v) for k, v in flat.items() if k != REPLICATE and k not in NON_IDENTITY}
        (first, reference), *others = configs.items()
        for name, config in others:
            differ = sorted(k for k in reference.keys() | config.keys() if reference.get(k) != config.get(k))
            if differ:
                raise AnalysisError(
                    f"{where}: runs {md_escape(first)} and {md_escape(name)} differ in {', '.join(differ[:4])}"
                    f"{' …' if len(differ) > 4 else ''} as well as the seed: they are not seeds of one configuration "
                    "(make the key a grid axis, or report them as separate experiments)"
                )
