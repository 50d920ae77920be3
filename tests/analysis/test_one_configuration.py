"""A cell holds one configuration: runs that differ in anything but the seed are never pooled as seeds of one
backbone (an override edited between two sweeps, two specs in one experiment), and a seed never counts twice."""

from __future__ import annotations

import pandas as pd
import pytest

from analysis.cells import StudyAxes, check_one_configuration
from analysis.errors import AnalysisError
from deeplab.params import config_from_params

AXES = StudyAxes("resnet101", "resnet50", ("train.iterations",))


def _runs(*rows: tuple[str, str, int, dict[str, str]]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"run_name": name, "backbone": backbone, "iterations": 6, "seed": seed,
             "config": config_from_params({"model.backbone": backbone, "train.iterations": "6", "train.seed": str(seed),
                                           "data.num_workers": str(seed), "schedule.warmup_iters": "2", **extra})}
            for name, backbone, seed, extra in rows
        ]
    )  # fmt: skip


def test_seeds_of_one_configuration_pass() -> None:
    check_one_configuration(_runs(("a", "resnet50", 0, {}), ("b", "resnet50", 1, {}), ("c", "resnet101", 0, {})), AXES)


def test_an_override_edited_between_sweeps_is_refused_naming_the_key() -> None:
    runs = _runs(("a", "resnet50", 0, {"optim.lr": "0.01"}), ("b", "resnet50", 1, {"optim.lr": "0.02"}))
    with pytest.raises(AnalysisError) as err:
        check_one_configuration(runs, AXES)
    assert str(err.value) == (
        "iterations=6, resnet50: runs a and b differ in optim.lr as well as the seed: they are not seeds of one "
        "configuration (make the key a grid axis, or report them as separate experiments)"
    )


def test_a_seed_twice_is_an_error_not_two_samples() -> None:
    runs = _runs(("a", "resnet101", 3, {}), ("a-again", "resnet101", 3, {}), ("b", "resnet101", 4, {}))
    with pytest.raises(AnalysisError, match=r"^iterations=6, resnet101: seed 3 comes 2 times \(runs a, a-again\)"):
        check_one_configuration(runs, AXES)


def test_runs_of_two_specs_in_one_experiment_are_refused_naming_the_keys() -> None:
    """Two specs sharing a name (one experiment) on different bases: every differing key up to four, then …"""
    other = {"model.output_stride": "8", "data.crop_size": "[512, 1024]", "optim.lr": "0.02", "train.amp": "bf16"}
    runs = _runs(("a", "resnet101", 0, {}), ("b", "resnet101", 1, {**other, "eval.flip": "True"}))
    with pytest.raises(AnalysisError) as err:
        check_one_configuration(runs, AXES)
    assert (
        "runs a and b differ in data.crop_size, eval.flip, model.output_stride, optim.lr … as well as the seed"
        in str(err.value)
    )


def test_a_grid_axis_makes_cells_of_its_own_not_a_difference() -> None:
    """The same key as a recorded grid axis: its values are separate cells, each one configuration."""
    axes = StudyAxes("resnet101", "resnet50", ("train.iterations", "optim.lr"))
    runs = _runs(*((f"{lr}-{s}", "resnet50", s, {"optim.lr": lr}) for lr in ("0.01", "0.02") for s in (0, 1)))
    check_one_configuration(runs.assign(**{"optim.lr": [c.optim.lr for c in runs.config]}), axes)
