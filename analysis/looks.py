"""The sequential study's looks, recomputed from the runs wherever the answer is shown (report, notebook, parent run).

Per cell, the final val mIoU of every seed both backbones finished, in the grid's seed order (seeds a raised maximum
added, after them in ascending order), goes through ``experiments.sequential.analyse(res101, res50, design)``: Δ =
res101 − res50 at each look, its repeated confidence interval (RCI), the look's nominal level and the decision.
Nothing recorded elsewhere (a tag, a status line) is trusted: the looks are recomputed from the runs each time.

The design is the sweep spec's ``analysis.sequential``; the spec is the file the sweep's parent run names (tag
``sweep.spec``) unless one is given. Cost: a run's own ``cost/device_hours`` when it logged one, else the planner's
GPU-hour model of its cell (``analysis.plan.cell_costs``: s/iteration measured on finished GPU runs of the cell's
config, else the seed fork's anchor scaled by FLOPs and images per GPU; × iterations × GPUs per run). The fixed design
runs the grid's seeds of both backbones; the sequential one has spent the seeds its looks used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as sps

from analysis.cells import CellKey, StudyAxes, cell_label, iter_cells
from analysis.frames import LOGGED_DEVICE_HOURS
from analysis.html import md_escape
from experiments.errors import ExperimentsError
from experiments.sequential import Look, SequentialDesign, analyse
from experiments.spec import SweepSpec, expand_grid, load_spec
from experiments.store import run_records, sweep_parent

SPEC_TAG = "sweep.spec"  # on the sweep's parent run: the spec file it was submitted from


@dataclass
class Cost:
    hours: pd.Series  # by run_id
    unit: str  # "GPU-hours" or "device-hours"
    source: str


@dataclass
class CellLooks:
    key: CellKey
    label: str
    seeds: list  # seeds both backbones finished, in look order
    looks: list[Look]
    design: SequentialDesign  # as planned
    current: SequentialDesign  # after the pilot: the looks the design asks for now
    spent: float  # cost of the runs the looks used (all finished ones before the first look)
    unused: float  # finished runs of the cell the looks did not need
    fixed: float  # the fixed design: the grid's seeds of both backbones
    cost: Cost


def study_spec(uri: str, experiment: str, path: str | None = None) -> tuple[SweepSpec | None, str]:
    """The sweep spec (``path``, else the file the parent run names) and where it came from, or None and why."""
    if path is None:
        found = sweep_parent(uri, experiment)
        records = run_records(uri, found[0], f"attributes.run_id = '{found[1]}'") if found else []
        path = records[0].tags.get(SPEC_TAG) if records else None
        if not path:
            return None, "no sweep spec: the experiment has no sweep parent run naming one (tag sweep.spec)"
    try:
        return load_spec(path), f"the sweep spec {path}"
    except ExperimentsError as err:
        return None, f"the sweep spec is not readable here ({err}); `analysis report --spec` names another"


def sequential_design(spec: SweepSpec | None, margin: float) -> SequentialDesign | None:
    """The spec's analysis.sequential as a design (the study's margin and pairing), or None."""
    if spec is None or spec.sequential is None:
        return None
    s = spec.sequential
    return SequentialDesign(s.looks, margin, spending=s.spending, futility=s.futility, max_seeds=s.max_seeds,
                            planning_sd=s.planning_sd, paired=spec.paired)  # fmt: skip


def run_costs(runs: pd.DataFrame, spec: SweepSpec) -> Cost:
    """Each run's cost: its logged cost/device_hours, else the planner's GPU-hours for its cell config."""
    from analysis.plan import cell_costs
    from experiments.resources import gpus_per_run

    logged = runs[LOGGED_DEVICE_HOURS] if LOGGED_DEVICE_HOURS in runs else pd.Series(np.nan, index=runs.index)
    planned = pd.Series(np.nan, index=runs.index)
    sources: set[str] = set()
    if logged.isna().any():
        try:
            cells = cell_costs(spec, expand_grid(spec), runs, [])
        except ExperimentsError as err:  # the spec's grid no longer loads here: the cost is unknown, not the looks
            cells, sources = [], {f"none: {err}"}
        by_hash = {r.config_hash: c for c in cells for r in c.runs}
        by_values = {(c.values.get("model.backbone"), c.iterations): c for c in cells}
        for i, run in runs.iterrows():
            cell = by_hash.get(run.config_hash) or by_values.get((run.backbone, run.iterations))
            if cell is not None:
                planned[i] = cell.s_per_it * run.iterations * gpus_per_run(spec) / 3600
                sources.add(
                    "from measured s/iteration" if cell.source.startswith("measured") else "from the fork's anchor"
                )
    hours = logged.fillna(planned)
    hours.index = runs.run_id
    plan = f"the planner's model, {' and '.join(sorted(sources)) or 'no cell of the spec matches'}"
    if logged.notna().all():
        return Cost(hours, "device-hours", f"the runs' own {LOGGED_DEVICE_HOURS}")
    if logged.notna().any():
        return Cost(hours, "device-hours", f"{LOGGED_DEVICE_HOURS} where logged, else {plan} in GPU-hours")
    return Cost(hours, "GPU-hours", plan)


def seed_order(grid_seeds: list, seeds: set) -> list:
    """The grid's seed order first, then any further seeds ascending."""
    return [s for s in grid_seeds if s in seeds] + sorted(seeds - set(grid_seeds))


def cell_looks(
    runs: pd.DataFrame, axes: StudyAxes, design: SequentialDesign, grid_seeds: list, cost: Cost
) -> list[CellLooks]:
    """The looks of every cell with both backbones: analyse(a, b) with a = res101, b = res50 (Δ = a − b)."""
    out = []
    for key, a, b in iter_cells(runs, axes):
        ya, yb = a.groupby("seed").miou.last(), b.groupby("seed").miou.last()
        seeds = seed_order(list(grid_seeds), set(ya.index) & set(yb.index))
        looks = analyse(ya[seeds].to_numpy(), yb[seeds].to_numpy(), design) if seeds else []
        current = design.after_pilot(looks[0].pooled_sd) if looks else design
        used = seeds[: looks[-1].n] if looks else seeds
        hours = cost.hours
        both = pd.concat([a, b])
        spent = float(hours[both[both.seed.isin(used)].run_id].sum())
        fixed = design.looks[-1] * float(hours[a.run_id].mean() + hours[b.run_id].mean())
        unused = float(hours[both.run_id].sum()) - spent
        out.append(CellLooks(key, cell_label(axes, key), seeds, looks, design, current, spent, unused, fixed, cost))
    return out


def look_decision(look: Look, current: SequentialDesign) -> str:
    """What the design does after this look."""
    if look.equivalent:
        return "stop: equivalent"
    if look.futile:
        return "stop: futility (|Δ̂| ≥ margin)"
    if look.k >= len(current.looks):
        return "stop: equivalence not shown (last look)"
    return f"continue to {current.looks[look.k]} seeds"


def looks_table(cells: list[CellLooks], axes: StudyAxes) -> pd.DataFrame:
    """One row per look of every cell: seeds, Δ, RCI, nominal level and z boundary, decision, paired correlation."""
    rows = []
    for cell in cells:
        for look in cell.looks:
            rows.append(
                {
                    **({"cell": cell.label} if len(cells) > 1 else {}),
                    "look": f"{look.k} of {len(cell.current.looks)}",
                    "seeds per backbone": look.n,
                    f"Δ {axes.delta_name}": f"{look.delta:+.2f}",
                    "repeated CI (level 1 − 2p)": f"{look.rci_low:+.2f}…{look.rci_high:+.2f}",
                    "nominal p (one-sided)": f"{look.nominal:.4f}",
                    "z boundary": f"{sps.norm.isf(look.nominal):.3f}",
                    "decision": look_decision(look, cell.current),
                    "paired correlation": look.correlation,
                }
            )
    return pd.DataFrame(rows)


def hours_text(value: float) -> str:
    """665, 12.3 or 0.0021: the digits that matter at each size."""
    if math.isnan(value):
        return "unknown"
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}" if value >= 1 else f"{value:.2g}"


def state_text(cell: CellLooks, axes: StudyAxes) -> str:
    """Where the sequential analysis stands, with the last look's Δ and RCI."""
    m = cell.design.margin
    if not cell.looks:
        need = cell.design.looks[0]
        return f"no look yet: the first needs {need} seeds per backbone, {len(cell.seeds)} finished for both"
    last = cell.looks[-1]
    at = f"look {last.k} of {len(cell.current.looks)} ({last.n} seeds per backbone)"
    gap = f"Δ = {axes.delta_name} = {last.delta:+.2f} points, RCI {last.rci_low:+.2f}…{last.rci_high:+.2f}"
    if last.equivalent:
        return f"equivalent within ±{m:g} at {at}: {gap}, inside ±{m:g}"
    if last.futile:
        return f"stopped for futility at {at}: {gap} (|Δ̂| ≥ {m:g}); equivalence within ±{m:g} not shown"
    if last.k >= len(cell.current.looks):
        return f"equivalence within ±{m:g} not shown at the last look, {at}: {gap}"
    return f"continue: look {last.k + 1} needs {cell.current.looks[last.k]} seeds per backbone ({at}: {gap})"


def decision_sentence(cell: CellLooks, axes: StudyAxes) -> str:
    """One sentence: the decision, what the looks spent, and what the fixed design would have spent."""
    c = cell.cost
    unused = f" (and {hours_text(cell.unused)} on finished runs the looks did not need)" if cell.unused > 0 else ""
    return (
        f"at {md_escape(cell.label)}, the planned sequential design: {state_text(cell, axes)}; the looks used "
        f"{hours_text(cell.spent)} {c.unit}{unused}, where the fixed design's {cell.design.looks[-1]} seeds per "
        f"backbone take {hours_text(cell.fixed)} ({c.unit} per run: {c.source})."
    )
