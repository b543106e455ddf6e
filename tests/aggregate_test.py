"""Statistics over seeds: diverged rows counted apart, speed-ups paired with their own retraining."""

from scu_jax.experiments.aggregate import aggregate, format_statistic, with_speedups
from scu_jax.experiments.report import known_fraction_lines, results_tables


def test_a_diverged_row_is_counted_apart_not_averaged():
    rows = [{"cell": f"g/{m}", "group": "g", "method": m, "dataset": "mnist5k", "channel": "awgn",
             "family": "paper", "snr_db": 5.0, "edr": 0.06, "beta_u": None, "seed": 0,
             "status": status, "backdoor_accuracy": 0.1}
            for m, status in (("scu", "ok"), ("vbu", "non-finite"))]
    summary = aggregate(rows)
    by_method = {key[-1]: entry for key, entry in summary.items()}
    assert by_method["vbu"]["diverged"] == 1 and by_method["vbu"]["seeds"] == 0
    assert "backdoor_accuracy" not in by_method["vbu"]
    assert "(+1 diverged)" in results_tables(summary)


def test_speedups_pair_each_row_with_its_own_retraining():
    rows = [{"group": g, "method": m, "unlearn_seconds": s, "status": "ok"}
            for g, m, s in (("a", "retrain", 60.0), ("b", "retrain", 40.0), ("b", "scu", 0.5),
                            ("a", "original", 1.0))]
    timed = {(row["group"], row["method"]): row.get("speedup") for row in with_speedups(rows)}
    assert timed == {("a", "retrain"): None, ("b", "retrain"): None, ("b", "scu"): 80.0,
                     ("a", "original"): None}
    # The main job pairs by seed and shows retraining's own speed-up (1).
    by_seed = [{**row, "seed": row["group"]} for row in rows]
    timed = with_speedups(by_seed, pair_by="seed", reference_too=True)
    assert [row.get("speedup") for row in timed] == [1.0, 1.0, 80.0, None]


def test_format_statistic_shows_the_spread_of_several_values_only():
    assert format_statistic((0.5, 0.01, 3), 100, 1) == "50.0 ± 1.0"
    assert format_statistic((0.5, 0.0, 1), 100, 1) == "50.0"
    assert format_statistic((0.5, 0.0, 1), 100, 1, spread=True) == "50.0 ± 0.0"
    assert format_statistic(None, 100, 1) == "–"


def test_known_fractions_pair_with_their_retraining_and_find_the_smallest_that_clears():
    rows = []
    for seed in (0, 1):
        for known, backdoors in ((0.1, {"retrain": 0.5, "scu": 0.6}),
                                 (0.5, {"retrain": 0.15, "scu": 0.3}),
                                 (1.0, {"retrain": 0.02, "scu": 0.1 + 0.2 * seed})):
            for method, backdoor in backdoors.items():
                rows.append({"group": "g", "method": method, "dataset": "mnist5k",
                             "channel": "awgn", "family": "paper", "snr_db": 5.0, "edr": 0.06,
                             "beta_u": None, "known_fraction": known, "seed": seed,
                             "status": "ok", "backdoor_accuracy_all": backdoor,
                             "accuracy_test": 0.8,
                             "unlearn_seconds": 40.0 * known if method == "retrain" else 0.5})
    timed = with_speedups(rows)
    assert {(r["known_fraction"], r.get("speedup")) for r in timed if r["method"] == "scu"} == {
        (0.1, 8.0), (0.5, 40.0), (1.0, 80.0)}
    lines = known_fraction_lines(aggregate(timed))
    # scu at 100 %: 10 % and 30 % over the seeds, a mean of 20 %: not under 20 %.
    assert "| retrain | 50.0 ± 0.0 | 15.0 ± 0.0 | 2.0 ± 0.0 | 50 % | 80.0 ± 0.0 |" in lines
    assert "| scu | 60.0 ± 0.0 | 30.0 ± 0.0 | 20.0 ± 10.0 | none | – |" in lines
    assert "#### mnist5k, awgn (paper) at 5 dB, EDR 6 %, 10 % of D_e known" in results_tables(
        aggregate(timed))
