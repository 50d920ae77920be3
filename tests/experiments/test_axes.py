"""One short name per axis: a child run's tags and its run name come from experiments.axes' table and rule, and a
run read back from its params (deeplab.params.config_from_params) holds the values those names stand for."""

from __future__ import annotations

from pathlib import Path

from deeplab.config import flatten, to_dict
from deeplab.params import config_from_params
from experiments.axes import SHORT_NAMES, axis_tags, axis_text, config_values, short_names
from experiments.spec import expand_grid, load_spec

REPO = Path(__file__).resolve().parents[2]


def _runs(tmp_path: Path) -> list:
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"name: t\nbase: {REPO / 'configs' / 'synthetic_tiny.yaml'}\n"
        "grid:\n  model.backbone: [resnet50, resnet101]\n  train.seed: [0, 1]\n  optim.lr: ['1e-3', 0.02]\n"
        "  data.crop_size: [[32, 64]]\noverrides:\n  train.iterations: 6\n  schedule.warmup_iters: 2\n"
    )
    return expand_grid(load_spec(spec))


def test_short_names_take_the_table_then_the_last_dotted_part_unless_it_is_taken() -> None:
    keys = ["model.backbone", "train.seed", "a.seed", "model.weights", "train.source", "b.iterations", "x.k", "y.k"]
    assert short_names(keys) == {
        "model.backbone": "backbone",
        "train.seed": "seed",  # the table's
        "a.seed": "a.seed",  # another key ending in a name of the table keeps its whole name
        "b.iterations": "b.iterations",  # even when train.iterations is not an axis
        "model.weights": "weights",
        "train.source": "train.source",  # "source" is a tag of the project's own
        "x.k": "x.k",  # two axes ending alike
        "y.k": "y.k",
    }
    assert [axis_text(v) for v in ("resnet50", 3, 0.5, [32, 64], (32, 64), None, "", True)] == [
        "resnet50", "3", "0.5", "[32, 64]", "[32, 64]", "null", '""', "true"
    ]  # fmt: skip


def test_a_child_runs_tags_and_name_spell_each_axis_one_way(tmp_path: Path) -> None:
    runs = _runs(tmp_path)
    grid = ["model.backbone", "train.seed", "optim.lr", "data.crop_size"]
    names = short_names([*SHORT_NAMES, *grid])
    assert runs[0].name == "backbone=resnet50,seed=0,lr=0.001,crop_size=[32, 64]"  # the config's value, not '1e-3'
    for run in runs:
        tags = axis_tags(run.config, grid)
        assert set(tags) == {names[k] for k in [*SHORT_NAMES, *grid]}  # the table's three, axes or not
        assert run.name == ",".join(f"{names[k]}={tags[names[k]]}" for k in grid)  # the name is its axis tags


def test_a_run_read_back_from_its_params_holds_every_axis_value(tmp_path: Path) -> None:
    for run in _runs(tmp_path):
        params = {k: str(v) for k, v in flatten(to_dict(run.config)).items()}  # as MlflowTracker logs them
        params |= {"info.params": "40000000", "info.world_size": "1"}  # not config: skipped
        back = config_from_params(params)
        keys = [*SHORT_NAMES, *run.values]
        assert config_values(back, keys) == config_values(run.config, keys)
        assert (back.model.backbone, back.train.iterations, back.train.seed) == (
            run.config.model.backbone, 6, run.values["train.seed"]
        )  # fmt: skip
        assert axis_tags(back, run.values) == axis_tags(run.config, run.values)
