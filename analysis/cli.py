"""``python -m analysis``: report, plan, evidence, import-log, fork-data, demo."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from analysis.seed_log import SEED_EPOCH_ITERATIONS
from deeplab.arguments import int_in, positive_float
from deeplab.errors import run_command
from deeplab.outputs import check_output_dir


def _uri(value: str | None) -> str:
    """The tracking URI; a server or database is checked to answer within seconds (a silent one is one line, not a
    long hang). A sqlite file is checked where it is read, with the command's own message."""
    from experiments.store import check_reachable, resolve_tracking_uri, sqlite_path

    uri = resolve_tracking_uri(value)
    if sqlite_path(uri) is None:
        check_reachable(uri)
    return uri


def _cmd_report(args: argparse.Namespace) -> int:
    out = check_output_dir(args.out, "--out")  # before pandas, matplotlib and MLflow are imported
    from analysis.report import write_report

    uri = _uri(args.tracking_uri)
    path = write_report(args.experiment, uri, out, margin=args.margin, n_boot=args.bootstrap, spec=args.spec)
    print(f"report written to {path} (self-contained page: {path.with_suffix('.html')})")
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
    from experiments.spec import load_spec

    spec = load_spec(args.spec)  # a bad spec fails before the models are built for their FLOPs
    from analysis.plan import format_plan, plan_study

    # the URI is not checked here: the planner plans without a store, and says why it has none
    plan = plan_study(
        spec, args.tracking_uri, sd=args.sd, margin=args.margin, delta=args.delta, replicates=args.replicates
    )
    print(format_plan(plan))
    return 0


def _cmd_import_log(args: argparse.Namespace) -> int:
    from analysis.import_log import import_log

    done = import_log(
        Path(args.file),
        _uri(args.tracking_uri),
        args.experiment,
        args.backbone,
        args.iterations,
        percent=args.percent,
        epoch_iterations=args.epoch_iterations,
        evaluator=args.evaluator,
    )
    verb = "imported" if done.created else "already imported:"
    print(f"{verb} {args.file} as MLflow run {done.run_id} ({done.iterations} iterations; {done.result})")
    return 0


def _cmd_evidence(args: argparse.Namespace) -> int:
    out = check_output_dir(args.out, "--out")
    from analysis.evidence_report import write_evidence

    path = write_evidence(out, run_sd=args.run_sd, margin=args.margin).report
    print(f"evidence report written to {path} (self-contained page: {path.with_suffix('.html')})")
    return 0


def _cmd_fork_data(args: argparse.Namespace) -> int:
    from analysis.fork_logs import DATA, extract_fork_logs

    out = check_output_dir(args.out, "--out") if args.out else DATA
    for path in extract_fork_logs(Path(args.log_dir), out):
        print(f"wrote {path}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    workdir = check_output_dir(args.workdir, "--workdir")  # before torch, MLflow and submitit are imported
    from analysis.demo import run_demo

    return run_demo(workdir, executor=args.executor)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m analysis", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("report", help="write report.md/report.html with figures, tables and a verdict")
    p.add_argument("--experiment", required=True)
    p.add_argument("--out", required=True)
    p.add_argument(
        "--margin",
        type=positive_float,
        default=None,
        help="equivalence margin in mIoU points (default: the spec's analysis.margin, else 0.5)",
    )
    p.add_argument("--bootstrap", type=int_in(1), default=2000, help="bootstrap replicates")
    p.add_argument(
        "--spec",
        default=None,
        help="the sweep spec (its analysis.sequential design); default: the file the sweep's parent run names",
    )
    p.add_argument("--tracking-uri", default=None)
    p.set_defaults(func=_cmd_report)
    p = sub.add_parser("plan", help="runs, iterations, GPU-hours and equivalence-test power of a sweep spec")
    p.add_argument("spec")
    p.add_argument(
        "--sd", type=positive_float, default=None, help="run-to-run sd in points (default: store, else evidence)"
    )
    p.add_argument("--margin", type=positive_float, default=None, help="equivalence margin (default: analysis.margin)")
    p.add_argument("--delta", type=float, default=0.25, help="a true difference to show the power at as well")
    p.add_argument(
        "--replicates",
        type=int_in(1000, 10_000_000),
        default=20_000,
        help="simulated studies per design figure (default 20000: se ≤ 0.0036)",
    )
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI, for measured s/iteration and sd")
    p.set_defaults(func=_cmd_plan)
    p = sub.add_parser("evidence", help="what public evidence says (the fork's logs, published pairs): no sweep")
    p.add_argument("--out", required=True)
    p.add_argument("--margin", type=positive_float, default=0.5, help="equivalence margin in mIoU points")
    p.add_argument(
        "--run-sd", type=positive_float, default=None, help="run-to-run sd in points (default: from the fork logs)"
    )
    p.set_defaults(func=_cmd_evidence)
    p = sub.add_parser("import-log", help="import a training log in the seed's format as an MLflow run")
    p.add_argument("file")
    p.add_argument("--experiment", required=True)
    p.add_argument("--backbone", required=True, choices=["resnet50", "resnet101"])
    p.add_argument("--iterations", type=int_in(1), default=None, help="the schedule (default: from the log)")
    p.add_argument("--percent", action="store_true", help="the log prints mIoU in percent, not as a fraction")
    p.add_argument(
        "--epoch-iterations",
        type=int_in(1),
        default=SEED_EPOCH_ITERATIONS,
        help="iterations per epoch, to place validations that no progress line precedes (default: %(default)s, "
        "the seed's 2975 images / batch 8)",
    )
    p.add_argument(
        "--evaluator",
        choices=["unknown", "official"],
        default="unknown",
        help="official: the log's mIoU has the official semantics (logged as val/mIoU, else val/mIoU_seed_metric)",
    )
    p.add_argument("--tracking-uri", default=None)
    p.set_defaults(func=_cmd_import_log)
    p = sub.add_parser("fork-data", help="regenerate analysis/data/seed_fork_* from the seed fork's two logs")
    p.add_argument("log_dir", help="the folder with slurm-11413.out and slurm-11311.out")
    p.add_argument("--out", default=None, help="default: the package's analysis/data")
    p.set_defaults(func=_cmd_fork_data)
    p = sub.add_parser("demo", help="the main job: study designs, synthetic data → tiny res50/res101 sweep → report")
    p.add_argument("--workdir", default=".demo")
    p.add_argument("--executor", choices=["auto", "slurm", "local"], default="auto")
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser().parse_args(argv), known=store_error_line)


def store_error_line(err: Exception) -> str | None:
    """One line for a sqlite store's error beneath MLflow (a full disk); None when the store was never opened."""
    client = sys.modules.get("experiments.store.client")  # not imported: the error is not the store's
    return client.store_error_line(err) if client is not None else None
