"""Throughput of a sweep: one process, two worker processes, MirroredStrategy.

    python bench/bench_sweep.py            # about 8 minutes on 2 CPU cores
    python bench/bench_sweep.py --quick    # 4 trials of 200 steps, about 2 minutes

Runs the full grid of ``configs/factorial_small.yaml`` (activation x BN x seed on
the bundled digits, 12 trials) with ``--steps`` steps per trial and no instruments,
once per variant, each in a fresh process so that every variant pays the same start
and the CPU can be split into two logical devices before TensorFlow starts:

* ``1 process``: ``distribute.strategy=none``, trials one after another;
* ``2 worker processes``: ``distribute.parallel_trials=2`` (a chief and two workers);
* ``mirrored, 2 logical CPUs``: one trial at a time, each under MirroredStrategy
  over ``/cpu:0`` and ``/cpu:1``;
* the first and third again with one step per execution (``steps_per_execution=1``
  instead of tfbn's default), which separates the cost of mirroring from the cost
  of dispatching every step from Python.

Prints, per variant, the trials that finished, the wall time (process start to
exit), trials per hour and steps per second summed over trials, both on the wall
clock and on the time spent inside training (``seconds`` in ``results.csv``), then
the ratios between variants. The load average is printed too: the figures are only
comparable on an otherwise idle machine.
"""

import argparse
import csv
import os
import pathlib
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "factorial_small.yaml"
MIRRORED = ("distribute.strategy=mirrored", "distribute.devices=[/cpu:0,/cpu:1]")
SINGLE = ("distribute.strategy=none",)

# Runs tfbn.run.main after the optional set-up that must precede TensorFlow's start.
# Arguments: <split the CPU in two: 0|1> <one step per execution: 0|1> <tfbn.run args>
LAUNCHER = """
import sys
if sys.argv[1] == "1":
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
if sys.argv[2] == "1":
    import tfbn.training
    tfbn.training.steps_per_execution = lambda eval_every: 1
from tfbn.run import main
sys.exit(main(sys.argv[3:]))
"""

# name -> (overrides, split the CPU, one step per execution)
VARIANTS = {
    "1 process": (SINGLE, False, False),
    "2 worker processes": (SINGLE + ("distribute.parallel_trials=2",), False, False),
    "mirrored, 2 logical CPUs": (MIRRORED, True, False),
    "1 process, 1 step/exec": (SINGLE, False, True),
    "mirrored, 1 step/exec": (MIRRORED, True, True),
}
RATIOS = [
    ("2 worker processes", "1 process"),
    ("mirrored, 2 logical CPUs", "1 process"),
    ("mirrored, 1 step/exec", "1 process, 1 step/exec"),
    ("mirrored, 1 step/exec", "1 process"),
]


def run_variant(name, overrides, log_dir):
    """Runs the sweep once; returns its wall seconds and its results rows."""
    extra, split_cpu, one_step = VARIANTS[name]
    args = ["--config", str(CONFIG), "--quiet", "--no-report"]
    for override in (f"log.dir={log_dir}", *overrides, *extra):
        args += ["--set", override]
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", LAUNCHER, str(int(split_cpu)),
                             str(int(one_step)), *args], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    results = next(pathlib.Path(log_dir).glob("*/results.csv"), None)
    rows = list(csv.DictReader(open(results))) if results else []
    if result.returncode and not rows:
        sys.exit(f"{name}: exit status {result.returncode}\n{result.stderr[-2000:]}")
    return seconds, rows


def summarise(seconds, rows):
    finished = [r for r in rows if r["status"] in ("ok", "diverged")]
    steps = sum(int(r["steps_run"]) for r in finished)
    training = sum(float(r["seconds"]) for r in finished)
    return {
        "finished": len(finished), "trials": len(rows), "wall": seconds,
        "trials_per_hour": len(finished) / seconds * 3600,
        "steps_per_s": steps / seconds,
        "steps_per_s_training": steps / training if training else float("nan"),
        "failure": next((r["message"] for r in rows if r["status"] == "failed"), None),
    }


def print_table(summaries):
    print(f"{'variant':<26}{'done':>7}{'wall s':>9}{'trials/h':>10}"
          f"{'steps/s wall':>14}{'steps/s in trial':>18}")
    for name, s in summaries.items():
        done = f"{s['finished']}/{s['trials']}"
        if not s["finished"]:
            print(f"{name:<26}{done:>7}{s['wall']:>9.1f}   all failed: {s['failure'][:70]}")
            continue
        print(f"{name:<26}{done:>7}{s['wall']:>9.1f}{s['trials_per_hour']:>10.0f}"
              f"{s['steps_per_s']:>14.0f}{s['steps_per_s_training']:>18.0f}")


def print_ratios(summaries):
    print("\nratios (trials/h on the wall clock; steps/s inside training in brackets)")
    for numerator, denominator in RATIOS:
        a, b = summaries.get(numerator), summaries.get(denominator)
        if not (a and b):
            continue
        label = f"  {numerator} / {denominator}:"
        if not (a["finished"] and b["finished"]):
            failed = numerator if not a["finished"] else denominator
            print(f"{label:<62}n/a ({failed} failed)")
            continue
        print(f"{label:<62}{a['trials_per_hour'] / b['trials_per_hour']:.2f}x "
              f"({a['steps_per_s_training'] / b['steps_per_s_training']:.2f}x)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1000, help="training steps per trial")
    parser.add_argument("--quick", action="store_true", help="4 trials of 200 steps")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
                        metavar="NAME", help=f"a subset of: {', '.join(VARIANTS)}")
    args = parser.parse_args()
    overrides = ["log.instruments=[]", f"train.steps={200 if args.quick else args.steps}"]
    if args.quick:
        overrides.append("study.factors={activation: [sigmoid], bn: [none, before], seed: [0, 1]}")
    print(f"grid: {CONFIG.relative_to(ROOT)} with {' '.join(overrides)}")
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPU cores\n",
          flush=True)
    summaries = {}
    with tempfile.TemporaryDirectory() as folder:
        for i, name in enumerate(args.variants):
            seconds, rows = run_variant(name, overrides, os.path.join(folder, str(i)))
            summaries[name] = summarise(seconds, rows)
            print(f"  {name}: {seconds:.1f} s", file=sys.stderr, flush=True)
    print_table(summaries)
    print_ratios(summaries)
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
