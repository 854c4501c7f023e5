"""The results file of a study (one CSV row per finished trial) and its summary table."""

import csv
import io
import math
import os

RESULT_COLUMNS = ("status", "steps_run", "final_accuracy", "best_accuracy",
                  "steps_to_threshold", "final_loss", "final_accuracy_batch_stats", "seconds")


def append_row(path, row, columns):
    """Appends one row to a CSV file, writing the header if the file is new.

    Each row goes out in a single ``write`` on a file opened for appending, so
    a crash never leaves half a row and concurrent writers never interleave.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as f:
            f.write(_csv_line(columns))
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, _csv_line([row.get(c) for c in columns]).encode())
    finally:
        os.close(fd)


def _csv_line(values):
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(["" if v is None else v for v in values])
    return buffer.getvalue()


def read_rows(path):
    """All rows of a results file as dicts of strings; empty if there is none."""
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def format_table(rows, factors):
    """A plain-text table of trials: their factor levels and summary metrics."""
    header = [*factors, "final acc", "best acc", "steps to thr", "status"]
    body = [[*(row[f] for f in factors), _fmt(row["final_accuracy"]),
             _fmt(row["best_accuracy"]), row["steps_to_threshold"] or "never", row["status"]]
            for row in rows]
    widths = [max(len(str(line[i])) for line in [header, *body]) for i in range(len(header))]
    return "\n".join("  ".join(str(cell).ljust(w) for cell, w in zip(line, widths)).rstrip()
                     for line in [header, *body])


def _fmt(value):
    if value in ("", None):
        return "-"
    number = float(value)
    return "nan" if math.isnan(number) else f"{number:.4f}"
