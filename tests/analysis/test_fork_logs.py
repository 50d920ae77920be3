"""The seed fork's logs as package data: the README table from it, and (when ../shared is there) that it is what
the importer extracts from the real logs, that its placement rule holds on them, and that the published table
is the shared one."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
from tiny import REPO, fork_log

from analysis.errors import AnalysisError
from analysis.fork_logs import (
    DATA,
    META,
    PROGRESS,
    VALIDATIONS,
    extract_fork_logs,
    fork_meta,
    fork_progress,
    fork_summary,
    fork_validations,
)
from analysis.published import published_frame
from analysis.seed_log import parse_seed_log

REFERENCE = REPO.parent / "shared" / "reference"
LOGS = REFERENCE / "seed-fork-logs"
needs_shared = pytest.mark.skipif(not LOGS.is_dir(), reason="../shared/reference is not beside this checkout")

# ../shared/reference/seed-fork-logs/README.md, read off the logs by a direct regex
README = {
    "slurm-11413.out": (60000, 141, 7800, 77.75, 78.40, 59100, 77.58, 0.56),
    "slurm-11311.out": (41000, 110, 300, 77.79, 78.02, 38600, 77.51, 0.40),
}


def test_package_data_reproduces_the_readme_table() -> None:
    summary = fork_summary().set_index("log")
    meta = {log["file"]: log for log in fork_meta()["logs"]}
    for name, (max_iter, n, first, final, best, best_at, mean10, sd10) in README.items():
        row = summary.loc[name]
        assert meta[name]["max_iter"] == max_iter and row.validations == n and row.first_iteration == first
        assert (round(row.final, 2), round(row.best, 2), row.best_iteration) == (final, best, best_at)
        assert (round(row.mean_last_10, 2), round(row.sd_last_10, 2)) == (mean10, sd10)
    assert fork_meta()["source"] == "https://github.com/konami86/DeepLab-v3-plus-cityscapes-Res50"
    assert fork_meta()["commit_date"] == "2019-08-08"
    progress = fork_progress()
    assert progress.groupby("log").iteration.max().to_dict() == {"slurm-11311.out": 40900, "slurm-11413.out": 59900}
    assert progress.loss.notna().all() and (progress.loss > 0).all()
    # the seed's "unbelievable" 78.398 is the best of 141, and the published table says so
    best = fork_validations().query("log == 'slurm-11413.out'").miou.max()
    published = published_frame()
    claim = published[(published.source == "seed fork README (konami86)") & (published.backbone == "resnet50")].iloc[0]
    assert claim.miou == pytest.approx(100 * best, abs=1e-3) and claim.selection == "best-of-141-on-val"
    for name in README:
        row = published[published.source == f"seed fork log {name} (konami86)"].iloc[0]
        assert row.miou == round(summary.loc[name].final, 2) and row.selection == "final"


@needs_shared
def test_package_data_is_what_the_importer_extracts(tmp_path: Path) -> None:
    written = extract_fork_logs(LOGS, tmp_path)
    for path in written:
        assert path.read_bytes() == (DATA / path.name).read_bytes(), f"{path.name}: run python -m analysis fork-data"
    for log in fork_meta()["logs"]:
        assert hashlib.sha256((LOGS / log["file"]).read_bytes()).hexdigest() == log["sha256"]


@needs_shared
def test_the_epoch_rule_agrees_with_the_progress_rule_on_the_real_logs() -> None:
    """Without its progress lines, each validation placed by epoch × 372 falls in the same log interval."""
    for name in README:
        text = (LOGS / name).read_bytes().decode()
        by_progress = parse_seed_log(text).validations
        bare = "\n".join(line for line in text.split("\n") if "iter: " not in line)
        by_epoch = parse_seed_log(bare).validations
        assert len(by_epoch) == len(by_progress) == README[name][1]
        for a, b in zip(by_progress, by_epoch, strict=True):
            assert a.miou == b.miou and a.iteration <= b.iteration < a.iteration + 100 and b.placed_by == "epoch"


@needs_shared
def test_the_published_table_follows_the_shared_one() -> None:
    assert (DATA / "published_results.csv").read_bytes() == (REFERENCE / "published_results.csv").read_bytes()


@pytest.fixture
def package(tmp_path: Path) -> Path:
    """A copy of the package data, as `fork-data --out` would overwrite it."""
    out = tmp_path / "data"
    out.mkdir()
    for name in (META, VALIDATIONS, PROGRESS):
        shutil.copyfile(DATA / name, out / name)
    return out


def _logs(tmp_path: Path, last: str) -> Path:
    """Both logs, the second one (slurm-11311.out, 800 iterations: it ends on a validation) as ``last``."""
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "slurm-11413.out").write_text(fork_log(1000))
    (logs / "slurm-11311.out").write_text(last)
    return logs


@pytest.mark.parametrize(
    ("how", "needle"),
    [
        ("cut mid-line", "it ends mid-line, cut while it was written"),
        ("before the final validation", "its last validation is at iteration 300, more than an epoch (372 "),
        ("stopped early", "its progress stops at iteration 500 of 800"),
        ("final evaluation cut", "it ends before its final evaluation's result"),
    ],
)
def test_an_incomplete_log_is_refused_and_the_package_data_stays(
    tmp_path: Path, package: Path, how: str, needle: str
) -> None:
    whole = fork_log(800)
    assert whole.endswith("mIOU is: 0.57\n")
    last = {
        "cut mid-line": whole[:-3],
        "before the final validation": whole[: whole.rindex("mIOU")],
        "stopped early": whole[: whole.index("iter: 600")],
        "final evaluation cut": whole + "evaluating the final model\n",
    }[how]
    before = {p.name: p.read_bytes() for p in package.iterdir()}
    with pytest.raises(AnalysisError) as err:
        extract_fork_logs(_logs(tmp_path, last), package)
    assert f"slurm-11311.out is incomplete, refused (the package data is left as it was): {needle}" in str(err.value)
    assert {p.name: p.read_bytes() for p in package.iterdir()} == before


def test_whole_logs_replace_every_file_and_a_failed_write_replaces_none(tmp_path: Path, package: Path) -> None:
    logs = _logs(tmp_path, fork_log(800))
    (package / f".{PROGRESS}.tmp").mkdir()  # the last file cannot be written
    before = {p.name: p.read_bytes() for p in package.iterdir() if p.is_file()}
    with pytest.raises(AnalysisError, match=rf"cannot write .*\.{PROGRESS}\.tmp"):
        extract_fork_logs(logs, package)
    assert {p.name: p.read_bytes() for p in package.iterdir() if p.is_file()} == before  # no temporary left
    (package / f".{PROGRESS}.tmp").rmdir()
    written = extract_fork_logs(logs, package)
    assert sorted(p.name for p in package.iterdir()) == sorted(p.name for p in written)
    assert fork_summary(fork_validations(package)).validations.tolist() == [2, 2]
    assert fork_meta(package)["logs"][1]["max_iter"] == 800


def test_a_missing_log_is_named_and_nothing_is_written(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "slurm-11413.out").write_text("iter: 100/60000, lr: 0.1, loss: 1.0, eta: 1:00:00, time: 8.0\n")
    with pytest.raises(AnalysisError, match=r"slurm-11413.out has no validation"):
        extract_fork_logs(tmp_path / "logs", tmp_path / "out")
    (tmp_path / "logs" / "slurm-11413.out").unlink()
    with pytest.raises(AnalysisError, match=r"cannot read .*slurm-11413.out"):
        extract_fork_logs(tmp_path / "logs", tmp_path / "out")
    assert not (tmp_path / "out").exists()
