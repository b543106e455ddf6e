"""The append-only rows file survives a cut last line; the CSV has the key fields first."""

import json

from scu_jax.experiments.rows import KEY_FIELDS, read_rows, write_csv
from scu_jax.experiments.workdir import CSV_FILE, ROWS_FILE


def test_read_rows_drops_a_cut_last_line_and_repeats(tmp_path):
    rows = [{"cell": "a", "x": 1}, {"cell": "b", "x": 2}, {"cell": "a", "x": 3}]
    text = "".join(json.dumps(row) + "\n" for row in rows) + '{"cell": "c", "x"'
    (tmp_path / ROWS_FILE).write_text(text)
    assert [row["x"] for row in read_rows(tmp_path)] == [1, 2]
    assert (tmp_path / ROWS_FILE).read_text() == text  # reading alone changes nothing
    assert [row["x"] for row in read_rows(tmp_path, repair=True)] == [1, 2]
    assert (tmp_path / ROWS_FILE).read_text().count("\n") == 2


def test_csv_has_key_fields_first_then_scalars_sorted(tmp_path):
    rows = [{"cell": "a", "dataset": "mnist5k", "method": "scu", "beta_u": None, "zeta": 1.0,
             "alpha": 2, "history": [1, 2]}]
    write_csv(tmp_path, rows)
    header, line = (tmp_path / CSV_FILE).read_text().splitlines()
    assert header.split(",") == list(KEY_FIELDS) + ["alpha", "cell", "zeta"]  # lists left out
    assert line.split(",")[KEY_FIELDS.index("beta_u")] == ""  # None is an empty field
