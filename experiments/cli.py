"""``python -m experiments``: sweep, status, cancel, server, demo."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from deeplab.errors import DeeplabError


def _cmd_sweep(args: argparse.Namespace) -> int:
    from experiments.spec import load_spec
    from experiments.sweep import submit

    submit(load_spec(args.spec), args.executor, dry_run=args.dry_run, wait=args.wait, tracking_uri=args.tracking_uri)
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from experiments.spec import load_spec
    from experiments.status import print_status, status_rows

    print_status(status_rows(load_spec(args.spec), args.tracking_uri))
    return 0


def _cmd_cancel(args: argparse.Namespace) -> int:
    from experiments.spec import load_spec
    from experiments.status import cancel

    print(f"cancelled {cancel(load_spec(args.spec), args.tracking_uri)} run(s)")
    return 0


def _cmd_server(args: argparse.Namespace) -> int:
    from experiments.server import start_server, stop_server
    from experiments.store import resolve_tracking_uri

    backend = resolve_tracking_uri(args.backend_store_uri)
    proc = start_server(backend, Path(args.artifact_root).resolve(), args.host, args.port)
    print(f"MLflow server on http://{args.host}:{args.port} (backend {backend}); Ctrl-C stops it", flush=True)
    try:
        proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        stop_server(proc)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from experiments.demo import run_demo

    return run_demo(Path(args.workdir), executor=args.executor)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m experiments", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    uri = {"default": None, "help": "MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///./mlflow.db)"}

    p = sub.add_parser("sweep", help="expand a sweep spec and submit its unfinished runs as one job array")
    p.add_argument("spec")
    p.add_argument("--executor", choices=["auto", "slurm", "local", "debug"], default="auto")
    p.add_argument("--dry-run", action="store_true", help="print the runs, create and submit nothing")
    p.add_argument("--wait", action="store_true", help="with slurm: block until every job ends")
    p.add_argument("--tracking-uri", **uri)
    p.set_defaults(func=_cmd_sweep)

    p = sub.add_parser("status", help="state, iteration and latest val mIoU of every run")
    p.add_argument("spec")
    p.add_argument("--tracking-uri", **uri)
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser("cancel", help="cancel the sweep's unfinished jobs")
    p.add_argument("spec")
    p.add_argument("--tracking-uri", **uri)
    p.set_defaults(func=_cmd_cancel)

    p = sub.add_parser("server", help="run `mlflow server` (127.0.0.1 unless --host says otherwise)")
    p.add_argument("--backend-store-uri", default=None, help="sqlite:///… (default ./mlflow.db) or postgresql://…")
    p.add_argument("--artifact-root", default="mlartifacts", help="shared storage for artifacts")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5000)
    p.set_defaults(func=_cmd_server)

    p = sub.add_parser("demo", help="the main job: synthetic data → tiny res50/res101 sweep → report")
    p.add_argument("--workdir", default=".demo")
    p.add_argument("--executor", choices=["auto", "slurm", "local"], default="auto")
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except DeeplabError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
