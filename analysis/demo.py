"""``python -m analysis demo`` (``make demo``): the whole pipeline on the embedded default. The shipped study's
designs (``analysis plan``), then the demo sweep (``experiments.demo``: synthetic data → tiny res50/res101 sweep),
then the report, and where everything is. It lives here, at the top layer, because it uses all three packages.
"""

from __future__ import annotations

import time
from pathlib import Path

from analysis.landing import REPORT_DIR
from experiments.demo import STUDY_SPEC, run_demo_sweep
from experiments.spec import load_spec
from experiments.store import default_tracking_uri, run_page_url, runs_page_url, sweep_parent

UI_PORT = 5000
UI = f"http://127.0.0.1:{UI_PORT}"


def study_designs(tracking_uri: str, replicates: int | None = None) -> list[str]:
    """`analysis plan`'s fixed-vs-sequential comparison of the shipped study, as lines (about 10 s: building
    the two models for their FLOPs, then 20 000 simulated studies per figure; ``replicates`` to go faster)."""
    from analysis.plan import REPLICATES, format_designs, plan_study

    plan = plan_study(load_spec(STUDY_SPEC), tracking_uri, replicates=replicates or REPLICATES)
    head = f"the study this demo rehearses: python -m analysis plan {STUDY_SPEC.relative_to(STUDY_SPEC.parents[2])}"
    return [head, *(format_designs(plan.designs) if plan.designs else ["  (the spec compares no res50/res101 cell)"])]


def run_demo(workdir: Path, executor: str = "auto") -> int:
    """The study's designs, the demo sweep into ``workdir`` (data, runs, mlflow.db, artifacts), its report, and
    where everything is."""
    from analysis.report import write_report

    start = time.perf_counter()
    print("\n".join(study_designs(default_tracking_uri(workdir))) + "\n", flush=True)
    sweep = run_demo_sweep(workdir, executor)
    uri, experiment = sweep.tracking_uri, sweep.spec.experiment
    print("writing the report…", flush=True)
    report = write_report(experiment, uri, workdir.resolve() / "report")
    print(f"\ndemo finished in {time.perf_counter() - start:.0f} s")
    print(f"report:    {report}  (figures in {report.parent / 'figures'})")
    print(f"           {report.with_suffix('.html')}  (the same, one file with the figures inlined)")
    evidence = report.parent / "evidence" / "report.md"
    print(f"evidence:  {evidence}  (what the seed fork's logs and published pairs say; .html beside it)")
    print(f"notebook:  make notebook (JupyterLab; elsewhere set DEEPLAB_TRACKING_URI={uri})")
    print(f"MLflow UI: .venv/bin/mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port {UI_PORT}, then")
    # MLflow 3's front page lands in its GenAI view: these open the sweep itself
    print(f"  runs:    {runs_page_url(UI, sweep.experiment_id)}")
    parent = sweep_parent(uri, experiment)
    if parent is not None:
        print(f"  verdict: {run_page_url(UI, *parent)}  (the sweep's parent run)")
        print(f"  report:  {run_page_url(UI, *parent, f'{REPORT_DIR}/report.html')}")
    return 0
