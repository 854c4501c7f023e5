"""A trial's result, the results file of a study (one CSV row per finished trial) and its
summary table.

The results file is the study's record of which design points are finished: a point is
finished once its row is in the file. Rows are written so that a crash leaves each one
whole or absent: one ``write`` of a complete line, flushed to disk; a line that a crash
cut short is left out when the file is read.
"""

import csv
import dataclasses
import errno
import io
import math
import os
import tempfile
import typing
from typing import Optional

from tfbn.design import run_name


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

    @classmethod
    def from_row(cls, row):
        """The result a ``results.csv`` row records, each field of its own type.

        A field that the row lacks (a file of an earlier version) is None.

        Raises:
            ValueError: a field holds no value of its type (a row that is not whole).
        """
        types = typing.get_type_hints(cls)
        return cls(**{name: _parse(row.get(name), types[name]) for name in RESULT_COLUMNS})


RESULT_COLUMNS = tuple(field.name for field in dataclasses.fields(TrialResult))


def _parse(text, annotation):
    if text in ("", None):
        return None
    kind = (typing.get_args(annotation) or (annotation,))[0]  # Optional[int] -> int
    return kind(text)


class StudyResults(list):
    """A study's results: one dict per design point that has a row, in design order.

    Each row holds ``trial`` (keras-tuner's trial id) and ``run`` (the run
    folder's name) as strings, the point's factor levels as the design gives
    them (numbers as numbers), and the fields of its `TrialResult`, each of
    its own type (None where the trial has no value).

    Attributes:
        missing: Run names of the design points without a row: not trained
            yet, or stopped before their result was recorded. Running the
            study again trains them.
        report: Path of the report written at the end of the study, or None.
    """

    def __init__(self, rows, missing=(), report=None):
        super().__init__(rows)
        self.missing = list(missing)
        self.report = report


def write_atomically(path, text):
    """Writes a whole file, or leaves the earlier one: a temporary file, fsync, rename."""
    temporary = _write_aside(path, text)
    try:
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    _sync_folder(os.path.dirname(path) or ".")


def _write_aside(path, text):
    """Writes ``text`` to a new temporary file beside ``path``, flushed to disk; returns its path."""
    descriptor, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.",
                                             dir=os.path.dirname(path) or ".")
    try:
        with os.fdopen(descriptor, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        os.remove(temporary)
        raise
    return temporary


def _sync_folder(folder):
    # A rename or a new file is durable once the folder's entry is on disk.
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def append_row(path, row, columns):
    """Appends one row to a CSV file, writing the header if the file is new.

    A new file appears with its header in place (written aside, then linked
    under its name); each row goes out in a single ``write`` on a file opened
    for appending and is flushed to disk, so that concurrent writers never
    interleave and a crash leaves at most a last line cut short, which
    `read_rows` leaves out.

    Raises:
        OSError: the row could not be written whole (a full disk, a read-only
            or vanished folder).
    """
    if not os.path.exists(path):
        _create_with_header(path, columns)
    line = _csv_line([row.get(c) for c in columns]).encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        if os.write(fd, line) != len(line):  # only a full disk writes less
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        os.fsync(fd)
    finally:
        os.close(fd)


def _create_with_header(path, columns):
    temporary = _write_aside(path, _csv_line(columns))
    try:
        os.link(temporary, path)
    except FileExistsError:
        pass  # another writer created it meanwhile: theirs stands
    finally:
        os.remove(temporary)
    _sync_folder(os.path.dirname(path) or ".")


def _csv_line(values):
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(["" if v is None else v for v in values])
    return buffer.getvalue()


def read_results(path):
    """Reads a results file: its columns, its whole rows, and how many lines were not whole.

    A line that a crash cut short (no line end, another number of fields, a
    value that does not parse) is not a row. A file without a whole header
    line (emptied by a full disk) has no columns.

    Returns:
        ``(columns, rows, dropped)``: the header's column names (empty if
        there is no file or no whole header), the rows as dicts of strings,
        and the number of lines left out.
    """
    header, lines, dropped = _whole_lines(path)
    if not header:
        return (), [], dropped
    columns = tuple(next(csv.reader([header])))
    return columns, [dict(zip(columns, next(csv.reader([line])))) for line in lines], dropped


def drop_incomplete_lines(path):
    """Rewrites a results file with its whole rows only; removes one without a whole header.

    Returns:
        The number of lines dropped (`read_results`).
    """
    header, lines, dropped = _whole_lines(path)
    if not header:
        os.remove(path)
    elif dropped:
        write_atomically(path, header + "".join(lines))
    return dropped


def _whole_lines(path):
    """The header line of a results file and its whole row lines, as written, and how many lines were not."""
    if not os.path.exists(path):
        return "", [], 0
    with open(path, newline="") as f:
        lines = f.read().splitlines(keepends=True)
    if not lines or not lines[0].endswith("\n"):
        return "", [], len(lines)
    columns = next(csv.reader([lines[0]]))
    whole = [line for line in lines[1:] if line.endswith("\n") and _whole(columns, line)]
    return lines[0], whole, len(lines) - 1 - len(whole)


def _whole(columns, line):
    values = next(csv.reader([line]), [])
    if len(values) != len(columns):
        return False
    try:
        TrialResult.from_row(dict(zip(columns, values)))
    except ValueError:
        return False
    return True


def read_rows(path):
    """The whole rows of a results file as dicts of strings; empty if there is none."""
    return read_results(path)[1]


def missing_points(rows, points):
    """The run names of the design points that no row names, in design order.

    Args:
        rows: Results rows (dicts with a ``run`` name).
        points: The design points (`tfbn.design.design_points`).
    """
    recorded = {row["run"] for row in rows}
    return [run_name(point) for point in points if run_name(point) not in recorded]


def format_table(rows, factors):
    """A plain-text table of trials: their factor levels and summary metrics."""
    header = [*factors, "final acc", "best acc", "steps to thr", "status"]
    body = [[*(row[f] for f in factors), _fmt(row["final_accuracy"]),
             _fmt(row["best_accuracy"]), _steps(row["steps_to_threshold"]), row["status"]]
            for row in rows]
    widths = [max(len(str(line[i])) for line in [header, *body]) for i in range(len(header))]
    return "\n".join("  ".join(str(cell).ljust(w) for cell, w in zip(line, widths)).rstrip()
                     for line in [header, *body])


def _steps(value):
    return "never" if value in ("", None) else value


def _fmt(value):
    if value in ("", None):
        return "-"
    number = float(value)
    return "nan" if math.isnan(number) else f"{number:.4f}"
