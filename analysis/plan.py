"""`analysis plan SPEC`: what a sweep costs (runs, iterations, GPU-hours) and what it can show (TOST power).

Seconds per iteration come from finished GPU runs of the same cell config in the store (wall time, validation
included, over iterations; the schedule length and seed do not change it), else from an anchor: the seed
fork's 0.82 s/iteration for res50 at 4 × 768² per GPU on 2 V100s (fp32), scaled by the cell's forward FLOPs
per image (deeplab.model.model_info) and its images per GPU. GPU-hours = s/iteration × iterations × GPUs per
run. The run-to-run sd for the power comes from --sd, else the store's seeds (real data only), else the
public evidence (the fork plateaus' validation noise).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from deeplab.data import cost as data_cost
from experiments.resources import gpus_per_run, grid_key, grid_label, memory_lines
from experiments.spec import RunSpec, SweepSpec, expand_grid

if TYPE_CHECKING:
    from analysis.sequential_sim import Simulated
    from experiments.sequential import SequentialDesign

ANCHOR_S_PER_IT = 0.82  # the fork's log: ~82 s per 100 iterations
ANCHOR = (
    "the seed fork's 0.82 s/iteration (res50, 4 × 768² per GPU, 2 V100, fp32; training only: validations and "
    "checkpoints come on top)"
)
ANCHOR_CROP, ANCHOR_BATCH = (768, 768), 4
DEFAULT_MARGIN = 0.5
REPLICATES = 20_000  # per simulated design figure: se ≤ 0.0036 on a probability


@dataclass
class Cell:
    values: dict[str, Any]  # grid values except the seed
    runs: list[RunSpec]
    s_per_it: float
    source: str

    @property
    def iterations(self) -> int:
        return self.runs[0].config.train.iterations

    def gpu_hours(self, gpus: int) -> float:
        return self.s_per_it * self.iterations * gpus * len(self.runs) / 3600


@dataclass
class Comparison:
    values: dict[str, Any]  # grid values except backbone and seed
    n_a: int
    n_b: int
    power: float
    power_at_delta: float


@dataclass
class Plan:
    spec: SweepSpec
    gpus: int
    cells: list[Cell]
    margin: float
    margin_source: str
    sd: float
    sd_source: str
    delta: float
    alpha: float
    comparisons: list[Comparison] = field(default_factory=list)
    seeds_needed: int | None = None  # per backbone per comparison, for 80% power at Δ = 0
    seeds_needed_at_delta: int | None = None
    notes: list[str] = field(default_factory=list)
    designs: Designs | None = None  # fixed vs sequential over true Δ and sd (plan_designs)

    @property
    def gpu_hours(self) -> float:
        return sum(c.gpu_hours(self.gpus) for c in self.cells)


_FLOPS: dict[tuple[str, tuple[int, int]], int] = {}  # model_info builds the model: seconds per config


def forward_flops(model_cfg: Any, crop: tuple[int, int]) -> int:
    """FLOPs of one forward pass at ``crop`` (deeplab.model.model_info), cached per process."""
    from deeplab.model import model_info

    key = (repr(model_cfg), tuple(crop))
    if key not in _FLOPS:
        _FLOPS[key] = model_info(model_cfg, tuple(crop))["flops_per_forward"]
    return _FLOPS[key]


def _anchor(run: RunSpec) -> tuple[float, str]:
    """Seconds per iteration scaled from the fork's anchor by forward FLOPs per image and images per GPU."""
    cfg = run.config
    anchor_model = dataclasses.replace(cfg.model, backbone="resnet50", output_stride=16, image_pooling=False)
    ratio = forward_flops(cfg.model, tuple(cfg.data.crop_size)) / forward_flops(anchor_model, ANCHOR_CROP)
    batch = cfg.data.batch_size_per_gpu / ANCHOR_BATCH
    amp = "" if cfg.train.amp == "none" else f"; {cfg.train.amp} autocast would be faster"
    return ANCHOR_S_PER_IT * ratio * batch, f"anchor × FLOPs {ratio:.2f} × images/GPU {batch:.2f}{amp}"


@functools.cache
def _evidence_sd() -> float:
    from analysis.evidence import evidence_run_sd

    return evidence_run_sd()


def _store(spec: SweepSpec, uri: str | None, notes: list[str]) -> Any:
    """The sweep's runs frame, or None (with a note saying why)."""
    from analysis.errors import AnalysisError
    from analysis.frames import runs_frame
    from deeplab.errors import DeeplabError
    from experiments.store import check_reachable, resolve_tracking_uri

    try:
        uri = resolve_tracking_uri(uri or spec.tracking_uri)
        check_reachable(uri)
        return runs_frame(uri, spec.experiment)
    except (AnalysisError, DeeplabError) as err:
        notes.append(f"store: nothing measured ({err})")
        return None


def _measured(spec: SweepSpec, runs: list[RunSpec], frame: Any, notes: list[str]) -> dict[tuple, list[float]]:
    """Measured s/iteration of finished GPU runs of this grid, by cell config (schedule and seed aside)."""
    by_hash = {r.config_hash: r for r in runs}
    found: dict[tuple, list[float]] = {}
    if frame is None:
        return found
    mine = frame[frame.config_hash.isin(by_hash) & (frame.status == "FINISHED")]
    gpu = mine[mine.device == "cuda"]
    if len(mine) > len(gpu):
        notes.append(f"store: {len(mine) - len(gpu)} finished run(s) not on a GPU, not used for GPU-hours")
    for row in gpu.itertuples():
        run = by_hash[row.config_hash]
        key = grid_key(run.values, {"train.iterations", "train.seed"})
        found.setdefault(key, []).append(3600 * row.wall_hours / run.config.train.iterations)
    return found


def _store_sd(runs: list[RunSpec], frame: Any, notes: list[str]) -> float | None:
    """Pooled sd over seeds (points) of the store's finished real-data runs of this grid, cell by cell."""
    if frame is None:
        return None
    by_hash = {r.config_hash: r for r in runs}
    mine = frame[frame.config_hash.isin(by_hash) & (frame.status == "FINISHED")].dropna(subset=["miou"])
    if mine.synthetic.any():
        notes.append("store: synthetic runs say nothing about Cityscapes' run-to-run noise; not used for the sd")
        return None
    cells = mine.groupby(mine.config_hash.map(lambda h: grid_key(by_hash[h].values, {"train.seed"}))).miou
    dof = sum(len(g) - 1 for _, g in cells if len(g) > 1)
    if not dof:
        return None
    return math.sqrt(sum((len(g) - 1) * g.var(ddof=1) for _, g in cells if len(g) > 1) / dof)


def cell_costs(spec: SweepSpec, runs: list[RunSpec], frame: Any, notes: list[str]) -> list[Cell]:
    """The grid's runs by cell (seed aside) with their seconds per iteration: the median of the store's finished
    GPU runs of the cell's config (``frame``: analysis.frames.runs_frame, or None), else the fork's anchor scaled."""
    measured = _measured(spec, runs, frame, notes)
    groups: dict[tuple, list[RunSpec]] = {}
    for run in runs:
        groups.setdefault(grid_key(run.values, {"train.seed"}), []).append(run)
    cells = []
    for members in groups.values():
        times = measured.get(grid_key(members[0].values, {"train.iterations", "train.seed"}))
        if times:
            s_per_it, source = sorted(times)[len(times) // 2], f"measured: median of {len(times)} finished GPU run(s)"
        else:
            s_per_it, source = _anchor(members[0])
        values = {k: v for k, v in members[0].values.items() if k != "train.seed"}
        cells.append(Cell(values, members, s_per_it, source))
    return cells


def plan_study(
    spec: SweepSpec,
    tracking_uri: str | None = None,
    *,
    sd: float | None = None,
    margin: float | None = None,
    delta: float = 0.25,
    alpha: float = 0.05,
    replicates: int = REPLICATES,
) -> Plan:
    """Cost and power of a sweep spec (see the module docstring for where each number comes from)."""
    from analysis.power import seeds_for_power, tost_power

    runs, notes = expand_grid(spec), []
    frame = _store(spec, tracking_uri, notes)
    cells = cell_costs(spec, runs, frame, notes)
    if margin is not None:
        margin_source = "--margin"
    elif spec.margin is not None:
        margin, margin_source = spec.margin, "the spec's analysis.margin"
    else:
        margin, margin_source = DEFAULT_MARGIN, "default: the spec has no analysis.margin"
    store_sd = _store_sd(runs, frame, notes)
    if sd is not None:
        sd_source = "--sd"
    elif (sd := store_sd) is not None:
        sd_source = "the store: pooled over seeds of this grid's finished runs"
    else:
        sd, sd_source = _evidence_sd(), "the evidence: the seed fork plateaus' validation noise (analysis evidence)"
    gpus = gpus_per_run(spec)
    plan = Plan(spec, gpus, cells, margin, margin_source, sd, sd_source, delta, alpha, notes=notes)
    pairs: dict[tuple, dict[str, Cell]] = {}
    for cell in cells:
        pairs.setdefault(grid_key(cell.values, {"model.backbone"}), {})[cell.values.get("model.backbone", "")] = cell
    for both in pairs.values():
        if {"resnet50", "resnet101"} <= set(both):
            n_a, n_b = len(both["resnet50"].runs), len(both["resnet101"].runs)
            values = {k: v for k, v in both["resnet50"].values.items() if k != "model.backbone"}
            power = tost_power(n_a, n_b, sd, margin, 0.0, alpha)
            plan.comparisons.append(Comparison(values, n_a, n_b, power, tost_power(n_a, n_b, sd, margin, delta, alpha)))
    plan.seeds_needed = seeds_for_power(sd, margin, 0.0, alpha)
    plan.seeds_needed_at_delta = seeds_for_power(sd, margin, delta, alpha)
    plan.designs = plan_designs(plan, store_sd, replicates)
    return plan


def format_plan(plan: Plan) -> str:
    """The plan as the lines `analysis plan` prints."""
    spec, runs = plan.spec, sum(len(c.runs) for c in plan.cells)
    seeds = sorted({len(c.runs) for c in plan.cells})
    iterations = sum(c.iterations * len(c.runs) for c in plan.cells)
    lines = [
        f"plan for sweep {spec.name} ({spec.path})",
        f"  {runs} runs: {len(plan.cells)} cells × {'/'.join(map(str, seeds))} seeds, {plan.gpus} GPUs per run "
        f"({spec.slurm.nodes} node × {spec.slurm.gpus_per_node}), {iterations:,} iterations in all",
        "",
        f"  {'cell':<36} {'seeds':>6} {'iterations':>11} {'s/iter':>7} {'GPU-hours':>10}  s/iter from",
    ]
    for c in plan.cells:
        lines.append(
            f"  {grid_label(c.values):<36} {len(c.runs):>6} {c.iterations:>11} {c.s_per_it:>7.2f} "
            f"{c.gpu_hours(plan.gpus):>10.1f}  {c.source}"
        )
    longest = max(plan.cells, key=lambda c: c.s_per_it * c.iterations)
    fastest = min(plan.cells, key=lambda c: c.s_per_it)
    if any(c.source.startswith("anchor") for c in plan.cells):
        lines.append(f"  anchor: {ANCHOR}")
    lines += [
        f"  {'total':<36} {runs:>6} {'':>11} {'':>7} {plan.gpu_hours:>10.1f}",
        f"  longest run: {longest.s_per_it * longest.iterations / 3600:.1f} h of wall time "
        f"({grid_label(longest.values)})",
        f"  {data_cost.describe(fastest.runs[0].config.data, fastest.s_per_it, 'the fastest cell')}",
        "",
        f"equivalence: Welch TOST res50 vs res101 at ±{plan.margin:g} points ({plan.margin_source}), "
        f"α = {plan.alpha:g}",
        f"  run-to-run sd {plan.sd:.2f} points, from {plan.sd_source}",
    ]
    if not plan.comparisons:
        lines.append("  the grid does not pair resnet50 with resnet101 cells: no comparison to power")
    for c in plan.comparisons:
        lines.append(
            f"  {grid_label(c.values)}: {c.n_a} vs {c.n_b} seeds → power {c.power:.2f} at a true Δ of 0, "
            f"{c.power_at_delta:.2f} at Δ = {plan.delta:g}"
        )
    lines.append(_needed(plan))
    lines += format_designs(plan.designs) if plan.designs else []
    lines += ["", *memory_lines([r for c in plan.cells for r in c.runs], plan.gpus)]
    lines += [f"  note: {note}" for note in plan.notes]
    return "\n".join(lines)


def _needed(plan: Plan) -> str:
    at_delta = plan.seeds_needed_at_delta
    also = f" ({at_delta} at Δ = {plan.delta:g})" if at_delta else f" (none suffices at Δ = {plan.delta:g})"
    if plan.seeds_needed is None:
        return f"  no number of seeds up to 500 gives 80% power at ±{plan.margin:g} with sd {plan.sd:.2f}"
    text = f"  80% power at Δ = 0 needs {plan.seeds_needed} seeds per backbone per comparison{also}"
    weak = [c for c in plan.comparisons if c.power < 0.8]
    if not weak:
        return text + f": this grid has them (≥ 80% power in all {len(plan.comparisons)} comparisons)"
    per_seed = sum(c.gpu_hours(plan.gpus) / len(c.runs) for c in plan.cells if "model.backbone" in c.values)
    return (
        text + f"\n  → UNDERPOWERED: {len(weak)} of {len(plan.comparisons)} comparisons below 80%; this grid cannot "
        f"show ±{plan.margin:g} equivalence. With {plan.seeds_needed} seeds per cell it would take "
        f"{plan.seeds_needed * per_seed:,.0f} GPU-hours"
    )


# ---- fixed vs sequential design, in GPU-hours (issue 19 §2) -------------------------------------------------
DELTAS = (0.0, 0.25, 0.5, 1.0)  # true |res101 − res50| in points; the evidence's pooled gap is added
SDS = (
    (0.3, "assumed: a quieter recipe than the evidence suggests"),
    (0.7, "one public re-run: mmsegmentation #87 (78.59 vs the table's 79.61) read as seed noise"),
)


@dataclass
class DesignRow:
    sd: float
    delta: float
    fixed: Simulated
    sequential: Simulated | None
    paired: dict[float, tuple[float, float]] = field(default_factory=dict)  # ρ → P(equiv.): Welch, paired


@dataclass
class Designs:
    fixed: SequentialDesign  # one look at the grid's seeds
    sequential: SequentialDesign | None
    seed_cost: float  # GPU-hours of one more seed of both backbones, all comparisons together
    sd_sources: dict[float, str]
    gap: float
    rows: list[DesignRow]
    replicates: int


@functools.cache
def _evidence_gap() -> float:
    """The public evidence's pooled res101 − res50 gap (points; analysis evidence, random effects)."""
    from analysis.evidence import gather_evidence

    return gather_evidence().pooled.random


def plan_designs(plan: Plan, store_sd: float | None, replicates: int = REPLICATES) -> Designs | None:
    """The fixed design and the spec's sequential one simulated over true Δ and sd (None: nothing to compare)."""
    from analysis.sequential_sim import simulate
    from experiments.sequential import SequentialDesign

    spec = plan.spec
    if not plan.comparisons:
        return None
    compared = [c for c in plan.cells if c.values.get("model.backbone") in ("resnet50", "resnet101")]
    seed_cost = sum(c.gpu_hours(plan.gpus) / len(c.runs) for c in compared)
    n = plan.comparisons[0].n_a
    common = {"margin": plan.margin, "alpha": plan.alpha, "paired": spec.paired}
    fixed = SequentialDesign((n,), **common)
    seq = spec.sequential
    sequential = None if seq is None else SequentialDesign(seq.looks, **common, **_design_fields(seq))
    sds = {
        0.3: SDS[0][1],
        round(_evidence_sd(), 2): "the evidence: the fork plateaus' validation noise",
        0.7: SDS[1][1],
    }
    if store_sd is not None:
        sds[round(store_sd, 2)] = "the store: pooled over seeds of this grid's finished runs"
    sds.setdefault(round(plan.sd, 2), plan.sd_source)
    gap = round(abs(_evidence_gap()), 2)
    rows = []
    for sd in sorted(sds):
        for delta in sorted({*DELTAS, gap}):
            run = functools.partial(simulate, delta=delta, sd_a=sd, replicates=replicates, seed=1)
            row = DesignRow(sd, delta, run(fixed), run(sequential) if sequential else None)
            if spec.paired and sequential and delta in (0.0, gap):
                welch = dataclasses.replace(sequential, paired=False)
                for rho in (0.0, 0.3, 0.6):  # Welch ignores the correlation, but its power moves with it too
                    both = run(welch, correlation=rho).p_equivalent, run(sequential, correlation=rho).p_equivalent
                    row.paired[rho] = both
            rows.append(row)
    return Designs(fixed, sequential, seed_cost, sds, gap, rows, replicates)


def _design_fields(seq: Any) -> dict[str, Any]:
    return {k: getattr(seq, k) for k in ("spending", "futility", "max_seeds", "planning_sd")}


def format_designs(d: Designs) -> list[str]:
    """The design comparison as `analysis plan` prints it."""
    fixed_n, seq = d.fixed.looks[0], d.sequential
    lines = ["", f"designs, in GPU-hours ({d.seed_cost:.1f} per seed of both backbones, every comparison included):"]
    test = "paired t (ρ 0 in the table; by ρ below)" if d.fixed.paired else "Welch"
    lines.append(f"  fixed: {fixed_n} seeds per backbone, {test} TOST at α = {d.fixed.alpha:g} per side")
    if seq is None:
        lines.append("  sequential: none in the spec (analysis.sequential: {looks: [...], spending: obrien-fleming})")
    else:
        pilot = f", pilot may raise the maximum to {seq.cap} when the first look's sd exceeds {seq.planning_sd}"
        lines.append(
            f"  sequential: looks at {'/'.join(map(str, seq.looks))} seeds, {seq.spending} spending "
            f"(nominal p {', '.join(f'{p:.4f}' for p in seq.nominal())})"
            f"{', futility: stop when |Δ̂| ≥ margin from look 2' if seq.futility else ''}{pilot if seq.pilot else ''}"
        )
    lines += [
        f"  P(equiv.) = P(equivalence shown); at |Δ| ≥ {d.fixed.margin:g} it is the error rate. Simulated, "
        f"{d.replicates:,} replicates each (se ≤ {0.5 / math.sqrt(d.replicates):.4f}); Δ sign-symmetric; "
        f"{d.gap:g} = the evidence's pooled gap",
        f"  {'sd':>5} {'|Δ|':>5} │ {'fixed P(equiv.)':>15} {'GPU-h':>7} │ {'seq. P(equiv.)':>14} {'E[GPU-h]':>9} "
        f"{'max GPU-h':>9} {'E[seeds]':>8}",
    ]
    for r in d.rows:
        text = f"  {r.sd:>5.2f} {r.delta:>5.2f} │ {r.fixed.p_equivalent:>15.3f} {fixed_n * d.seed_cost:>7,.0f} │"
        if r.sequential is not None:
            text += (
                f" {r.sequential.p_equivalent:>14.3f} {r.sequential.expected_seeds * d.seed_cost:>9,.0f} "
                f"{seq.cap * d.seed_cost:>9,.0f} {r.sequential.expected_seeds:>8.1f}"
            )
        lines.append(text)
    lines += [f"  sd {sd:.2f}: {source}" for sd, source in sorted(d.sd_sources.items())]
    paired = [r for r in d.rows if r.paired]
    if paired:
        lines.append("  analysis.paired: sequential P(equiv.), Welch / paired, by the correlation ρ of paired seeds")
        for r in paired:
            cells = ", ".join(f"ρ {rho:g}: {welch:.3f} / {both:.3f}" for rho, (welch, both) in r.paired.items())
            lines.append(f"    sd {r.sd:.2f} |Δ| {r.delta:.2f}: {cells}")
    return lines
