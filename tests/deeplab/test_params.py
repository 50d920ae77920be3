"""A run read back from its params: types checked, today's rules across fields not (a run that ran is read as it
ran), and the same Config for every run of a store however often it is read."""

from __future__ import annotations

import pytest

from deeplab.config import from_dict
from deeplab.errors import DeeplabError
from deeplab.params import config_from_params


def test_an_imported_logs_few_params_read_back_without_todays_rules() -> None:
    # 500 iterations is below the default warm-up: a new config is refused, a recorded run is read as it ran
    params = {"model.backbone": "resnet101", "train.iterations": "500", "import.validations": "3"}
    with pytest.raises(DeeplabError, match="schedule.warmup_iters must be <"):
        from_dict({"model": {"backbone": "resnet101"}, "train": {"iterations": 500}})
    for _ in range(2):  # the second read comes from the cached values, unchanged by the first
        cfg = config_from_params(params)
        assert (cfg.model.backbone, cfg.train.iterations, cfg.data.crop_size) == ("resnet101", 500, (768, 768))
    with pytest.raises(DeeplabError, match="train.iterations must be an integer"):
        config_from_params({"train.iterations": "many"})
