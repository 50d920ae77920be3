"""``python -m analysis``: report, import-log."""

from __future__ import annotations

import argparse
from pathlib import Path

from deeplab.arguments import int_in, positive_float
from deeplab.errors import run_command
from deeplab.outputs import check_output_dir


def _uri(value: str | None) -> str:
    from experiments.store import resolve_tracking_uri

    return resolve_tracking_uri(value)


def _cmd_report(args: argparse.Namespace) -> int:
    out = check_output_dir(args.out, "--out")  # before pandas, matplotlib and MLflow are imported
    from analysis.report import write_report

    path = write_report(args.experiment, _uri(args.tracking_uri), out, margin=args.margin, n_boot=args.bootstrap)
    print(f"report written to {path} (self-contained page: {path.with_suffix('.html')})")
    return 0


def _cmd_import_log(args: argparse.Namespace) -> int:
    from analysis.import_log import import_log

    run_id = import_log(Path(args.file), _uri(args.tracking_uri), args.experiment, args.backbone, args.iterations)
    print(f"imported {args.file} as MLflow run {run_id}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m analysis", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("report", help="write report.md/report.html with figures, tables and a verdict")
    p.add_argument("--experiment", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--margin", type=positive_float, default=0.5, help="equivalence margin in mIoU points")
    p.add_argument("--bootstrap", type=int_in(1), default=2000, help="bootstrap replicates")
    p.add_argument("--tracking-uri", default=None)
    p.set_defaults(func=_cmd_report)
    p = sub.add_parser("import-log", help="import a training log in the seed's format as an MLflow run")
    p.add_argument("file")
    p.add_argument("--experiment", required=True)
    p.add_argument("--backbone", required=True, choices=["resnet50", "resnet101"])
    p.add_argument("--iterations", type=int_in(1), default=None)
    p.add_argument("--tracking-uri", default=None)
    p.set_defaults(func=_cmd_import_log)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser().parse_args(argv))
