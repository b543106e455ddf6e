"""The probes of what crosses the channel: features, heads, CKA, gap closed, verdicts."""

import math

import jax
import numpy as np
import pytest

from scu_jax import config as config_lib, init_system, measured_snr_db, presets, probes
from scu_jax.data import add_trigger
from scu_jax.experiments.aggregate import aggregate
from scu_jax.experiments.probes import probe_lines, probe_summary, report_probes
from scu_jax.runs import build


@pytest.fixture(scope="module")
def untrained():
    config = presets.apply_variant(config_lib.default_config(), "smoke")
    split, system, shape = build.build_for(config)
    variables = jax.device_get(init_system(system, jax.random.PRNGKey(0), shape))
    protocol = build.protocol_of(config)
    return split, system, variables["params"], protocol


def _trigger_weights(params, weight):
    """The encoder with every weight from the trigger's pixels set to `weight`: 1 plants the
    trigger in the latent (it shifts μ by several σ), 0 leaves the encoder blind to it."""
    trigger = add_trigger(np.zeros((1, 28, 28, 1), np.uint8)).reshape(-1) > 0
    kernel = np.array(params["codec"]["encoder"]["hidden"]["kernel"])
    kernel[trigger] = weight
    return {**params, "codec": {**params["codec"], "encoder": {
        **params["codec"]["encoder"], "hidden": {**params["codec"]["encoder"]["hidden"],
                                                 "kernel": kernel}}}}


def test_attack_rows_are_the_relearning_attacks_seeded_split():
    attack, held_out = probes.attack_rows(61, 0.1, 16, seed=3)
    assert (len(attack), len(held_out)) == (16, 45)  # at least one batch of 16
    assert sorted(np.concatenate([attack, held_out]).tolist()) == list(range(61))
    again = probes.attack_rows(61, 0.1, 16, seed=3)
    np.testing.assert_array_equal(again[0], attack)
    assert len(probes.attack_rows(240, 0.25, 16, seed=0)[0]) == 60
    assert len(probes.attack_rows(3, 0.9, 16, seed=0)[1]) == 1  # one image always held out
    with pytest.raises(ValueError, match="needs 2 or more"):
        probes.attack_rows(1, 0.1, 16, seed=0)


def test_features_are_z_then_the_channel_output_at_each_snr(untrained):
    split, system, params, protocol = untrained
    key = jax.random.PRNGKey(5)
    features = probes.transmitted_features(system, params, {}, split.test_images[:200],
                                           snrs=(-5.0, 10.0, 30.0), key=key, batch_size=100)
    assert features.shape == (4, 200, 20)
    # Every system is read with the same draws: the same key gives the same z and y.
    again = probes.transmitted_features(system, params, {}, split.test_images[:200],
                                        snrs=(-5.0, 10.0, 30.0), key=key, batch_size=100)
    np.testing.assert_array_equal(features, again)
    for index, snr in enumerate((-5.0, 10.0, 30.0), start=1):  # AWGN: the SNR it was asked for
        assert float(measured_snr_db(features[0], features[index])) == pytest.approx(snr, abs=0.5)
    twice = probes.transmitted_features(system, params, {}, split.test_images[:10], snrs=(0.0,),
                                        key=key, batch_size=100, draws=2)
    assert twice.shape == (2, 20, 20) and not np.allclose(twice[:, :10], twice[:, 10:])


def test_linear_cka_is_one_for_the_same_representation_and_low_for_unrelated():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 12))
    rotation = np.linalg.qr(rng.normal(size=(12, 12)))[0]
    assert probes.linear_cka(x, 2.5 * x @ rotation + 3.0) == pytest.approx(1.0)
    assert probes.linear_cka(x, rng.normal(size=(300, 12))) < 0.1
    assert 0.0 <= probes.linear_cka(x, x[:, :3]) <= 1.0


def test_the_heads_read_a_trigger_the_transmitter_sends_and_not_one_it_cannot(untrained):
    split, system, params, protocol = untrained
    params, blind = _trigger_weights(params, 1.0), _trigger_weights(params, 0.0)
    kwargs = dict(snrs=(0.0, 20.0), references={"original": (params, {}), "retrain": (blind, {})})
    carrier = probes.probe_system(system, params, {}, split, protocol, **kwargs)
    unseeing = probes.probe_system(system, blind, {}, split, protocol, **kwargs)
    features = ("z", "y0dB", "y20dB")
    for head in probes.HEADS:
        for feature in features:
            value, se = carrier[f"probe_{head}_{feature}"], carrier[f"probe_{head}_{feature}_se"]
            assert 0.0 <= value <= 1.0 and 0.0 < se < 0.1
        # A trigger that crosses the channel is read back at 20 dB; a blind encoder sends the
        # same latent with and without it, so the head can only guess (the attack pairs D_e
        # with as many clean base-class images).
        assert carrier[f"probe_{head}_y20dB"] > 0.85
        assert unseeing[f"probe_{head}_y20dB"] < 0.75
        assert probes.separates(carrier[f"probe_{head}_z"], unseeing[f"probe_{head}_z"],
                                carrier[f"probe_{head}_z_se"], unseeing[f"probe_{head}_z_se"])
    # CKA: each system against itself is 1; the two against each other alike either way round.
    assert carrier["probe_cka_original_test"] == pytest.approx(1.0)
    assert unseeing["probe_cka_retrain_test"] == pytest.approx(1.0)
    assert unseeing["probe_cka_original_test"] == pytest.approx(carrier["probe_cka_retrain_test"])
    assert (carrier["probe_attack_images"], carrier["probe_heldout_images"]) == (16, 45)
    assert carrier["probe_fit_images"] == len(split.remain_labels)  # fewer than 2,000 here
    assert len(probes.probe_keys(carrier)) == 4 * len(features) + 2 * 3


def test_gap_closed_puts_the_original_at_0_and_retraining_at_1():
    assert probes.gap_closed(0.9, 0.9, 0.2) == 0.0 and probes.gap_closed(0.2, 0.9, 0.2) == 1.0
    assert probes.gap_closed(0.55, 0.9, 0.2) == pytest.approx(0.5)
    assert math.isnan(probes.gap_closed(0.5, 0.4, 0.4))
    assert probes.separates(0.9, 0.2, 0.03, 0.03)
    assert not probes.separates(0.9, 0.8, 0.03, 0.03)  # 0.1 apart is 2.4 standard errors
    assert not probes.separates(0.90, 0.89, 0.0, 0.0)  # under 0.02 apart: no scale to read
    assert probes.verdict(0.95, {"a": 0.2}) == probes.HIDDEN
    assert probes.verdict(0.95, {"a": 0.7}) == probes.verdict(1.0, {}) == probes.ERASED
    assert probes.verdict(0.5, {"a": 1.0}) == probes.NOT_ERASED
    assert probes.verdict(float("nan"), {}) == "n/a"


def _entry(backdoor, head, se=0.01, cka=None):
    entry = {"seeds": 3, "diverged": 0, "backdoor_accuracy": (backdoor, 0.0, 3),
             "num_erased": (240.0, 0.0, 3), "probe_head_linear_y5dB": (head, 0.0, 3),
             "probe_head_linear_y5dB_se": (se, 0.0, 3), "probe_knn_z": (0.01, 0.0, 3),
             "probe_knn_z_se": (0.005, 0.0, 3)}
    return entry


def test_the_summary_flags_hidden_systems_and_reports_blind_probes():
    summary = probe_summary({"original": _entry(0.92, 0.91), "retrain": _entry(0.01, 0.61),
                             "scu": _entry(0.0, 0.92), "ssd": _entry(0.9, 0.9),
                             "cleaned": _entry(0.02, 0.63)})
    systems = summary["systems"]
    assert systems["original"]["gap_closed"] == {"probe_head_linear_y5dB": 0.0}
    assert systems["retrain"]["gap_closed"]["probe_head_linear_y5dB"] == pytest.approx(1.0)
    assert systems["retrain"]["receiver_gap_closed"] == pytest.approx(1.0)
    assert systems["scu"]["verdict"] == probes.HIDDEN and systems["ssd"]["verdict"] == "not erased"
    assert systems["cleaned"]["verdict"] == probes.ERASED
    assert summary["probes"]["probe_knn_z"]["separates"] is False  # the same for both: useless
    lines = "\n".join(probe_lines(summary))
    assert "| scu | 1.01 | head_linear_y5dB | -0.03 | hidden, not erased |" in lines
    assert "| knn_z | 0.010 | 0.010 | **no** | – | – | – | – | – |" in lines
    assert probe_summary({"original": _entry(0.9, 0.9)}) is None  # no retraining: no scale


def test_the_report_has_a_probe_section_per_setting_and_a_figure(tmp_path):
    rows = []
    for seed in (0, 1):
        for method, backdoor, head in (("original", 0.92, 0.9), ("retrain", 0.01, 0.6),
                                       ("scu", 0.05, 0.88 + 0.01 * seed)):
            rows.append({"group": "g", "method": method, "dataset": "mnist5k", "channel": "awgn",
                         "family": "paper", "snr_db": 5.0, "edr": 0.06, "beta_u": None,
                         "seed": seed, "status": "ok", "backdoor_accuracy": backdoor,
                         "num_erased": 240, "probe_head_mlp_z": head,
                         "probe_head_mlp_z_se": 0.02, "probe_head_mlp_y5dB": head - 0.1,
                         "probe_head_mlp_y5dB_se": 0.02})
    section, figures = report_probes(aggregate(rows), tmp_path)
    text = "\n".join(section)
    assert text.startswith("## Is it gone?") and figures == ["probes_0.png", "probes_0.pdf"]
    assert "#### mnist5k, awgn (paper) at 5 dB, EDR 6 %" in text
    assert "| scu | 0.96 | head_mlp_z | 0.05 | hidden, not erased |" in text
    assert (tmp_path / "probes_0.png").stat().st_size > 10_000
    assert report_probes(aggregate([{**r, "method": "scu"} for r in rows]), tmp_path) == ([], [])
