"""Seed-format logs become MLflow runs with whole validation curves: real excerpts of the fork's logs, noisy
variants of them, bad inputs (one line, nothing half-imported) and repeated or concurrent imports (one run)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from analysis.errors import AnalysisError
from analysis.frames import runs_frame
from analysis.import_log import KEY_TAG, import_log
from analysis.seed_log import parse_seed_log
from deeplab.tracking import points

DATA = Path(__file__).parent / "data"
HEAD = DATA / "fork-11311-head.out"  # first 99 lines of slurm-11311.out (tqdm redraws elided)
TAIL = DATA / "fork-11413-tail.out"  # last 23 lines of slurm-11413.out
HEAD_VALIDATIONS = [(300, 0.13447630405426025), (700, 0.27780216932296753), (1100, 0.365339994430542)]
TAIL_VALIDATIONS = [(58700, 0.7739469408988953), (59100, 0.7839851379394531), (59500, 0.7813913226127625)]
TAIL_VALIDATIONS += [(59800, 0.7774947881698608)]

NEW = """INFO train.py(120): iter: 100/41000, lr: 0.000011, loss: 0.8123, eta: 12:29:50, time: 110.1234
eval:  35%|███▌      | 7/20 [00:03<00:05,  2.31it/s]\reval:  40%|████      | 8/20 [00:03<00:05,  2.31it/s]
iter: 200/41000, lr: 0.000023, loss: nan, eta: 1 day, 2:03:04, time: 109.0000
Traceback (most recent call last):
RuntimeError: CUDA out of memory (iter: 300/41000 was not reached)
iter: 300/41000, lr: 0.000049, loss: 0.7001, eta: 3 days, 0:00:01, time: 108.5
training done, model saved to: ./res/model_final.pth
INFO train.py(140): evaluating the final model
mIOU is: 0.784770123
"""
WARNING = (
    "/usr/lib/python3/torch/nn/functional.py:1234: UserWarning: Default upsampling behavior changed\n  warnings.warn(\n"
)


@pytest.fixture(scope="module")
def uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One sqlite store for the module (creating one costs seconds); each test uses its own experiment."""
    return f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"


def _text(path: Path) -> str:
    return path.read_bytes().decode()  # read_text() would turn tqdm's carriage returns into line ends


def _validations(text: str, **kw: object) -> list[tuple[int, float]]:
    return [(v.iteration, v.miou) for v in parse_seed_log(text, **kw).validations]


def test_real_excerpts_place_every_validation_at_its_iteration() -> None:
    head = parse_seed_log(_text(HEAD))
    assert [(v.iteration, v.miou) for v in head.validations] == HEAD_VALIDATIONS
    assert [v.epoch for v in head.validations] == [1, 2, 3] and all(v.new_best for v in head.validations)
    assert [v.printed_previous_best for v in head.validations] == [0, 0.13447630405426025, 0.27780216932296753]
    assert head.total == 41000 and [p.iteration for p in head.progress][:3] == [100, 200, 300]
    assert head.log_interval == 100 and head.final_eval is None and not head.truncated
    tail = parse_seed_log(_text(TAIL))
    assert [(v.iteration, v.miou) for v in tail.validations] == TAIL_VALIDATIONS
    best = tail.validations[1]  # "Get a new best mIMOU:0.7798… at epoch:159" prints the OLD best
    assert best.new_best and best.epoch == 159 and best.printed_previous_best == pytest.approx(0.7798179388046265)
    assert [v.new_best for v in tail.validations] == [False, True, False, False]
    assert tail.progress[-1].iteration == 59900 and tail.total == 60000


def _prefix(text: str) -> str:
    return "".join(f"INFO train.py(120): {line}" if line.strip() else line for line in text.splitlines(True))


def _warnings(text: str) -> str:
    return "".join(line + (WARNING if i % 3 == 0 else "") for i, line in enumerate(text.splitlines(True)))


def _old_format(text: str) -> str:
    return text.replace("iter: ", "it: ")


def _nan_and_days(text: str) -> str:
    text = text.replace("loss: 0.8607, eta: 0:18:18", "loss: nan, eta: 1 day, 0:18:18")
    return text.replace("eta: 0:28:30", "eta: 3 days, 0:28:30")


def _glued(text: str) -> str:  # a warning printed right after a tqdm redraw, as in slurm-11311.out
    return text.replace("mIOU is:", "\r 99%|█| 124/125 [01:01<00:00]OMP: Warning #190: Forking\nmIOU is:")


@pytest.mark.parametrize(
    "noise",
    [lambda t: t.replace("\n", "\r\n"), _prefix, _warnings, _old_format, _nan_and_days, _glued],
    ids=["crlf", "prefix", "warnings", "old-format", "nan-and-days", "glued-warning"],
)
def test_noisy_variants_read_the_same(noise: Callable[[str], str]) -> None:
    assert _validations(noise(_text(HEAD))) == HEAD_VALIDATIONS
    tail = noise(_text(TAIL))
    assert _validations(tail) == TAIL_VALIDATIONS
    assert [p.iteration for p in parse_seed_log(tail).progress][-1] == 59900


def test_a_truncated_last_line_drops_what_it_cut() -> None:
    text = _text(TAIL)
    cut = text[: text.rindex("mIOU is: 0.77749") + len("mIOU is: 0.77")]
    log = parse_seed_log(cut)
    assert log.truncated and _validations(cut) == TAIL_VALIDATIONS[:3]  # "0.77" may be a cut number
    cut = text[: text.rindex("loss: 0.8467") + len("loss: 0.84")]
    assert parse_seed_log(cut).progress[-1].iteration == 59800 and _validations(cut) == TAIL_VALIDATIONS


def test_validations_without_progress_lines_are_placed_by_epoch(tmp_path: Path, uri: str) -> None:
    bare = "".join(line for line in _text(HEAD).splitlines(True) if "iter: " not in line)
    assert _validations(bare) == [(372 * e, m) for e, (_, m) in zip([1, 2, 3], HEAD_VALIDATIONS, strict=True)]
    assert [v.iteration for v in parse_seed_log(bare, epoch_iterations=371).validations] == [371, 742, 1113]
    (tmp_path / "bare.out").write_text(bare)
    done = import_log(tmp_path / "bare.out", uri, "by-epoch", "resnet50")
    params = MlflowClient(uri).get_run(done.run_id).data.params
    assert params["train.iterations"] == "1116" and params["import.iterations_from"].startswith("last epoch 3 × 372")
    again = import_log(tmp_path / "bare.out", uri, "by-epoch", "resnet50", iterations=41000)
    assert MlflowClient(uri).get_run(again.run_id).data.params["train.iterations"] == "41000"
    lost = "\n".join(line for line in bare.splitlines() if "Get a new best" not in line) + "\n"
    with pytest.raises(AnalysisError, match=r"lost.out line \d+: a validation with no progress line before it"):
        parse_seed_log(lost, where="lost.out")


@pytest.mark.parametrize(
    ("value", "percent", "needle"),
    [
        ("78.398", False, "mIoU 78.398 is outside [0, 1]; pass --percent"),
        ("nan", False, "mIoU nan is outside [0, 1]"),
        ("-0.1", False, "mIoU -0.1 is outside [0, 1]"),
        ("178.4", True, "mIoU 178.4 (read as percent: 1.784) is outside [0, 1]"),
    ],
)
def test_an_miou_outside_0_1_is_a_one_line_error(value: str, percent: bool, needle: str) -> None:
    text = _text(HEAD).replace("mIOU is: 0.27780216932296753", f"mIOU is: {value}")
    with pytest.raises(AnalysisError) as err:
        parse_seed_log(text, percent=percent, where="x.out")
    assert needle in str(err.value) and "x.out line 88" in str(err.value) and "\n" not in str(err.value)


def test_percent_reads_percent() -> None:
    text = _text(HEAD).replace("mIOU is: 0.13447630405426025", "mIOU is: 13.447630405426025")
    text = text.replace("mIOU is: 0.27780216932296753", "mIOU is: 27.780216932296753")
    text = text.replace("mIOU is: 0.365339994430542", "mIOU is: 36.5339994430542")
    text = text.replace("mIMOU:0.13447630405426025", "mIMOU:13.447630405426025")
    text = text.replace("mIMOU:0.27780216932296753", "mIMOU:27.780216932296753")
    assert [m for _, m in _validations(text, percent=True)] == pytest.approx([m for _, m in HEAD_VALIDATIONS])


def test_import_keeps_the_curve_and_says_what_the_result_is(tmp_path: Path, uri: str) -> None:
    done = import_log(TAIL, uri, "curve", "resnet50", evaluator="official")
    client = MlflowClient(uri)
    run = client.get_run(done.run_id)
    in_points = [(step, points(miou)) for step, miou in TAIL_VALIDATIONS]  # the store keeps points
    assert [(m.step, m.value) for m in client.get_metric_history(done.run_id, "val/mIoU")] == in_points
    assert [(m.step, m.value) for m in client.get_metric_history(done.run_id, "val/mIoU_best")] == [in_points[1]]
    tags = run.data.tags
    assert tags["result.reported"] == "best" and tags["result.selection"] == "best-of-4-on-val"
    assert tags["result.selected_on"] == "val" and "last progress line printed before it" in tags["validation_rule"]
    assert len(tags[KEY_TAG]) == 64
    assert run.data.params["train.iterations"] == "60000" and run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(done.run_id, "train/loss")][-1] == 59900
    frame = runs_frame(uri, "curve")  # the analysis reads it like a sweep's run
    assert len(frame) == 1 and frame.miou.iloc[0] == pytest.approx(77.74947881698608)  # points
    # the same log again, and a CRLF copy of it elsewhere: the same facts, so the same run
    crlf = tmp_path / "copy.out"
    crlf.write_bytes(TAIL.read_bytes().replace(b"\n", b"\r\n"))
    for path in (TAIL, crlf):
        again = import_log(path, uri, "curve", "resnet50", evaluator="official")
        assert again.run_id == done.run_id and not again.created
    experiment = client.get_experiment_by_name("curve").experiment_id
    assert len(client.search_runs([experiment])) == 1
    other = import_log(TAIL, uri, "curve", "resnet101", evaluator="official")  # another reading: another run
    assert other.created and len(client.search_runs([experiment])) == 2


def test_a_final_evaluation_is_the_result_of_a_log_without_best_lines(tmp_path: Path, uri: str) -> None:
    (tmp_path / "seed.log").write_text(NEW)
    done = import_log(tmp_path / "seed.log", uri, "final-eval", "resnet101")
    client = MlflowClient(uri)
    run = client.get_run(done.run_id)
    assert [m.step for m in client.get_metric_history(done.run_id, "train/loss")] == [100, 200, 300]
    assert run.data.metrics["eval/mIoU_void_as_fp"] == pytest.approx(78.4770123)
    assert run.data.tags["result.reported"] == "final evaluation" and "version unknown" in run.data.tags["miou_metric"]
    assert "val/mIoU_void_as_fp" not in run.data.metrics  # no in-training validation in this log


def _cli(path: Path, uri: str, experiment: str) -> subprocess.Popen:
    argv = [sys.executable, "-m", "analysis", "import-log", str(path), "--experiment", experiment]
    argv += ["--backbone", "resnet50", "--tracking-uri", uri]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_concurrent_imports_of_one_log_give_one_run(uri: str) -> None:
    import_log(HEAD, uri, "race", "resnet50")  # the store exists before the race (MLflow's own limit)
    procs = [_cli(TAIL, uri, "race") for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outs]
    ids = {out.split(" as MLflow run ")[1].split()[0] for out, _ in outs}
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("race").experiment_id])
    assert len(ids) == 1 and len(runs) == 2 and ids <= {r.info.run_id for r in runs}


def test_a_failure_half_way_leaves_no_run(uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import_log(HEAD, uri, "half-way", "resnet50")
    real = MlflowClient.log_batch

    def failing(self: MlflowClient, run_id: str, metrics=(), params=(), tags=()) -> None:
        if metrics:  # fault injection: the store fails after the run and its params exist (e.g. a full disk)
            raise KeyboardInterrupt
        return real(self, run_id, metrics=metrics, params=params, tags=tags)

    monkeypatch.setattr(MlflowClient, "log_batch", failing)
    with pytest.raises(KeyboardInterrupt):
        import_log(TAIL, uri, "half-way", "resnet50")
    monkeypatch.undo()
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("half-way").experiment_id])
    assert [r.data.tags["log_file"] for r in runs] == [HEAD.name]  # none of the half-imported one
    assert import_log(TAIL, uri, "half-way", "resnet50").created  # and a retry imports it


def test_nothing_parseable_is_an_error_and_creates_no_run(tmp_path: Path, uri: str) -> None:
    (tmp_path / "noise.log").write_text("Traceback (most recent call last):\nValueError: nope\n" + "\r50%|█████|" * 3)
    with pytest.raises(AnalysisError, match="noise.log has no line in the seed's format"):
        import_log(tmp_path / "noise.log", uri, "bad", "resnet101")
    bad = tmp_path / "percent.out"
    bad.write_text(_text(TAIL).replace("mIOU is: 0.7774947881698608", "mIOU is: 77.75"))
    proc = _cli(bad, uri, "bad")  # the CLI: one line naming the file, exit 2 (tests/test_bad_inputs.py has more)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and err.startswith(f"error: {bad} line ") and err.count("\n") == 1, err
    with pytest.raises(AnalysisError, match="outside"):
        import_log(bad, uri, "bad", "resnet50")
    experiment = MlflowClient(uri).get_experiment_by_name("bad")
    assert experiment is None or not MlflowClient(uri).search_runs([experiment.experiment_id])


def test_a_store_from_before_points_is_refused_in_one_line(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'old.db'}"
    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment("old"), tags={"config_hash": "abc"}, run_name="r50-old")
    client.log_metric(run.info.run_id, "val/mIoU", 0.78)
    client.log_metric(run.info.run_id, "val/mIoU_seed_metric", 0.77)  # the fraction era's name
    with pytest.raises(AnalysisError, match="r50-old.*fraction"):
        runs_frame(uri, "old")
