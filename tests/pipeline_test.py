"""The main job end to end on the smoke config: one table, resumable, nothing run twice."""

import json

import pytest

from scu_jax import config as config_lib
from scu_jax import presets
from scu_jax.experiments import pipeline


@pytest.mark.slow
def test_pipeline_compares_methods_and_reuses_finished_stages(tmp_path):
    config = presets.apply_variant(config_lib.default_config(), "smoke")
    config.evaluation.mi_steps = 0
    config.evaluation.probes, config.evaluation.probe_snrs = True, (0.0, 20.0)
    summary = pipeline.run_pipeline(config, str(tmp_path), seeds=[0], methods=["retrain", "scu", "vbu"])
    # Every row is read by the original receiver; retraining's own (trained on D_r) is a row apart.
    assert list(summary) == ["original", "retrain", "retrain (own receiver)", "scu", "vbu"]
    assert set(summary["retrain (own receiver)"]) == {"seeds", "diverged", "backdoor_accuracy",
                                                      "accuracy_clean", "accuracy_test"}
    saved = json.loads((tmp_path / "comparison.json").read_text())
    assert saved["methods"] == summary
    assert saved["protocol"].startswith("trained through awgn, paper family, 5 dB, noise per element")
    lines = (tmp_path / "comparison.md").read_text().splitlines()
    assert lines[0] == f"Protocol: {saved['protocol']}." and lines[1] == ""
    assert lines[2].startswith("| method | backdoor % |") and lines[2 + 7] == ""
    # The probes: retraining closes every separating probe's gap by construction, the original
    # none; the probes that do not tell them apart (the smoke system's heads) are listed as such.
    probes = json.loads((tmp_path / "probes.json").read_text())
    usable = [key for key, probe in probes["probes"].items() if probe["separates"]]
    assert usable and len(usable) < len(probes["probes"]) == 4 * 3 + 2 * 3
    assert all(probes["systems"]["retrain"]["gap_closed"][key] == pytest.approx(1.0)
               and probes["systems"]["original"]["gap_closed"][key] == 0.0 for key in usable)
    assert probes["systems"]["original"]["verdict"] == "not erased"
    assert set(probes["systems"]) == {"original", "retrain", "scu", "vbu"}
    text = "\n".join(lines)
    assert "## Is it gone? Probes of what crosses the channel" in text and "| **no** |" in text
    assert (tmp_path / "probes.png").stat().st_size > 10_000
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


def test_a_diverged_seed_is_counted_apart_and_speedups_pair_seeds():
    rows = {
        "original": [{"seed": 0, "backdoor_accuracy": 0.9}, {"seed": 1, "backdoor_accuracy": 0.8}],
        "retrain": [{"seed": 0, "unlearn_seconds": 60.0}, {"seed": 1, "unlearn_seconds": 40.0}],
        # Seed 0 diverged: seed 1's speed-up must use seed 1's retraining (40 s), not seed 0's.
        "hbu": [{"seed": 0, "status": "non-finite", "error": "hbu: loss became non-finite"},
                {"seed": 1, "unlearn_seconds": 0.5, "backdoor_accuracy": 0.01}],
    }
    summary = pipeline.summarise(rows)
    assert summary["hbu"]["seeds"] == 1 and summary["hbu"]["diverged"] == 1
    assert summary["hbu"]["speedup"]["mean"] == pytest.approx(80.0)
    assert summary["hbu"]["backdoor_accuracy"]["mean"] == pytest.approx(0.01)
    table = pipeline.markdown_table(summary)
    assert "| hbu (1 of 2 diverged) | 1.0 |" in table


def test_seeds_run_as_one_program_say_that_their_time_is_the_programs():
    rows = {"retrain": [{"seed": s, "unlearn_seconds": 60.0} for s in (0, 1)],
            "salun": [{"seed": s, "unlearn_seconds": 2.0, "runs_together": 2} for s in (0, 1)],
            "scu": [{"seed": s, "unlearn_seconds": 0.5} for s in (0, 1)]}
    summary = pipeline.summarise(rows)
    assert summary["salun"]["runs_together"] == 2 and "runs_together" not in summary["scu"]
    table = pipeline.markdown_table(summary)
    assert "| salun (2 seeds as one program, its time) |" in table and "| scu |" in table
