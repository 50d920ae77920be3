"""A sequential study that moves itself: at each look, analyse the seeds both backbones finished, record the look on
the sweep's parent run, then submit the next look's seeds or close the study with its decision.

The decision rule is experiments.sequential's, the study design's own (the report reads it too). The store is the only
state: ``advance`` recomputes every look from the runs' final val mIoU, so it can run at any time, as often as
wanted, from several processes (the sweep's lock serialises the recording; submission skips runs whose jobs
live). Δ = the grid's second backbone − its first (res101 − res50 for the shipped study), seeds in grid order.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deeplab.tracking import VAL_MIOU
from experiments.errors import ExperimentsError
from experiments.jobs import JobRecord, alive, read_job, sweep_lock, write_job
from experiments.spec import RunSpec, SweepSpec, expand_grid, wide_axis

if TYPE_CHECKING:
    from experiments.sequential import Look, SequentialDesign
    from experiments.store import ChildRun

STATE_TAG = "study.state"  # continue | equivalent | not equivalent | stalled | cancelled
DECISION_TAG = "study.decision"  # the decision so far, one line
SEEDS_TAG = "study.seeds"  # seeds per backbone the current look needs
CANCELLED_TAG = "study.cancelled"  # set by `experiments cancel`; `experiments sweep` clears it
RESUBMITS_TAG = "study.resubmits"  # on a child run: how often advance resubmitted it after a failure
LOOK_METRICS = ("study/delta", "study/rci_low", "study/rci_high")  # on the parent, step = seeds per backbone
MAX_RESUBMITS = 2  # a run failing a third time needs a person, not a fourth job
ADVANCE_JOB = ".advance_job"  # the pending SLURM job that runs advance after the look's array
CLOSED = ("equivalent", "not equivalent")


def look_tag(k: int) -> str:
    return f"study.look.{k}"


def study_seeds(spec: SweepSpec, n: int) -> list[int]:
    """The first ``n`` seeds of the study: the grid's, then the integers after its largest (a pilot raise)."""
    seeds = list(spec.grid["train.seed"])
    extra = max(seeds) + 1
    while len(seeds) < n:
        seeds.append(extra)
        extra += 1
    return seeds[:n]


def with_seeds(spec: SweepSpec, n: int) -> SweepSpec:
    """The spec whose grid holds the study's first ``n`` seeds."""
    return dataclasses.replace(spec, grid={**spec.grid, "train.seed": study_seeds(spec, n)})


def design_of(spec: SweepSpec) -> SequentialDesign:
    from experiments.sequential import SequentialDesign

    s = spec.sequential
    assert s is not None and spec.margin is not None  # load_spec: a sequential spec has both
    return SequentialDesign(
        s.looks, spec.margin, spending=s.spending, futility=s.futility, max_seeds=s.max_seeds,
        planning_sd=s.planning_sd, paired=spec.paired,
    )  # fmt: skip


def study_cap(spec: SweepSpec) -> int:
    """The most seeds per backbone the study may ask for (``SequentialDesign.cap`` of its design)."""
    assert spec.sequential is not None
    return max(spec.sequential.max_seeds or 0, spec.sequential.looks[-1])


def spec_runs(spec: SweepSpec) -> list[RunSpec]:
    """Every run the spec can ask for: the grid's, and for a sequential study up to its most seeds."""
    return expand_grid(spec) if spec.sequential is None else expand_grid(with_seeds(spec, study_cap(spec)))


@dataclass
class Assessment:
    """Where the study stands: the looks the finished seeds reach, the decision, and the current look's runs."""

    looks: list[Look]
    decision: str
    state: str  # continue, equivalent, not equivalent, stalled or cancelled
    seeds: int  # seeds per backbone the current look needs (the last look's when closed)
    runs: list[RunSpec]  # the current look's runs, both backbones
    finished: int = 0  # of those runs
    failed: list[RunSpec] = field(default_factory=list)  # of those runs: FAILED or KILLED, to resubmit

    @property
    def closed(self) -> bool:
        return self.state in CLOSED

    def line(self) -> str:
        if self.closed or self.state in ("stalled", "cancelled"):
            return f"study {self.state}: {self.decision}"
        line = (
            f"study: look {len(self.looks) + 1} needs {self.seeds} seeds per backbone: "
            f"{self.finished}/{len(self.runs)} runs FINISHED"
        )
        if self.looks:
            last = self.looks[-1]
            line += f"; look {last.k}: Δ {last.delta:+.2f}, repeated CI {last.rci_low:+.2f}…{last.rci_high:+.2f}"
        return line


def _final(child: ChildRun | None) -> float | None:
    if child is None or child.status != "FINISHED":
        return None
    return child.metrics.get(VAL_MIOU)


def assess(spec: SweepSpec, children: dict[str, ChildRun], parent_tags: dict[str, str] | None = None) -> Assessment:
    """The looks the seeds finished by both backbones reach (in seed order), and what the study needs next."""
    from experiments.sequential import analyse, decision

    design = design_of(spec)
    first, second = spec.grid["model.backbone"]
    runs = spec_runs(spec)
    by_seed = {(r.config.model.backbone, r.config.train.seed): r for r in runs}
    seeds = study_seeds(spec, design.cap)
    a, b = [], []
    for seed in seeds:
        finals = [_final(children.get(by_seed[backbone, seed].config_hash)) for backbone in (second, first)]
        if None in finals:
            break
        bad = [by_seed[bb, seed].name for bb, v in zip((second, first), finals, strict=True) if not math.isfinite(v)]
        if bad:
            return Assessment([], f"run {bad[0]} FINISHED with a non-finite {VAL_MIOU}: look at it", "stalled", 0, [])
        a.append(finals[0])
        b.append(finals[1])
    looks = analyse(a, b, design) if len(a) >= design.looks[0] else []
    verdict = decision(looks, design)
    current = design.after_pilot(looks[0].pooled_sd) if looks else design
    if looks and (looks[-1].equivalent or looks[-1].futile or looks[-1].k == len(current.looks)):
        state = "equivalent" if looks[-1].equivalent else "not equivalent"
        return Assessment(looks, verdict, state, looks[-1].n, [])
    need = current.looks[len(looks)]
    look_runs = [by_seed[backbone, seed] for seed in seeds[:need] for backbone in (first, second)]
    statuses = [children[r.config_hash].status if r.config_hash in children else None for r in look_runs]
    failed = [r for r, s in zip(look_runs, statuses, strict=True) if s in ("FAILED", "KILLED")]
    assessment = Assessment(looks, verdict, "continue", need, look_runs, statuses.count("FINISHED"), failed)
    if parent_tags and CANCELLED_TAG in parent_tags:
        assessment.state = "cancelled"
        assessment.decision = f"{parent_tags[CANCELLED_TAG]}; `experiments sweep {spec.path}` resumes it"
    else:
        tired = [r for r in failed if int(children[r.config_hash].tags.get(RESUBMITS_TAG, "0")) >= MAX_RESUBMITS]
        if tired:
            why = children[tired[0].config_hash].tags.get("failure_reason", "no reason recorded")
            assessment.state = "stalled"
            assessment.decision = (
                f"run {tired[0].name} failed {MAX_RESUBMITS + 1} times ({why[:200]}); fix the cause, then "
                f"`experiments sweep {spec.path}` submits it again"
            )
    return assessment


def _look_json(look: Look) -> str:
    fields = dataclasses.asdict(look)
    return json.dumps({k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in fields.items()})


def record(uri: str, folder: Path, parent_tags: dict[str, str], assessment: Assessment) -> list[Look]:
    """Record each look not yet on the parent run in its record (a tag of its figures, and Δ and its repeated CI
    as metrics at step = seeds per backbone) and the study's state, then mirror it; returns the looks new now."""
    from experiments.store import PARENT_DIR, append_points, tag_run

    new = [look for look in assessment.looks if look_tag(look.k) not in parent_tags]
    for look in new:
        append_points(folder / PARENT_DIR, dict(zip(LOOK_METRICS, (look.delta, look.rci_low, look.rci_high),
                                                    strict=True)), look.n)  # fmt: skip
    tags = {look_tag(look.k): _look_json(look) for look in new}
    tags |= {STATE_TAG: assessment.state, DECISION_TAG: assessment.decision[:4000], SEEDS_TAG: str(assessment.seeds)}
    tag_run(uri, folder / PARENT_DIR, tags)
    return new


def _parent(spec: SweepSpec, uri: str) -> tuple[str | None, dict[str, str], dict[str, ChildRun]]:
    from experiments.store import child_runs, find_experiment, parent_run, run_tags, sqlite_path

    if (db := sqlite_path(uri)) is not None and not db.exists():  # nothing submitted yet; never created here
        return None, {}, {}
    experiment_id = find_experiment(uri, spec.experiment)
    parent = parent_run(uri, experiment_id, spec.name) if experiment_id else None
    if parent is None:
        return None, {}, {}
    return parent, run_tags(uri, parent), child_runs(uri, experiment_id, parent)


def read_study(spec: SweepSpec, uri: str) -> Assessment:
    """The study as the store shows it now; reads only."""
    _, tags, children = _parent(spec, uri)
    return assess(spec, children, tags)


def _assess_and_record(spec: SweepSpec, uri: str, resume: bool) -> Assessment:
    """Under the sweep's lock: runs of dead jobs set right, the study assessed, new looks recorded, the failed runs
    about to be resubmitted counted (``resume``: a person asked, so the counts and a cancel are cleared)."""
    from experiments.reconcile import reconcile
    from experiments.store import PARENT_DIR, tag_run

    folder = spec.runs_root / spec.name
    run_dirs = {r.config_hash: r.run_dir for r in spec_runs(spec)}
    with sweep_lock(folder):
        parent, tags, children = _parent(spec, uri)
        if parent is None:
            return assess(spec, {}, {})
        if resume and CANCELLED_TAG in tags:
            tag_run(uri, folder / PARENT_DIR, {CANCELLED_TAG: None})
            tags.pop(CANCELLED_TAG)
        for fixed in reconcile(uri, spec_runs(spec), children):
            print(f"reconciled {fixed.line}", flush=True)
            children[fixed.config_hash].status = fixed.status
        if resume:
            for digest, child in children.items():
                if child.status in ("FAILED", "KILLED") and RESUBMITS_TAG in child.tags and digest in run_dirs:
                    tag_run(uri, run_dirs[digest], {RESUBMITS_TAG: None})
                    child.tags.pop(RESUBMITS_TAG)
        assessment = assess(spec, children, tags)
        for look in record(uri, folder, tags, assessment):
            print(
                f"look {look.k} ({look.n} seeds per backbone): Δ {look.delta:+.2f}, repeated CI "
                f"{look.rci_low:+.2f}…{look.rci_high:+.2f} (nominal level {look.nominal:.4f})",
                flush=True,
            )
        if assessment.state == "continue":
            for r in assessment.failed:
                child = children[r.config_hash]
                tag_run(uri, r.run_dir, {RESUBMITS_TAG: str(int(child.tags.get(RESUBMITS_TAG, "0")) + 1)})
    return assessment


def advance(
    spec: SweepSpec,
    executor: str = "auto",
    *,
    tracking_uri: str | None = None,
    dry_run: bool = False,
    check_data: bool = True,
    resume: bool = False,
) -> tuple[Assessment, list[Any]]:
    """Analyse the looks the finished runs reach, record them on the parent run, then submit what the current
    look still needs (its missing and failed runs) or close the study; returns the assessment and the jobs."""
    from experiments.store import check_reachable, resolve_tracking_uri
    from experiments.sweep import choose_executor, submit

    if spec.sequential is None:
        raise ExperimentsError(f"sweep spec {spec.path}: no analysis.sequential section, so no looks to advance")
    if wide := wide_axis(spec):
        raise ExperimentsError(
            f"sweep spec {spec.path}: grid.{wide} has {len(spec.grid[wide])} values, but `advance` steps one "
            "configuration of each backbone; make one spec per value"
        )
    kind = choose_executor(executor)
    uri = resolve_tracking_uri(tracking_uri or spec.tracking_uri)
    check_reachable(uri)
    if dry_run:
        assessment = read_study(spec, uri)
        print(assessment.line())
        if assessment.state == "continue":
            submit(with_seeds(spec, assessment.seeds), kind, dry_run=True, tracking_uri=uri)
        return assessment, []
    assessment = _assess_and_record(spec, uri, resume)
    print(assessment.line(), flush=True)
    if assessment.state == "stalled":
        raise ExperimentsError(f"study {spec.name} stalled: {assessment.decision}")
    if assessment.state != "continue":
        return assessment, []
    jobs = submit(with_seeds(spec, assessment.seeds), kind, tracking_uri=uri, check_data=check_data)
    if kind == "slurm":
        chain(spec, uri, assessment)
    return assessment, jobs


def _array_id(job_id: str) -> str:
    return job_id.split("_", 1)[0]


def chain(spec: SweepSpec, uri: str, assessment: Assessment) -> str | None:
    """Queue a small CPU job that runs ``advance`` once every live job of the look has ended (afterany), unless one
    is queued already; returns its job id."""
    folder = spec.runs_root / spec.name
    queued = advance_job(folder)
    mine = os.environ.get("SLURM_JOB_ID")
    if queued is not None and queued.job_id != mine and alive({"a": queued}).get("a") is not False:
        return None
    records = {r.config_hash: rec for r in assessment.runs if (rec := read_job(r.run_dir)) and rec.kind == "slurm"}
    living = alive(records)
    after = sorted({_array_id(rec.job_id) for key, rec in records.items() if living.get(key) is not False})
    if not after:
        return None
    job_id = submit_advance_job(spec, uri, after)
    write_job(folder, JobRecord("slurm", job_id, submitted=time.time()), ADVANCE_JOB)
    print(f"queued advance job {job_id}: it runs after job(s) {', '.join(after)} end", flush=True)
    return job_id


def advance_job(folder: Path) -> JobRecord | None:
    """The advance job last queued for the sweep in ``folder``, if any."""
    return read_job(folder, ADVANCE_JOB)


@dataclass
class AdvanceJob:
    """What the dependency job runs: ``advance`` on the spec, submitting to SLURM (no data check: the sweep did)."""

    spec_path: str
    tracking_uri: str

    def __call__(self) -> str:
        from experiments.spec import load_spec

        assessment, _ = advance(load_spec(self.spec_path), "slurm", tracking_uri=self.tracking_uri, check_data=False)
        return assessment.line()


def submit_advance_job(spec: SweepSpec, uri: str, after: list[str]) -> str:
    """sbatch the advance job (1 CPU, no GPU, the spec's partition/account/qos) with afterany on ``after``."""
    import submitit

    folder = spec.runs_root / spec.name / ".submitit"
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    s = spec.slurm
    extra = {f"slurm_{k}": getattr(s, k) for k in ("partition", "account", "qos") if getattr(s, k)}
    executor.update_parameters(
        name=f"{spec.name}-advance", nodes=1, tasks_per_node=1, cpus_per_task=1, slurm_mem="4G", timeout_min=30,
        slurm_additional_parameters={"dependency": "afterany:" + ":".join(after)}, **extra,
    )  # fmt: skip
    return str(executor.submit(AdvanceJob(str(spec.path), uri)).job_id)


def follow(spec: SweepSpec, *, tracking_uri: str | None = None, poll_s: float = 30.0) -> Assessment:
    """``advance --follow`` on the local executor: each look's runs here, one after the other, until the study
    closes (or stalls)."""
    from experiments.follow import RunsFailed

    check_data = True  # a real dataset is decoded once, before the first look
    while True:
        try:
            assessment, jobs = advance(spec, "local", tracking_uri=tracking_uri, check_data=check_data)
            check_data = False
        except RunsFailed as err:  # resubmitted at the next round, at most MAX_RESUBMITS times
            print(f"{err}; advancing again", flush=True)
            continue
        if assessment.state != "continue":
            return assessment
        if not jobs:  # the look's runs are trained elsewhere: wait for them
            time.sleep(poll_s)
