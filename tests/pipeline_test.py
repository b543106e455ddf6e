"""The main job end to end on the smoke config: one table, resumable, nothing run twice."""

import json

import pytest

from scu_jax import config as config_lib
from scu_jax import pipeline


@pytest.mark.slow
def test_pipeline_compares_methods_and_reuses_finished_stages(tmp_path):
    config = config_lib.apply_variant(config_lib.default_config(), "smoke")
    config.evaluation.mi_steps = 0
    summary = pipeline.run_pipeline(config, str(tmp_path), seeds=[0], methods=["retrain", "scu", "vbu"])
    assert list(summary) == ["original", "retrain", "scu", "vbu"]
    saved = json.loads((tmp_path / "comparison.json").read_text())
    assert saved == summary
    table = (tmp_path / "comparison.md").read_text()
    assert table.splitlines()[0].startswith("| method | backdoor % |") and len(table.splitlines()) == 6
    assert summary["retrain"]["speedup"]["mean"] == pytest.approx(1.0)
    assert summary["scu"]["speedup"]["mean"] > 1.0  # the step budget alone makes SCU cheaper
    assert "mse_to_retrain" in summary["scu"] and "mia_auc" in summary["original"]

    checkpoints = {p: p.read_bytes() for p in tmp_path.rglob("checkpoints/**/*") if p.is_file()}
    again = pipeline.run_pipeline(config, str(tmp_path), seeds=[0], methods=["retrain", "scu", "vbu"])
    # Nothing was trained or unlearned again: same checkpoints, same measured times and metrics.
    assert {p: p.read_bytes() for p in tmp_path.rglob("checkpoints/**/*") if p.is_file()} == checkpoints
    assert again == summary
    with pytest.raises(ValueError, match="unknown method"):
        pipeline.run_pipeline(config, str(tmp_path), seeds=[0], methods=["magic"])
