"""A trial's result, the results file of a study (one CSV row per finished trial) and its
summary table."""

import csv
import dataclasses
import io
import math
import os
from typing import Optional


def _column(why, hparams=None):
    """A result field: what it holds, and its HParams metric description if it is one."""
    return dataclasses.field(default=None, metadata={"why": why, "hparams": hparams})


@dataclasses.dataclass(frozen=True)
class TrialResult:
    """What one trial gave: a row of ``results.csv`` and its HParams session's metrics.

    `tfbn.training.summarise` makes it from the evaluation history; a trial
    that failed has only ``status`` ``failed`` and its ``message``.
    """

    status: str = _column("ok, diverged (the loss became NaN or infinite) or failed")
    steps_run: Optional[int] = _column("the last evaluated step")
    final_accuracy: Optional[float] = _column(
        "test accuracy at the last finite evaluation (BN moving statistics)",
        "test accuracy at the last step (BN moving statistics)")
    best_accuracy: Optional[float] = _column("best test accuracy over the evaluations",
                                             "best test accuracy over the evaluations")
    steps_to_threshold: Optional[int] = _column(
        "first evaluated step whose test accuracy reached train.threshold; None: never",
        "first evaluated step reaching train.threshold (missing: never reached)")
    final_loss: Optional[float] = _column("test loss at the last finite evaluation")
    final_accuracy_batch_stats: Optional[float] = _column(
        "test accuracy with BN normalizing by each test batch's own statistics; None without BN")
    seconds: Optional[float] = _column("wall seconds from the start of the trial's pack to its end")
    message: Optional[str] = _column("why a failed trial failed")


RESULT_COLUMNS = tuple(field.name for field in dataclasses.fields(TrialResult))


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
