"""The deviations table of a real run: its Config rebuilt from the params MLflow stored for it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mlflow.tracking import MlflowClient

from deeplab.config import config_hash
from deeplab.fidelity import deviations_markdown
from deeplab.params import config_from_params

if TYPE_CHECKING:
    from conftest import SweepStore


def test_each_run_of_a_sweep_gets_its_own_config_back(sweep_store: SweepStore) -> None:
    client = MlflowClient(sweep_store.tracking_uri)
    experiment = client.get_experiment_by_name(sweep_store.experiment)
    runs = [r for r in client.search_runs([experiment.experiment_id]) if "info.config_hash" in r.data.params]
    assert len(runs) == 8
    for run in runs:
        cfg = config_from_params(run.data.params)  # strings, as the store keeps them, info.* keys included
        assert config_hash(cfg) == run.data.params["info.config_hash"]
        assert cfg.model.backbone == run.data.params["model.backbone"]
        table = deviations_markdown(cfg)
        assert "| augmentation order |" in table and "| cannot |" in table
