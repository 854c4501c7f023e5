"""Runs a study's trials with keras-tuner: our oracle proposes, our tuner trains.

`DesignOracle` hands out the packs of a study's design (`tfbn.design`; packs are
the trials that train together, `tfbn.packing`) in a fixed order, each exactly once. keras-tuner's own `GridSearchOracle` derives its next point
from the trials seen so far and does not resume correctly after an
interruption (keras-tuner issue #1055); this oracle's order is a pure function
of the config and the study's ``results.csv`` records which design points are
finished (keras-tuner's own files, written in place, are not trusted), so a
rerun continues where it stopped, and an interrupted pack starts again from
scratch for those of its points that were not recorded yet.

The same path serves one process, several worker processes on one machine
(``distribute.parallel_trials``) and workers on several machines: keras-tuner's
chief/worker mode, where the chief holds the oracle and serves it over gRPC.
"""

import contextlib
import dataclasses
import errno
import glob
import json
import math
import os
import re
import shutil
import sys
import threading
import time
import weakref

import keras_tuner
import tensorflow as tf
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.plugins.hparams import metadata as hparams_metadata
from keras_tuner.engine.trial import Trial, TrialStatus

from tfbn import hparams, interrupts, layout, workers
from tfbn.callbacks import Progress
from tfbn.config import dump_config, flatten, load_config, to_dict
from tfbn.data import load_data, release_data
from tfbn.devices import build_strategy, check_batch_split
from tfbn.errors import ConfigError, DataError
from tfbn.lock import experiment_lock
from tfbn.results import (RESULT_COLUMNS, StudyResults, TrialResult, append_row,
                          drop_incomplete_lines, missing_points, read_results, read_rows,
                          write_atomically)
from tfbn.design import apply_factors, design_points, labels, run_name
from tfbn.packing import plan_packs
from tfbn.training import Target, train_pack

OBJECTIVE = keras_tuner.Objective("final_accuracy", direction="max")
# The config keys a resumed run may change: where and how fast trials run, and how
# often the instruments write, not what a trial computes. Any other key that
# differs from the saved config is refused by name.
FREE_TO_CHANGE = (
    "train.pack", "distribute.strategy", "distribute.devices", "distribute.parallel_trials",
    "distribute.worker_timeout",
    "log.dir", "log.instruments", "log.weights_every", "log.gradients_every", "log.jacobian_every",
    "log.percentiles_every", "log.probe_size", "log.jacobian_mode",
)


class PackFinished(Exception):
    """Raised by a worker that trains one pack per process once that pack has ended."""


class StorageError(interrupts.Stopped):
    """The study could not write its records: a full disk, a read-only or removed folder.

    Not a result of the trials being trained: the study stops at once (a
    `tfbn.interrupts.Stopped`, which keras-tuner does not take for a trial's
    failure), records nothing for them, and trains them when it runs again.

    Attributes:
        path: The file or folder that could not be written.
        cause: Why, as the system says it (``No space left on device``).
    """

    def __init__(self, path, cause):
        self.path = path
        self.cause = cause
        super().__init__(f"cannot write {path}: {cause}. The study stopped without recording the "
                         "trials it was training; free space or fix the folder, then resume")


# What the system says when a file cannot be written: a full disk, a read-only,
# removed or foreign folder, a failing device.
_STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM,
                   errno.ENOENT, errno.EIO)


def storage_error(error, path):
    """The `StorageError` that ``error`` stands for, or None.

    Every `OSError` is one; a TensorFlow error is one when it carries the
    system's words for a file that cannot be written (its summary writers
    report a full disk as ``ResourceExhaustedError``, as they do running
    out of memory, which is a trial's failure).

    Args:
        error: The exception raised.
        path: What was being written, where the error names no file.
    """
    if isinstance(error, StorageError):
        return error
    if isinstance(error, OSError):
        return StorageError(error.filename or path, error.strerror or str(error))
    cause = isinstance(error, tf.errors.OpError) and _storage_cause(error.message)
    if not cause:
        return None
    named = re.search(r"(/\S+?)[;:,]?\s+" + re.escape(cause), error.message)
    return StorageError(named.group(1) if named else path, cause)


@contextlib.contextmanager
def _writing(path):
    """Turns a failure to write a study's files (under ``path``) into a `StorageError`."""
    try:
        yield
    except (OSError, tf.errors.OpError) as error:
        stop = storage_error(error, path)
        if stop is None:
            raise
        raise stop from error


def _storage_cause(message):
    return next((os.strerror(code) for code in _STORAGE_ERRNOS if os.strerror(code) in message), None)


class DesignOracle(keras_tuner.Oracle):
    """An oracle that proposes the packs of a study (`tfbn.packing`), in order.

    Each keras-tuner trial is one pack: its one hyperparameter ``pack`` names
    the pack by its points' run names.

    Args:
        packs: List of `tfbn.packing.Pack`.
        fixed: Hyperparameters recorded with every trial but not varied.
        worker_timeout: Seconds without word from a worker (a call or a
            heartbeat, `tfbn.workers.Heartbeat`) after which its pack is
            proposed to another worker; None: never.
        results_path: The study's ``results.csv``, from which `reload` learns
            which packs are done; None: none is.
        worker_timeout: Seconds without word from a worker (a call or a
            heartbeat, `tfbn.workers.Heartbeat`) after which its pack is
            proposed to another worker; None: never.
        **kwargs: Passed on to `keras_tuner.Oracle`.
    """

    def __init__(self, packs, fixed=None, results_path=None, worker_timeout=None, **kwargs):
        space = keras_tuner.HyperParameters()
        space.Choice("pack", [pack.name for pack in packs], ordered=False)
        for name, value in (fixed or {}).items():
            space.Fixed(name, value)
        super().__init__(objective=OBJECTIVE, max_trials=len(packs), hyperparameters=space,
                         allow_new_entries=False, tune_new_entries=False,
                         # A study records failed trials and goes on, however many fail.
                         max_consecutive_failed_trials=len(packs) + 1, **kwargs)
        self.proposals = [{"pack": pack.name, **(fixed or {})} for pack in packs]
        self.worker_timeout = worker_timeout
        self.lost = []  # a `tfbn.workers.LostPack` for each pack whose worker was lost
        self.silenced = set()  # workers lost for their silence, which may still be running
        self._heard = {}  # tuner id -> when the chief last heard from it
        self._abandoned = set()  # trial ids of packs taken from lost workers
        self.runs = [[run_name(point) for point in pack.points] for pack in packs]
        self.results_path = results_path
        self.worker_timeout = worker_timeout
        self.lost = []  # a `tfbn.workers.LostPack` for each pack whose worker was lost
        self.silenced = set()  # workers lost for their silence, which may still be running
        self._heard = {}  # tuner id -> when the chief last heard from it
        self._abandoned = set()  # trial ids of packs taken from lost workers

    def populate_space(self, trial_id):
        for values in self.proposals:
            if self._compute_values_hash(values) not in self._tried_so_far:
                return {"status": TrialStatus.RUNNING, "values": values}
        return {"status": TrialStatus.STOPPED}

    def reload(self):
        """Rebuilds which packs are done from the study's results file.

        keras-tuner's own ``oracle.json`` and ``trial.json`` files are not read:
        it writes them in place, so that a crash can leave them empty or cut
        short, and a trial created just before a crash counts as tried though
        it never ran. A pack is done once each of its points has a row
        (`finished_rows`); every other pack is proposed again, with the trial
        ids that follow the last done pack's.
        """
        rows = finished_rows(self.results_path) if self.results_path else {}
        done = [all(run in rows for run in runs) for runs in self.runs]
        self._tried_so_far = {self._compute_values_hash(values)
                              for values, is_done in zip(self.proposals, done) if is_done}
        used = max((int(rows[run]["trial"]) + 1 for runs, is_done in zip(self.runs, done)
                    if is_done for run in runs), default=0)
        # keras-tuner numbers a trial by the trials it knows and stops at max_trials: the
        # trials before `used` stand for the done packs, and the rest have room.
        self.max_trials = max(len(self.proposals), used + done.count(False))
        width = len(str(self.max_trials))
        ids = [f"{i:0{width}d}" for i in range(used)]
        self.trials = {i: Trial(self.hyperparameters.copy(), trial_id=i, status=TrialStatus.COMPLETED)
                       for i in ids}

    def save(self):
        # keras-tuner writes this file in place; `reload` never reads it, and it is whole.
        write_atomically(self._get_oracle_fname(), json.dumps(self.get_state()))

    def finished(self):
        """Whether every pack was proposed and none is still running."""
        return not self.ongoing_trials and all(
            self._compute_values_hash(values) in self._tried_so_far for values in self.proposals)

    # Workers that die or fall silent (distributed studies).

    def waiting_packs(self):
        """Whether a pack waits for a worker: not proposed yet, or proposed again."""
        return not all(self._compute_values_hash(values) in self._tried_so_far
                       for values in self.proposals)

    @keras_tuner.synchronized
    def create_trial(self, tuner_id):
        self._heard[tuner_id] = time.monotonic()
        self.check_workers()
        if tuner_id not in self.ongoing_trials and self.ongoing_trials and all(
                self._compute_values_hash(values) in self._tried_so_far for values in self.proposals):
            # Every pack is out, and some still train: the worker asks again (`StudyTuner`),
            # for a pack comes back when its worker is lost.
            self.tuner_ids.add(tuner_id)
            return Trial(self.get_space(), status=TrialStatus.IDLE)
        trial = super().create_trial(tuner_id)
        for lost in self.lost:
            if lost.again and lost.trained_by is None and lost.pack == trial.hyperparameters.values.get("pack"):
                lost.trained_by = tuner_id
        return trial

    @keras_tuner.synchronized
    def end_trial(self, trial):
        if trial.trial_id in self._abandoned:
            return  # a worker lost for its silence ends a pack that went to another one
        super().end_trial(trial)

    def get_trial(self, trial_id):
        if trial_id.startswith(workers.HEARTBEAT_PREFIX):
            return self._heartbeat(trial_id[len(workers.HEARTBEAT_PREFIX):])
        return super().get_trial(trial_id)

    @keras_tuner.synchronized
    def _heartbeat(self, tuner_id):
        """A worker's heartbeat: STOPPED tells it that its pack went to another worker."""
        self._heard[tuner_id] = time.monotonic()
        self.check_workers()
        return Trial(self.get_space(),
                     status=TrialStatus.STOPPED if tuner_id in self.silenced else TrialStatus.RUNNING)

    @keras_tuner.synchronized
    def check_workers(self):
        """Loses the workers not heard from for ``worker_timeout`` seconds (`lose`)."""
        if self.worker_timeout is None:
            return
        now = time.monotonic()
        for tuner_id in list(self.tuner_ids):
            silence = now - self._heard.get(tuner_id, now)
            if silence > self.worker_timeout:
                if self.lose(tuner_id, f"sent nothing for {silence:.0f} s") is not None:
                    self.silenced.add(tuner_id)

    @keras_tuner.synchronized
    def lose(self, tuner_id, reason):
        """Proposes the pack of a worker that died or went silent to the next worker that asks.

        A pack that has lost two workers is given up: it may be what kills them.

        Args:
            tuner_id: The worker's id.
            reason: What happened to it, e.g. ``was killed by SIGKILL``.

        Returns:
            A `tfbn.workers.LostPack`, or None when the worker held no pack.
        """
        self.tuner_ids.discard(tuner_id)
        trial = self.ongoing_trials.pop(tuner_id, None)
        if trial is None:
            return None
        self._abandoned.add(trial.trial_id)
        values = trial.hyperparameters.values
        again = all(lost.pack != values["pack"] for lost in self.lost)
        if again:
            # Proposed again as a new trial, so that the lost worker's calls about the old
            # one, should it still be running, change nothing.
            self._tried_so_far.discard(self._compute_values_hash(values))
            self.max_trials += 1
        self.lost.append(workers.LostPack(tuner_id, values["pack"], reason, again))
        self.save()
        return self.lost[-1]


class StudyTuner(keras_tuner.Tuner):
    """Trains one pack of a study's trials per call of `run_trial`.

    Every design point of the pack is still its own trial to the outside: its
    own run folder, TensorBoard run, HParams session, progress line and row
    in ``results.csv``, written as soon as its branch has finished.

    Args:
        config: The study's `tfbn.config.Config`.
        points: The design points (`tfbn.design.design_points`).
        packs: The packs of those points (`tfbn.packing.plan_packs`).
        experiment_dir: ``<log.dir>/<experiment>``: run directories and results.
        quiet: Print no progress lines.
        one_pack: Raise `PackFinished` once the first pack has ended.
        **kwargs: Passed on to `keras_tuner.Tuner`.
    """

    def __init__(self, config, points, packs, experiment_dir, quiet=False, one_pack=False, **kwargs):
        super().__init__(directory=experiment_dir, project_name="tuner", **kwargs)
        self.one_pack = one_pack
        self.config = config
        self.points = points
        self.packs = {pack.name: pack for pack in packs}
        self.experiment_dir = experiment_dir
        self.quiet = quiet
        self.results_path = os.path.join(experiment_dir, "results.csv")
        self._trial_seconds = []
        self._waiting = False
        # Held open, the folder keeps its identity (inode) even if it is removed meanwhile.
        self._folder = os.open(experiment_dir, os.O_RDONLY)
        weakref.finalize(self, os.close, self._folder)
        # keras-tuner reloads only where its tuner file exists, which this tuner does not write.
        self.reload()

    def reload(self):
        """Rebuilds the oracle's state from the results file (`DesignOracle.reload`)."""
        if not self._is_worker():  # a worker's oracle is the chief's
            self.oracle.reload()

    def save(self):
        # The oracle's state only: the tuner has none of its own to save.
        if not self._is_worker():
            self.oracle.save()

    def run_trial(self, trial, *args, **kwargs):
        pack = self.packs[trial.hyperparameters.get("pack")]
        recorded = finished_rows(self.results_path)
        # Points recorded before a kill, between their branch's end and the pack's, are done.
        scores = [_score(TrialResult.from_row(recorded[run_name(p)]).final_accuracy)
                  for p in pack.points if run_name(p) in recorded]
        branches = [[p for p in branch if run_name(p) not in recorded] for branch in pack.branches]
        branches = [branch for branch in branches if branch]
        if not branches:
            return {"final_accuracy": max(scores)}
        remaining = sum(map(len, branches))
        finished = len(recorded)
        targets, positions = [], {}
        for branch in branches:
            targets.append([])
            for point in branch:
                run_dir = os.path.join(self.experiment_dir, run_name(point))
                # A run folder of an unfinished trial holds a killed run's partial events.
                shutil.rmtree(run_dir, ignore_errors=True)
                with _writing(run_dir):
                    hparams.start_trial(run_dir, f"{self.config.experiment}/{run_name(point)}", point)
                trial_config = apply_factors(self.config, point)
                progress = self._progress(point, trial_config, finished + len(positions),
                                          len(self.points) - finished - remaining, remaining,
                                          live=not positions)
                positions[run_dir] = point
                targets[-1].append(Target(trial_config, run_dir, tuple(progress)))
        start = time.monotonic()

        def record(target, result):
            point = positions.pop(target.log_dir)
            self._record(trial, point, target.log_dir, result)
            scores.append(_score(result.final_accuracy))

        try:
            train_pack(targets, self.distribution_strategy, on_result=record)
        except Exception as error:
            # Not being able to write is no result of the trials: they train again on resuming.
            stop = storage_error(error, self.experiment_dir)
            if stop:
                raise stop from error
            message = f"{type(error).__name__}: {error}".replace("\n", " ")
            for run_dir, point in positions.items():
                self._record(trial, point, run_dir, TrialResult(status="failed", message=message))
            raise keras_tuner.errors.FailedTrialError(message) from error
        self._trial_seconds += [(time.monotonic() - start) / remaining] * remaining
        return {"final_accuracy": max(scores)}

    def pre_create_trial(self):
        interrupts.check()  # a stop asked for between packs
        if self._waiting:  # the oracle's last answer was IDLE: every pack is out
            time.sleep(1)
        self._waiting = True

    def on_trial_begin(self, trial):
        super().on_trial_begin(trial)
        self._waiting = False

    def on_trial_end(self, trial):
        super().on_trial_end(trial)  # the oracle has the pack's end: the process may go
        if self.one_pack:
            raise PackFinished(trial.trial_id)

    def _record(self, trial, point, run_dir, result):
        """Closes the point's HParams session, then appends its row: the row marks it finished.

        Raises:
            StorageError: either could not be written, or the experiment folder
                is no longer the one the study started in.
        """
        with _writing(self.results_path):
            hparams.end_trial(run_dir, result)
            # TensorFlow's writers recreate a removed folder silently: the row must not follow.
            if not os.path.samestat(os.stat(self.experiment_dir), os.fstat(self._folder)):
                raise StorageError(self.experiment_dir, "the folder was replaced during the study")
            append_row(self.results_path, {"trial": trial.trial_id, "run": run_name(point),
                                           **point, **dataclasses.asdict(result)}, result_columns(point))

    def _progress(self, point, trial_config, done, trials_after, in_pack, live):
        if self.quiet:
            return []
        mean = sum(self._trial_seconds) / len(self._trial_seconds) if self._trial_seconds else None
        label = "  ".join(labels(point))
        return [Progress(trial_config.train.steps,
                         prefix=f"trial {done + 1}/{len(self.points)}  {label}",
                         trials_after=trials_after, seconds_per_trial=mean,
                         pack_size=in_pack, live=live)]


def _score(accuracy):
    # keras-tuner takes a NaN objective for a crash; a trial that diverged before
    # its first evaluation, or failed, has no accuracy but is a finished trial.
    return 0.0 if accuracy is None or math.isnan(accuracy) else accuracy


def result_columns(point):
    """Columns of the results file: trial id, run name, factors, then results."""
    return ("trial", "run", *point, *RESULT_COLUMNS)


# The fix a message names: a caller of `run_study` changes its arguments, a user of
# the command line its flags.
_FIXES = {
    "restart": ("pass restart=True", "pass --restart"),
    "rename": ("give this one another name (experiment=NAME among load_config's overrides)",
               "give this one another name (--set experiment=NAME)"),
}


def run_study(config, *, quiet=False, restart=False, report=True, role=None, one_pack=False,
              command_line=False):
    """Runs (or resumes) every trial of a study and returns their results.

    The study's ``results.csv`` is its record: a design point is finished once
    its row is there, so running the same study again after any interruption
    trains exactly the points without one. With ``distribute.parallel_trials``
    above 1 the trials run in that many worker processes; see `tfbn.workers`.

    Args:
        config: A validated `tfbn.config.Config`.
        quiet: Print no progress lines.
        restart: Move an earlier run of this experiment aside and start afresh.
        role: ``"chief"`` or ``"worker"`` of a distributed study, whose keras-tuner
            environment variables `tfbn.workers.set_role` has set; None: the role
            those variables give (`tfbn.workers.current_role`), alone when unset.
        one_pack: A worker's: train one pack, then raise `PackFinished` (a local
            worker's launcher starts a fresh process for the next pack).
        report: Write the study's report (`tfbn.report.write_report`) at the end.
        command_line: Name the command line's flags in error messages
            (``--restart``) rather than this function's arguments (``restart=True``).

    Returns:
        A `tfbn.results.StudyResults`: a row per design point recorded, in design
        order, with numbers as numbers; the points without a row (``missing``);
        the report's path (``report``).

    Raises:
        tfbn.errors.UserError: the config cannot run here, or an earlier run of
            this experiment differs from it or is running.
        StorageError: the study's records could not be written; what it was
            training is not recorded, and trains when the study runs again.
    """
    fix = {key: texts[command_line] for key, texts in _FIXES.items()}
    experiment_dir = os.path.join(config.log.dir, config.experiment)
    points = design_points(config)
    strategy = build_strategy(config.distribute)
    role = role or workers.current_role()
    # A worker's chief has checked the data of every trial already.
    _check_trials(config, points, strategy, check_data=role != "worker")
    # keras-tuner's own files, the study's descriptions: written outside any trial.
    with _writing(experiment_dir):
        # A worker's chief holds the lock; a worker takes none.
        with interrupts.stop_on_signals(), \
                experiment_lock(config.log.dir, config.experiment, fix["rename"]) \
                if role != "worker" else contextlib.nullcontext():
            _run_locked(config, points, strategy, experiment_dir, quiet, restart, role, one_pack, fix)
    rows = {row["run"]: row for row in study_rows(experiment_dir, points)}
    results = StudyResults(
        [{"trial": rows[run_name(p)]["trial"], "run": run_name(p), **p,
          **dataclasses.asdict(TrialResult.from_row(rows[run_name(p)]))}
         for p in points if run_name(p) in rows],
        missing=missing_points(rows.values(), points))
    if report and role != "worker":
        from tfbn.report import write_report  # its plotting libraries load only here

        results.report = write_report(experiment_dir)
    return results


def _run_locked(config, points, strategy, experiment_dir, quiet, restart, role, one_pack, fix):
    """`run_study` once it holds the experiment's lock (or is a worker)."""
    if role == "worker":
        # A worker writes no config: it must train by its chief's.
        workers.wait_for_chief(workers.chief_silence(config.distribute.worker_timeout))
        chief_config = workers.check_same_config(
            config, os.path.join(experiment_dir, "config.yaml"),
            [key for key in FREE_TO_CHANGE if key != "train.pack"])  # the packs must match
    else:
        _prepare_experiment_dir(experiment_dir, config, restart, fix)
    results_path = os.path.join(experiment_dir, "results.csv")
    _check_results_file(results_path, result_columns(points[0]), points, fix)
    if role != "worker":  # the one process that may rewrite what others read
        _repair(experiment_dir, points)
    packs = plan_packs(config, points)
    oracle = DesignOracle(packs, fixed={"bn_sync": config.model.bn_sync}, results_path=results_path)
    oracle.verbose = 0
    if role != "worker" and not glob.glob(os.path.join(experiment_dir, "events.out.tfevents.*")):
        hparams.write_experiment(experiment_dir, {k: [p[k] for p in points] for k in points[0]},
                                 constants={"bn_sync": config.model.bn_sync})
        layout.write_layout(experiment_dir, config)
    def make_tuner():
        return StudyTuner(config, points, packs, experiment_dir, quiet, one_pack=one_pack,
                          oracle=oracle, distribution_strategy=strategy)

    if role == "chief" or config.distribute.parallel_trials > 1 and role is None:
        _search_as_chief(make_tuner, oracle, config, experiment_dir, local=role is None, quiet=quiet)
    elif role == "worker":
        with workers.Heartbeat(os.environ["KERASTUNER_TUNER_ID"],
                               workers.chief_silence(chief_config.distribute.worker_timeout)):
            make_tuner().search()
    else:
        make_tuner().search()
    rows = study_rows(experiment_dir, points)
    if oracle.lost:
        raise workers.WorkersLost(oracle.lost, len(rows), len(points))
    return rows


def _search_as_chief(make_tuner, oracle, config, experiment_dir, local, quiet):
    """Serves ``oracle`` as the chief of a study until its workers have trained every pack.

    keras-tuner's chief serves in a thread of this process. With ``local``, this
    process runs ``parallel_trials`` workers on loopback (`tfbn.workers.LocalWorkers`);
    otherwise the workers run elsewhere (``--role worker``), and it waits until
    each pack has ended and each worker has been told so, or was lost.
    """
    oracle.worker_timeout = config.distribute.worker_timeout
    saved_environment = dict(os.environ)
    if local:
        address = f"{workers.LOOPBACK}:{workers.free_port()}"
        workers.set_role("chief", address)
    try:
        chief = threading.Thread(target=make_tuner().search, daemon=True)
        chief.start()
        if not local:
            # Not chief.join(): keras-tuner's chief looks every 20 s for busy workers
            # before it stops serving (a daemon thread; it ends with the process).
            reported = 0  # lost workers, each said when the chief loses it
            while chief.is_alive() and not (oracle.finished() and not oracle.tuner_ids):
                time.sleep(workers.POLL_S)
                interrupts.check()
                oracle.check_workers()
                for lost in oracle.lost[reported:]:
                    print(f"tfbn: {lost}", flush=True)
                reported = len(oracle.lost)
            return
        count = config.distribute.parallel_trials
        # The workers load what they train on; the chief needs its data no more.
        release_data()
        # Without GPUs the workers train on the CPU: each gets its share of the cores.
        cpu_only = not tf.config.list_physical_devices("GPU")
        codes = workers.run_local_workers(
            os.path.join(experiment_dir, "config.yaml"), count, address, oracle,
            threads=workers.threads_per_worker(count) if cpu_only else None, quiet=quiet)
    finally:
        os.environ.clear()
        os.environ.update(saved_environment)
    if not oracle.lost and not oracle.finished():
        raise workers.WorkersExited(f"the workers exited (status {codes}) before the study "
                                    "finished; run the same command again to resume")


def study_rows(experiment_dir, points):
    """The latest results row of each design point that has one, in design order."""
    latest = {row["run"]: row for row in read_rows(os.path.join(experiment_dir, "results.csv"))}
    return [latest[run_name(p)] for p in points if run_name(p) in latest]


def finished_rows(results_path):
    """The latest row of each finished run, by run name.

    A row marks a finished trial, failed ones included, except a failure to
    write files, which an earlier version recorded as the trial's: that trial
    trains again.
    """
    latest = {row["run"]: row for row in read_rows(results_path)}
    return {run: row for run, row in latest.items()
            if not (row["status"] == "failed" and _storage_cause(row["message"]))}


def _check_trials(config, points, strategy, check_data=True):
    # Catches what would fail every trial before the first one starts.
    replicas = strategy.num_replicas_in_sync if strategy else 1
    for point in points:
        trial_config = apply_factors(config, point)
        batch = trial_config.train.batch_size
        check_batch_split(batch, replicas)
        if not check_data:
            continue
        examples = len(load_data(trial_config.data).y_train)
        if batch > examples:
            raise DataError(f"batch size {batch} exceeds the {examples} training examples of "
                            f"trial {run_name(point)}; lower train.batch_size")


def _check_results_file(path, columns, points, fix):
    """Refuses to resume a results file that this version of tfbn did not write for this design."""
    header, rows, _ = read_results(path)
    if header and header != columns:
        raise ConfigError(
            f"{path} has the columns {','.join(header)!r}, not those this version of tfbn writes "
            f"({','.join(columns)!r}); {fix['restart']} to move the old run aside")
    # The config check has already refused another design: unknown names come from an
    # earlier version's run names (test_ratio was labelled dist=).
    unknown = sorted({row["run"] for row in rows} - {run_name(p) for p in points})
    if unknown:
        raise ConfigError(
            f"{path} names runs that this version of tfbn does not (e.g. {unknown[0]!r}), so "
            f"resuming would train them again; {fix['restart']} to move the old run aside")


def _repair(experiment_dir, points):
    """Mends what a crash can leave of a study's records, and says what the study resumes from.

    Drops the lines of ``results.csv`` that a crash cut short (their points
    train again) and closes the HParams session of each recorded trial whose
    end is missing (an earlier version wrote it after the row).
    """
    results_path = os.path.join(experiment_dir, "results.csv")
    if not os.path.exists(results_path):
        return
    dropped = drop_incomplete_lines(results_path)
    if dropped:
        print(f"tfbn: left out {dropped} line(s) of {results_path} that a crash cut short; "
              "their trials train again", file=sys.stderr)
    finished = finished_rows(results_path)
    unclosed = [run for run in finished if os.path.isdir(os.path.join(experiment_dir, run))
                and not _session_ended(os.path.join(experiment_dir, run))]
    for run in unclosed:
        hparams.end_trial(os.path.join(experiment_dir, run), TrialResult.from_row(finished[run]))
    closed = f"; closed the TensorBoard session of {', '.join(unclosed)}" if unclosed else ""
    print(f"tfbn: resuming from {results_path}: {len(finished)} of {len(points)} design points "
          f"recorded{closed}", file=sys.stderr)


def _session_ended(run_dir):
    """Whether a run's HParams session has its end, which `hparams.end_trial` writes last,
    in an event file of its own."""
    files = glob.glob(os.path.join(glob.escape(run_dir), "events.out.tfevents.*"))
    if not files:
        return False
    # The loader stops at a record that a crash cut short.
    return any(value.tag == hparams_metadata.SESSION_END_INFO_TAG
               for event in EventFileLoader(max(files, key=_written_order)).Load()
               for value in event.summary.value)


def _written_order(path):
    # events.out.tfevents.<seconds>.<host>.<pid>.<writer number in its process>.v2
    parts = os.path.basename(path).split(".")
    try:
        return int(parts[3]), int(parts[-2])
    except (IndexError, ValueError):
        return 0, 0


def _prepare_experiment_dir(experiment_dir, config, restart, fix):
    """Saves the config beside the runs."""
    saved_path = os.path.join(experiment_dir, "config.yaml")
    if restart and os.path.exists(experiment_dir):
        aside = f"{experiment_dir}.{time.strftime('%Y%m%d-%H%M%S')}"
        shutil.move(experiment_dir, aside)
        print(f"moved the earlier run aside to {aside}")
    if os.path.exists(saved_path):
        saved, current = flatten(to_dict(load_config(saved_path))), flatten(to_dict(config))
        changed = [key for key in current
                   if key not in FREE_TO_CHANGE and saved.get(key) != current[key]]
        if changed:
            raise ConfigError(
                f"{experiment_dir} holds a run of this experiment with a different config "
                f"({', '.join(changed)} changed). Resume it unchanged, {fix['rename']}, or "
                f"{fix['restart']} to move the old run aside")
    try:
        os.makedirs(experiment_dir, exist_ok=True)
        write_atomically(saved_path, dump_config(config))
    except OSError as error:  # a path under a regular file, a read-only folder, a full disk
        raise ConfigError(
            f"log.dir {config.log.dir!r}: cannot write {experiment_dir} ({error.strerror}); "
            "set log.dir to a folder you can write, e.g. --set log.dir=logs") from error
