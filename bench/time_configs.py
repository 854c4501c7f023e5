"""Wall time of the study configs on this machine, measured on a shortened run.

    python bench/time_configs.py configs/course2017_renorm.yaml --scale 20
    python bench/time_configs.py configs/course2017_jacobian.yaml --scale 1   # the whole study

Each config runs as ``python -m tfbn.run`` with every trial of its study,
every instrument and the report, but ``train.steps`` divided by ``--scale``
and the data section replaced by local IDX files (``--data``, Fashion-MNIST
from Debian's ``dataset-fashion-mnist`` by default; MNIST files have the same
shapes and cost). Its full wall time is then estimated as

    measured wall time + sum over packs of (full steps - run steps) x seconds per step,

a pack being the trials that train together (`tfbn.packing`), and its seconds per
step those of its slowest trial, taken from the wall times of its TensorBoard
``loss/train`` events after the first evaluation, which leaves out the
one-off graph tracing and includes the periodic evaluations and instrument
writes. Instrument writes rarer than the shortened run (``jacobian_every``
above its steps) are left out of the estimate; the instrument benchmark puts
them at about 5% of the training time at the defaults. Prints one line per
config.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tfbn.config import load_config
from tfbn.report.trials import load_study


def seconds_per_step(run_dir):
    """Seconds per training step of one trial from its ``loss/train`` event wall times."""
    accumulator = EventAccumulator(run_dir, size_guidance={"tensors": 0})
    accumulator.Reload()
    events = sorted(accumulator.Tensors("loss/train"), key=lambda e: e.step)[1:]
    return (events[-1].wall_time - events[0].wall_time) / (events[-1].step - events[0].step)


def time_config(path, scale, data_dir, log_dir):
    """(trials, measured seconds, estimated seconds of the whole study)."""
    config = load_config(path)
    every = config.train.eval_every
    # At least three evaluations: the slope is taken between the second and the last.
    steps = max(config.train.steps // scale // every, 3) * every
    overrides = ["data.source=idx", f"data.path={data_dir}", f"train.steps={steps}",
                 f"log.dir={log_dir}"]
    start = time.monotonic()
    subprocess.run([sys.executable, "-m", "tfbn.run", "--config", path, "--quiet",
                    *(arg for o in overrides for arg in ("--set", o))],
                   check=True, stdout=subprocess.DEVNULL)
    measured = time.monotonic() - start
    trials = load_study(os.path.join(log_dir, config.experiment)).trials
    # Trials packed together (one keras-tuner trial, the ``trial`` column) share their
    # wall time: a pack's remaining time is that of its slowest trial.
    packs = {}
    for t in trials:
        rate = seconds_per_step(t.run_dir)
        packs[t.row["trial"]] = max(packs.get(t.row["trial"], 0.0), rate)
    remaining = sum((config.train.steps - steps) * rate for rate in packs.values())
    return len(trials), measured, measured + remaining


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("configs", nargs="+", help="config files")
    parser.add_argument("--scale", type=int, default=20,
                        help="run 1/scale of each config's steps, rounded down to a multiple "
                             "of its eval_every, and at least three evaluations")
    parser.add_argument("--data", default="/usr/share/datasets/fashion-mnist",
                        help="folder of the four IDX files to train on")
    args = parser.parse_args(argv)
    print(f"{os.cpu_count()} CPU cores; steps divided by {args.scale}; data {args.data}")
    print(f"{'config':34s} {'trials':>6s} {'measured':>9s} {'full study, estimated':>22s}")
    for path in args.configs:
        with tempfile.TemporaryDirectory() as log_dir:
            trials, measured, estimated = time_config(path, args.scale, args.data, log_dir)
        print(f"{os.path.basename(path):34s} {trials:6d} {measured / 60:7.1f} m {estimated / 60:20.1f} m",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
