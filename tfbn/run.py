"""Command line: run the study a config describes.

    python -m tfbn.run --config configs/quickstart.yaml [--set train.steps=500]

Trains every trial of the config's study (resuming an earlier run of the same
experiment), writes TensorBoard runs and ``results.csv`` under
``<log.dir>/<experiment>/``, prints a table comparing the trials and writes the
study's report (`tfbn.report`) unless ``--no-report``. Errors in
the user's input exit with status 2 and a one-line message.
"""

import argparse
import contextlib
import os
import sys

from tfbn.config import load_builder, load_config
from tfbn.design import apply_factors, design_points, study_factors
from tfbn.devices import check_memory
from tfbn.errors import UserError
from tfbn.interrupts import Interrupted, Stopped, resume_command
from tfbn.results import format_table
from tfbn.workers import current_role, set_role


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m tfbn.run", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="YAML config file, e.g. configs/quickstart.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set train.steps=500 (repeatable)")
    parser.add_argument("--quiet", action="store_true", help="print no progress lines")
    parser.add_argument("--verbose", action="store_true",
                        help="show TensorFlow's start-up and C++ log lines (hidden by default)")
    parser.add_argument("--restart", action="store_true",
                        help="move an earlier run of this experiment aside and start afresh")
    parser.add_argument("--no-report", dest="report", action="store_false",
                        help="skip writing the report (python -m tfbn.report) at the end")
    parser.add_argument("--role", choices=("chief", "worker"),
                        help="distributed study: the chief serves the trials, workers run them")
    parser.add_argument("--oracle", metavar="HOST:PORT",
                        help="where the chief serves its oracle (with --role)")
    parser.add_argument("--tuner-id", help="a worker's unique name (with --role worker)")
    parser.add_argument("--one-pack", action="store_true",
                        help="a worker trains one pack, then exits with status 75 so that its "
                             "launcher starts a fresh process (local workers run so)")
    return parser.parse_args(argv)


def quiet_tensorflow_start():
    """Imports TensorFlow without its start-up lines (oneDNN notice, CUDA probes).

    ``TF_CPP_MIN_LOG_LEVEL=3`` hides TensorFlow's C++ log lines from then on,
    but a few are printed before its logging starts, straight to file
    descriptor 2: that descriptor goes to /dev/null while TensorFlow loads.
    An import error still raises, and is shown once stderr is back.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            with contextlib.suppress(ImportError):
                import tensorflow  # noqa: F401  (loaded here, quietly, for the whole run)
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def main(argv=None):
    """Runs the command line; returns the exit status."""
    args = parse_args(argv)
    try:
        # Everything that needs no TensorFlow is checked before it loads (a few seconds).
        config = load_config(args.config, args.overrides)
        role = _role(args)
        if role != "worker":
            check_outputs(config, args.restart)
        for point in design_points(config):
            check_memory(apply_factors(config, point))
        if not args.verbose and os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3") == "3":
            quiet_tensorflow_start()
        from tfbn.sweep import PackFinished, run_study
        from tfbn.workers import RECYCLE_STATUS

        check_builders(config)
        try:
            rows = run_study(config, quiet=args.quiet, restart=args.restart, role=role,
                             one_pack=args.one_pack, report=False, command_line=True)
        except PackFinished:
            return RECYCLE_STATUS
        except Stopped as stop:
            # A local worker's launcher reports what stopped it.
            if not (args.one_pack and isinstance(stop, Interrupted)):
                print(f"tfbn: {stop}", file=sys.stderr)
            if stop.resume and role != "worker":
                print(f"tfbn: to resume, run: {resume_command(argv)}", file=sys.stderr)
            return stop.status
        if role == "worker":
            return 0
        print(f"\n{config.experiment}: test accuracy with BN's moving statistics "
              f"(threshold {config.train.threshold})")
        print(format_table(rows, list(study_factors(config))))
        if args.report:
            from tfbn.report import write_report
            print(f"\nreport: {write_report(os.path.join(config.log.dir, config.experiment))}")
        if rows.missing:
            print(f"tfbn: no result for {', '.join(rows.missing)}; to train them, run: "
                  f"{resume_command(argv)}", file=sys.stderr)
            return 1
    except UserError as e:
        print(f"tfbn: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C before the study began (TensorFlow loading) or in the report
        print(f"tfbn: stopped by SIGINT; to resume, run: {resume_command(argv)}", file=sys.stderr)
        return 130
    print(f"TensorBoard: tensorboard --logdir {config.log.dir}")
    return 0


def _role(args):
    """This process's role in a distributed study, from the flags or keras-tuner's variables."""
    if args.role:
        set_role(args.role, args.oracle, args.tuner_id)
    elif args.oracle or args.tuner_id:
        raise UserError("--oracle and --tuner-id need --role chief or --role worker")
    # From the flags, or from keras-tuner's variables as a cluster scheduler sets them.
    role = args.role or current_role()
    if args.one_pack and role != "worker":
        raise UserError("--one-pack is a worker's flag; add --role worker")
    return role


def check_outputs(config, restart=False):
    """Refuses output paths that exist as the wrong kind of file, before anything is written.

    Args:
        config: The study's `tfbn.config.Config`.
        restart: ``--restart``, which moves the experiment folder aside whatever it holds.
    """
    experiment_dir = os.path.join(config.log.dir, config.experiment)
    # The folder that log.dir is, or that its missing folders would be made in.
    existing = os.path.abspath(config.log.dir)
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
        problem = "is not a folder" if not os.path.isdir(existing) else "cannot be written"
        raise UserError(f"log.dir {config.log.dir!r}: {existing} {problem}; set log.dir to a "
                        "folder you can write, e.g. --set log.dir=logs")
    if restart:
        return
    if os.path.exists(experiment_dir) and not os.path.isdir(experiment_dir):
        raise UserError(f"{experiment_dir} is a file, not an experiment folder; move it, or give "
                        "the experiment another name (--set experiment=NAME)")
    for name in ("results.csv", "config.yaml"):
        path = os.path.join(experiment_dir, name)
        if os.path.lexists(path) and not os.path.isfile(path):
            raise UserError(f"{path} is not a regular file; move it away, or pass --restart to "
                            "move the earlier run aside")


def check_builders(config):
    """Imports every ``model.builder`` of a study, to refuse one that names no function now,
    not when its trial starts. The user's module may import TensorFlow: call it after
    `quiet_tensorflow_start`."""
    for point in design_points(config):
        builder = apply_factors(config, point).model.builder
        if builder is not None:
            load_builder(builder)


if __name__ == "__main__":
    sys.exit(main())
