"""The results file: rows written whole, lines cut short left out, results typed."""

import math
import os
import threading

import pytest

from tfbn.results import (RESULT_COLUMNS, StudyResults, TrialResult, append_row,
                          drop_incomplete_lines, missing_points, read_results, read_rows,
                          write_atomically)

COLUMNS = ("trial", "run", "bn", *RESULT_COLUMNS)
OK = {"trial": "0", "run": "bn=none", "bn": "none", "status": "ok", "steps_run": 100,
      "final_accuracy": 0.25, "best_accuracy": 0.5, "steps_to_threshold": None,
      "final_loss": float("nan"), "seconds": 1.5}
FAILED = {"trial": "1", "run": "bn=before", "bn": "before", "status": "failed",
          "message": 'RuntimeError: "out of memory", twice'}


def test_that_rows_read_back_as_written_and_typed(tmp_path):
    path = tmp_path / "results.csv"
    append_row(path, OK, COLUMNS)
    append_row(path, FAILED, COLUMNS)
    columns, rows, dropped = read_results(path)
    assert columns == COLUMNS and dropped == 0
    assert [row["run"] for row in rows] == ["bn=none", "bn=before"]
    ok, failed = (TrialResult.from_row(row) for row in rows)
    assert (ok.status, ok.steps_run, ok.final_accuracy, ok.best_accuracy) == ("ok", 100, 0.25, 0.5)
    assert type(ok.steps_run) is int and ok.steps_to_threshold is None and math.isnan(ok.final_loss)
    assert failed == TrialResult(status="failed", message=FAILED["message"])


def test_that_a_line_cut_short_is_left_out_and_dropped(tmp_path):
    path = tmp_path / "results.csv"
    append_row(path, OK, COLUMNS)
    append_row(path, FAILED, COLUMNS)
    whole = path.read_text()
    append_row(path, {**OK, "trial": "2", "run": "bn=after", "bn": "after"}, COLUMNS)
    text = path.read_text()
    for cut in range(len(whole) + 1, len(text)):  # every length short of the whole last line
        path.write_text(text[:cut])
        assert [row["run"] for row in read_rows(path)] == ["bn=none", "bn=before"], cut
    path.write_text(whole + "2,bn=after,after,ok,100,0.2,0.25\n")  # a line with too few fields
    assert read_results(path)[2] == 1
    assert drop_incomplete_lines(path) == 1 and path.read_text() == whole
    assert drop_incomplete_lines(path) == 0 and path.read_text() == whole


@pytest.mark.parametrize("text", ["", "trial,run,b"])
def test_that_a_file_without_a_whole_header_holds_nothing_and_is_removed(tmp_path, text):
    path = tmp_path / "results.csv"
    path.write_text(text)
    assert read_results(path) == ((), [], int(bool(text)))
    drop_incomplete_lines(path)
    assert not path.exists()


def test_that_concurrent_writers_leave_one_header_and_every_row_whole(tmp_path):
    path = tmp_path / "results.csv"

    def write(i):
        for j in range(20):
            append_row(path, {**OK, "trial": str(i), "run": f"w{i}-{j}"}, COLUMNS)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    columns, rows, dropped = read_results(path)
    assert columns == COLUMNS and dropped == 0
    assert sorted(row["run"] for row in rows) == sorted(f"w{i}-{j}" for i in range(4) for j in range(20))
    assert path.read_text().count("trial,run") == 1


def test_that_an_atomic_write_leaves_the_old_file_when_it_fails(tmp_path):
    path = tmp_path / "config.yaml"
    write_atomically(path, "old\n")
    with pytest.raises(TypeError):
        write_atomically(path, None)  # fails while writing the temporary file
    assert path.read_text() == "old\n" and os.listdir(tmp_path) == ["config.yaml"]


def test_that_missing_points_are_those_without_a_row():
    points = [{"bn": "none"}, {"bn": "before"}, {"bn": "after"}]
    assert missing_points([OK], points) == ["bn=before", "bn=after"]
    results = StudyResults([OK], missing=["bn=before"], report=None)
    assert results == [OK] and results.missing == ["bn=before"] and results.report is None
