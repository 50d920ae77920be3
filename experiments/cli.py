"""``python -m experiments``: sweep, advance, status, cancel, sync, server."""

from __future__ import annotations

import argparse
import signal
import sys
from typing import TYPE_CHECKING

from deeplab.arguments import int_in
from deeplab.errors import run_command
from deeplab.outputs import check_output_dir
from experiments.errors import ExperimentsError

if TYPE_CHECKING:
    from experiments.spec import SweepSpec
    from experiments.store import Mirrored


def _cmd_sweep(args: argparse.Namespace) -> int:
    from experiments.spec import load_spec, wide_axis

    spec = load_spec(args.spec)  # a bad spec fails before torch, MLflow and submitit are imported (seconds)
    if spec.sequential is not None and (wide := wide_axis(spec)):
        print(f"note: grid.{wide} has several values: every seed is submitted at once (the report reads the looks)")
    elif spec.sequential is not None:  # the current look's seeds only; a person asked, so a stall or cancel is lifted
        from experiments.study import advance

        advance(
            spec, args.executor, tracking_uri=args.tracking_uri, dry_run=args.dry_run,
            check_data=not args.no_data_check, resume=True,
        )  # fmt: skip
        return 0
    from experiments.sweep import submit

    submit(
        spec,
        args.executor,
        dry_run=args.dry_run,
        wait=args.wait,
        tracking_uri=args.tracking_uri,
        check_data=not args.no_data_check,
    )
    return 0


def _cmd_advance(args: argparse.Namespace) -> int:
    from experiments.spec import load_spec

    spec = load_spec(args.spec)
    from experiments.study import advance, follow

    if args.follow:
        if args.executor not in ("auto", "local"):
            raise ExperimentsError("--follow runs the looks here, on the local executor; drop --executor")
        print(follow(spec, tracking_uri=args.tracking_uri).line())
        return 0
    advance(
        spec, args.executor, tracking_uri=args.tracking_uri, dry_run=args.dry_run, check_data=not args.no_data_check
    )
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from experiments.spec import load_spec
    from experiments.status import print_status, status_report

    notes, rows = status_report(load_spec(args.spec), args.tracking_uri)
    print_status(rows, notes)
    return 0


def _cmd_cancel(args: argparse.Namespace) -> int:
    from experiments.spec import load_spec
    from experiments.status import cancel

    print(f"cancelled {cancel(load_spec(args.spec), args.tracking_uri)} run(s)")
    return 0


def sync(
    spec: SweepSpec, tracking_uri: str | None = None, *, rebuild: bool = False
) -> tuple[list[tuple[str, Mirrored]], list[str]]:
    """Mirror every run directory of the sweep (its parent's record first) into its MLflow run, then reconcile
    the runs left SCHEDULED/RUNNING by jobs that are gone. Returns (run directory name, what was sent) per run
    directory that sent anything, and one line per reconciled run.

    Without ``rebuild`` only into the store the runs came from: a missing sqlite store is an error (nothing is
    created), and a run directory whose MLflow run this store does not hold (or holds deleted) is one line with
    the way back. With ``rebuild`` the store (a lost one: a new file, or an empty server) is made again from the
    run directories alone: the experiment, the parent run with its grid, every child with its params, curves,
    images, artifacts and status; records already in this store are only mirrored."""
    from experiments.reconcile import reconcile
    from experiments.store import (
        PARENT_DIR,
        check_reachable,
        child_dirs,
        child_runs,
        ensure_experiment,
        find_experiment,
        mirror_run,
        parent_run,
        resolve_tracking_uri,
    )
    from experiments.study import spec_runs

    uri = resolve_tracking_uri(tracking_uri or spec.tracking_uri)
    folder = spec.runs_root / spec.name
    dirs = [folder / PARENT_DIR, *child_dirs(folder)] if (folder / PARENT_DIR).is_dir() else child_dirs(folder)
    if not dirs:
        if rebuild:
            raise ExperimentsError(f"sweep {spec.name}: {folder} holds no run records to rebuild from")
        return [], []
    check_reachable(uri, must_exist=not rebuild)
    experiment_id = ensure_experiment(uri, spec.experiment) if rebuild else None
    synced = []
    for run_dir in dirs:
        done = mirror_run(uri, run_dir, experiment_id=experiment_id, rebuild=rebuild)
        if done.sent:
            synced.append((run_dir.name, done))
    experiment_id = find_experiment(uri, spec.experiment)
    parent = parent_run(uri, experiment_id, spec.name) if experiment_id else None
    children = child_runs(uri, experiment_id, parent) if parent else {}
    return synced, [f"reconciled {fixed.line}" for fixed in reconcile(uri, spec_runs(spec), children)]


def _cmd_sync(args: argparse.Namespace) -> int:
    from experiments.spec import load_spec

    spec = load_spec(args.spec)
    synced, reconciled = sync(spec, args.tracking_uri, rebuild=args.rebuild)
    for name, done in synced:
        what = f"{done.points} points, {done.params} params, {done.tags} tags, {done.artifacts} artifacts, "
        what += f"{done.images} images" + (f", status {done.status}" if done.status else "")
        print(f"synced {name} into run {done.run_id}: {what}")
    if not synced:
        print(f"sweep {spec.name}: every run directory is mirrored already")
    for line in reconciled:
        print(line)
    return 0


def _cmd_server(args: argparse.Namespace) -> int:
    from experiments.server import start_server, stop_server
    from experiments.store import check_reachable, is_database, redact, resolve_tracking_uri

    backend = resolve_tracking_uri(args.backend_store_uri)
    if not is_database(backend):  # e.g. MLFLOW_TRACKING_URI pointing at a server: not a store
        source = "--backend-store-uri" if args.backend_store_uri else "MLFLOW_TRACKING_URI (no --backend-store-uri)"
        raise ExperimentsError(
            f"{source} {redact(backend)}: a tracking server, not a backend store; "
            "give --backend-store-uri sqlite:///ABS/PATH.db or postgresql://…"
        )
    artifacts = check_output_dir(args.artifact_root, "--artifact-root").resolve()
    check_reachable(backend)  # a database that does not answer fails here in seconds, not after the /health wait
    ready = f"MLflow server on http://{args.host}:{args.port} (backend {redact(backend)}); Ctrl-C stops it"

    def stop(_signum: int, _frame: object) -> None:  # a kill or a hang-up stops the server too, as Ctrl-C does
        raise KeyboardInterrupt

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, stop)
    proc = start_server(backend, artifacts, args.host, args.port)
    try:  # printed inside: a Ctrl-C right after it must still stop the server (it runs in its own session)
        print(ready, flush=True)
        proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        stop_server(proc)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m experiments", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    uri = {"default": None, "help": "MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///./mlflow.db)"}

    p = sub.add_parser("sweep", help="expand a sweep spec and submit its unfinished runs as one job array")
    p.add_argument("spec")
    p.add_argument("--executor", choices=["auto", "slurm", "local", "debug"], default="auto")
    p.add_argument("--dry-run", action="store_true", help="print the runs, create and submit nothing")
    p.add_argument("--wait", action="store_true", help="with slurm: block until every job ends")
    p.add_argument(
        "--no-data-check", action="store_true", help="skip decoding every file of a real dataset before submitting"
    )
    p.add_argument("--tracking-uri", **uri)
    p.set_defaults(func=_cmd_sweep)

    p = sub.add_parser(
        "advance", help="a sequential study: analyse the finished look, record it, submit the next or close the study"
    )
    p.add_argument("spec")
    p.add_argument("--executor", choices=["auto", "slurm", "local", "debug"], default="auto")
    p.add_argument("--follow", action="store_true", help="local executor: run look after look here until decided")
    p.add_argument("--dry-run", action="store_true", help="print where the study stands; record and submit nothing")
    p.add_argument("--no-data-check", action="store_true", help="skip decoding a real dataset before submitting")
    p.add_argument("--tracking-uri", **uri)
    p.set_defaults(func=_cmd_advance)

    p = sub.add_parser("status", help="state, iteration and latest val mIoU of every run")
    p.add_argument("spec")
    p.add_argument("--tracking-uri", **uri)
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser("cancel", help="cancel the sweep's unfinished jobs")
    p.add_argument("spec")
    p.add_argument("--tracking-uri", **uri)
    p.set_defaults(func=_cmd_cancel)

    p = sub.add_parser("sync", help="mirror the sweep's run directories into MLflow (--rebuild: a lost store)")
    p.add_argument("spec")
    p.add_argument("--tracking-uri", **uri)
    p.add_argument(
        "--rebuild",
        action="store_true",
        help="make a lost or corrupt store again from the run directories (move the bad one away first)",
    )
    p.set_defaults(func=_cmd_sync)

    p = sub.add_parser("server", help="run `mlflow server` (127.0.0.1 unless --host says otherwise)")
    p.add_argument("--backend-store-uri", default=None, help="sqlite:///… (default ./mlflow.db) or postgresql://…")
    p.add_argument("--artifact-root", default="mlartifacts", help="shared storage for artifacts")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int_in(1, 65535), default=5000)
    p.set_defaults(func=_cmd_server)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser().parse_args(argv), known=store_error_line)


def store_error_line(err: Exception) -> str | None:
    """One line for a sqlite store's error beneath MLflow (a full disk); None when the store was never opened."""
    client = sys.modules.get("experiments.store.client")  # not imported: the error is not the store's
    return client.store_error_line(err) if client is not None else None
