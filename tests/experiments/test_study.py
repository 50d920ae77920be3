"""`experiments advance` on a real sqlite store filled with recorded runs (no training): every branch of the
sequential study's decision, recorded once on the parent run, with the next look's seeds submitted once.

The debug executor stands in for a scheduler here: its jobs are recorded in the run directories as living in this
process and never run, so a submitted look stays "running" until a test finishes its runs by hand."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from tiny import REPO, TINY

from deeplab.tracking import VAL_MIOU, JsonlTracker
from experiments.errors import ExperimentsError
from experiments.jobs import JOB_ID_FILE
from experiments.spec import SweepSpec, load_spec
from experiments.status import status_report
from experiments.store import child_runs, find_experiment, mirror_run, parent_run, set_status
from experiments.study import (
    CANCELLED_TAG,
    DECISION_TAG,
    RESUBMITS_TAG,
    SEEDS_TAG,
    STATE_TAG,
    advance,
    look_tag,
    with_seeds,
)
from experiments.sweep import plan

R50 = [70.0, 70.4, 69.6, 70.1, 69.9, 70.0]
EQUAL = [70.1, 70.5, 69.7, 70.15, 69.95, 70.05]  # res101: Δ ≈ +0.08, equivalence shown at look 2
AHEAD = [v + 1.0 for v in EQUAL]  # res101 a point ahead: futility at look 2


def _spec(tmp_path: Path, sequential: str = "{looks: [3, 6], futility: true}") -> SweepSpec:
    path = tmp_path / "study.yaml"
    path.write_text(
        f"name: study_{uuid.uuid4().hex[:8]}\nbase: {TINY}\nruns_root: runs\n"
        f"tracking: {{uri: 'sqlite:///{tmp_path / 'mlflow.db'}'}}\n"
        "grid:\n  model.backbone: [resnet50, resnet101]\n  train.seed: [0, 1, 2, 3, 4, 5]\n"
        f"overrides:\n  data.root: {tmp_path / 'data'}\n  train.iterations: 6\n  schedule.warmup_iters: 2\n"
        f"analysis:\n  margin: 0.5\n  sequential: {sequential}\n"
    )
    return load_spec(path)


def _children(spec: SweepSpec) -> dict[tuple[str, int], object]:
    uri = spec.tracking_uri
    eid = find_experiment(uri, spec.experiment)
    return {
        (c.tags["backbone"], int(c.tags["seed"])): c
        for c in child_runs(uri, eid, parent_run(uri, eid, spec.name)).values()
    }


def _finish(spec: SweepSpec, seeds: range, r101: list[float], status: dict[tuple[str, int], str] | None = None) -> None:
    """What the seeds' jobs would leave: each run FINISHED with its final val mIoU (or the state in ``status``)."""
    planned = plan(with_seeds(spec, seeds.stop), spec.tracking_uri, dry_run=False)
    for p in planned:
        backbone, seed = p.run.config.model.backbone, p.run.config.train.seed
        if seed not in seeds:
            continue
        value = (r101 if backbone == "resnet101" else R50)[seed]
        record = JsonlTracker(p.run.run_dir)  # the job's record, then its mirror
        record.log_metrics({VAL_MIOU: value}, 6)
        record.close((status or {}).get((backbone, seed), "FINISHED"))
        mirror_run(spec.tracking_uri, p.run.run_dir)
        (p.run.run_dir / JOB_ID_FILE).unlink(missing_ok=True)  # its job has ended


def _parent(spec: SweepSpec) -> tuple[dict[str, str], MlflowClient, str]:
    uri = spec.tracking_uri
    pid = parent_run(uri, find_experiment(uri, spec.experiment), spec.name)
    client = MlflowClient(uri)
    return client.get_run(pid).data.tags, client, pid


def test_advance_records_each_look_once_and_submits_the_next_look_once_when_run_twice_at_once(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    _finish(spec, range(3), EQUAL)
    results: list[tuple] = []
    both = [threading.Thread(target=lambda: results.append(advance(spec, "debug", check_data=False))) for _ in "ab"]
    for t in both:
        t.start()
    for t in both:
        t.join()
    assert len(results) == 2
    assert sorted(len(jobs) for _, jobs in results) == [0, 6], "the second advance found the first's jobs alive"
    tags, client, pid = _parent(spec)
    assert tags[STATE_TAG] == "continue" and tags[SEEDS_TAG] == "6" and look_tag(1) in tags and look_tag(2) not in tags
    assert [m.step for m in client.get_metric_history(pid, "study/delta")] == [3], "look 1 recorded once"
    runs = _children(spec)
    assert len(runs) == 12 and all(
        runs[b, s].status == "SCHEDULED" for b in ("resnet50", "resnet101") for s in (3, 4, 5)
    )

    again, jobs = advance(spec, "debug", check_data=False)  # the look's jobs are alive: nothing to do
    assert jobs == [] and again.state == "continue" and again.finished == 6
    assert len(client.get_metric_history(pid, "study/delta")) == 1
    notes, rows = status_report(spec)
    assert notes[0].startswith("study: look 2 needs 6 seeds per backbone: 6/12 runs FINISHED") and len(rows) == 12

    _finish(spec, range(3, 6), EQUAL)
    done, jobs = advance(spec, "debug", check_data=False)
    assert done.state == "equivalent" and jobs == []
    tags, client, pid = _parent(spec)
    assert tags[STATE_TAG] == "equivalent" and tags[DECISION_TAG].startswith("equivalent at look 2 (6 seeds")
    assert [m.step for m in client.get_metric_history(pid, "study/rci_high")] == [3, 6]
    assert status_report(spec)[0][0].startswith("study equivalent: equivalent at look 2")


def test_futility_closes_the_study_and_advance_after_the_close_changes_nothing(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    _finish(spec, range(6), AHEAD)
    first, jobs = advance(spec, "debug", check_data=False)
    assert first.state == "not equivalent" and "futility at look 2" in first.decision and jobs == []
    assert [round(look.delta, 3) for look in first.looks] == [1.1, 1.075]
    again, jobs = advance(spec, "debug", check_data=False)
    assert again.state == "not equivalent" and jobs == []
    _, client, pid = _parent(spec)
    assert len(client.get_metric_history(pid, "study/delta")) == 2


def test_last_look_without_equivalence_says_not_equivalent(tmp_path: Path) -> None:
    spec = _spec(tmp_path, "{looks: [3, 6]}")  # no futility: the last look decides
    _finish(spec, range(6), [v + (0.9, -0.9, 0.0)[i % 3] * (i >= 3) for i, v in enumerate(R50)])
    result, jobs = advance(spec, "debug", check_data=False)
    assert result.state == "not equivalent" and "at the last look (6 seeds" in result.decision and jobs == []


def test_failed_runs_are_resubmitted_counted_then_stall_until_a_person_sweeps(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    _finish(spec, range(3), EQUAL, status={("resnet101", 1): "FAILED"})
    for attempt in (1, 2):
        result, jobs = advance(spec, "debug", check_data=False)
        assert result.state == "continue" and len(jobs) == 1 and result.looks == []  # look 1 is not complete
        failed = _children(spec)["resnet101", 1]
        assert failed.tags[RESUBMITS_TAG] == str(attempt) and failed.status == "SCHEDULED"
        set_status(spec.tracking_uri, failed.run_id, "FAILED")  # it failed again
        (spec.runs_root / spec.name / failed.tags["config_hash"] / JOB_ID_FILE).unlink()
    stalled = r"stalled: run backbone=resnet101,seed=1 failed 3 times .* `experiments sweep "
    with pytest.raises(ExperimentsError, match=stalled):
        advance(spec, "debug", check_data=False)
    assert _parent(spec)[0][STATE_TAG] == "stalled"
    result, jobs = advance(spec, "debug", check_data=False, resume=True)  # what `experiments sweep` does
    assert len(jobs) == 1 and _children(spec)["resnet101", 1].tags[RESUBMITS_TAG] == "1"


def test_advance_refuses_a_spec_without_looks_in_one_line(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    spec.sequential = None
    with pytest.raises(ExperimentsError, match=r"^sweep spec .*study.yaml: no analysis.sequential section"):
        advance(spec, "debug")
    assert not (tmp_path / "mlflow.db").exists()


def test_a_cancelled_study_waits_for_a_sweep(tmp_path: Path) -> None:
    from experiments.status import cancel

    spec = _spec(tmp_path)
    _finish(spec, range(3), EQUAL)
    cancel(spec)
    result, jobs = advance(spec, "debug", check_data=False)
    assert result.state == "cancelled" and jobs == [] and "`experiments sweep" in result.decision
    result, jobs = advance(spec, "debug", check_data=False, resume=True)
    assert result.state == "continue" and len(jobs) == 6 and CANCELLED_TAG not in _parent(spec)[0]


def test_the_pilot_raises_the_maximum_beyond_the_grids_seeds(tmp_path: Path) -> None:
    spec = _spec(tmp_path, "{looks: [3, 6], futility: true, max_seeds: 12, planning_sd: 0.1}")
    _finish(spec, range(3), EQUAL)
    result, jobs = advance(spec, "debug", check_data=False)
    assert result.seeds == 12 and len(jobs) == 18  # the pilot's sd 0.3–0.4 ≫ 0.1: the cap, seeds 6–11 new
    runs = _children(spec)
    assert ("resnet101", 11) in runs and ("resnet50", 12) not in runs
    assert _parent(spec)[0][SEEDS_TAG] == "12"


@pytest.mark.slow
def test_advance_follow_trains_look_after_look_on_the_local_executor_until_the_study_closes(tmp_path: Path) -> None:
    """The user's command, end to end: tiny real runs, two looks, each recorded on the parent run once."""
    tiny = yaml.safe_load((REPO / "experiments" / "sweeps" / "tiny_synthetic.yaml").read_text())
    spec = {
        **tiny, "name": f"follow_{uuid.uuid4().hex[:8]}", "base": str(TINY), "runs_root": str(tmp_path / "runs"),
        "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
        "grid": {"model.backbone": ["resnet50", "resnet101"], "train.seed": [0, 1, 2]},
        # a margin no two different seeds meet: look 1 cannot close the study, the last look must
        "analysis": {"margin": 0.001, "sequential": {"looks": [2, 3]}},
    }  # fmt: skip
    spec["overrides"]["data.root"] = str(tmp_path / "data")
    path = tmp_path / "follow.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    out = subprocess.run(
        [sys.executable, "-m", "experiments", "advance", str(path), "--follow"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=800,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert out.stdout.count("running 4 runs locally") == 1 and out.stdout.count("running 2 runs locally") == 1
    assert "look 1 (2 seeds per backbone)" in out.stdout and "look 2 (3 seeds per backbone)" in out.stdout
    assert out.stdout.strip().splitlines()[-1].startswith("study not equivalent: not equivalent at the last look")
    loaded = load_spec(path)
    tags, client, pid = _parent(loaded)
    assert tags[STATE_TAG] == "not equivalent" and look_tag(2) in tags
    assert [m.step for m in client.get_metric_history(pid, "study/delta")] == [2, 3]
    assert len(_children(loaded)) == 6 and {c.status for c in _children(loaded).values()} == {"FINISHED"}


def test_advance_refuses_a_study_of_several_configurations_in_one_line(tmp_path: Path) -> None:
    """`sweep` submits such a spec whole (the demo's two schedules); `advance` cannot step it look by look."""
    spec = _spec(tmp_path)
    spec.grid["train.iterations"] = [6, 8]
    with pytest.raises(ExperimentsError, match=r"grid.train.iterations has 2 values, but `advance` steps one config"):
        advance(spec, "debug")
