"""How a study's cost grows with its number of trials: many seeds of the quickstart.

    python bench/bench_scale.py                 # 10, 50 and 200 seeds (30, 150, 600 trials)
    python bench/bench_scale.py --quick         # 10 and 50 seeds
    python bench/bench_scale.py --quick --compare /tmp/tfbn-old   # another checkout beside

Runs ``configs/quickstart.yaml`` (BN none/before/after, 300 steps, evaluation
every 100, instruments at their defaults but Jacobian spectra at the start and
the end only) with ``study.factors`` holding
``--seeds`` seeds, as ``python -m tfbn.run`` in one process and with
``distribute.parallel_trials=2``, and prints per run: wall time (process start
to exit), seconds per trial, the peak resident memory of the whole process tree
(the sum over the chief and its workers, sampled every 50 ms) and the seconds
from the start to the first recorded trial (process start, data, tracing and
compilation of the first pack), then the ratios of the larger studies to the
smallest. With ``--compare DIR`` the same runs of the tfbn checkout in DIR
(on ``PYTHONPATH``, its own quickstart config) alternate with this one's, so
that both see the same machine: compare only figures of one run.
"""

import argparse
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import psutil

ROOT = pathlib.Path(__file__).resolve().parent.parent
ARMS = ("none", "before", "after")


def run_study(checkout, seeds, workers, folder):
    """Runs the quickstart with ``seeds`` seeds; returns its wall, peak tree RSS and first-row seconds."""
    # The Jacobian spectra at step 0 and the end, as in the figures of earlier versions
    # (its later default, a tenth of the steps, writes 11 a run and dominates these runs).
    overrides = ["train.steps=300", "train.eval_every=100", "log.jacobian_every=5000", f"log.dir={folder}",
                 f"distribute.parallel_trials={workers}",
                 f"study.factors={{bn: [{', '.join(ARMS)}], seed: {list(range(seeds))}}}"]
    command = [sys.executable, "-m", "tfbn.run", "--config", str(checkout / "configs" / "quickstart.yaml"),
               "--quiet", "--no-report", *(arg for o in overrides for arg in ("--set", o))]
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    results = pathlib.Path(folder) / "quickstart" / "results.csv"
    start = time.monotonic()
    peak, first = 0, None
    with open(pathlib.Path(folder) / "run.log", "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=checkout, env=env)
        root = psutil.Process(process.pid)
        while process.poll() is None:
            peak = max(peak, _tree_rss(root))
            if first is None and results.exists() and len(results.read_text().splitlines()) > 1:
                first = time.monotonic() - start
            time.sleep(0.05)
    wall = time.monotonic() - start
    if process.returncode:
        raise RuntimeError(f"{' '.join(command)} exited with {process.returncode}; see {folder}/run.log")
    return wall, peak / 2**20, first


def _tree_rss(root):
    """Resident bytes of a process and all its descendants now."""
    total = 0
    try:
        for process in [root, *root.children(recursive=True)]:
            try:
                total += process.memory_info().rss
            except psutil.NoSuchProcess:
                pass  # a worker that has just exited
    except psutil.NoSuchProcess:
        pass
    return total


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10 and 50 seeds only")
    parser.add_argument("--seeds", type=int, nargs="+", default=[10, 50, 200])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                        help="distribute.parallel_trials of each run")
    parser.add_argument("--compare", type=pathlib.Path, action="append", default=[],
                        help="another tfbn checkout to run beside this one")
    args = parser.parse_args()
    seeds = [n for n in args.seeds if n <= 50] if args.quick else args.seeds
    checkouts = [ROOT, *args.compare]
    rows = {}
    print(f"{'checkout':24s} {'seeds':>5s} {'trials':>6s} {'workers':>7s} {'wall s':>8s} "
          f"{'s/trial':>8s} {'peak MiB':>9s} {'first s':>8s}", flush=True)
    for n in seeds:
        for workers in args.workers:
            for checkout in checkouts:  # interleaved: each pair sees the same machine
                with tempfile.TemporaryDirectory() as folder:
                    wall, mib, first = run_study(checkout, n, workers, folder)
                rows[checkout, n, workers] = wall, mib
                print(f"{str(checkout)[-24:]:24s} {n:5d} {3 * n:6d} {workers:7d} {wall:8.1f} "
                      f"{wall / (3 * n):8.2f} {mib:9.0f} {first or float('nan'):8.1f}", flush=True)
    smallest = min(seeds)
    print(f"\nratios to the {3 * smallest}-trial study (wall, seconds per trial, peak memory):")
    for (checkout, n, workers), (wall, mib) in rows.items():
        if n == smallest:
            continue
        base_wall, base_mib = rows[checkout, smallest, workers]
        print(f"  {str(checkout)[-24:]:24s} {3 * n}:{3 * smallest} workers={workers}: wall "
              f"{wall / base_wall:5.2f}x  per trial {wall / n / (base_wall / smallest):5.2f}x  "
              f"memory {mib / base_mib:5.2f}x")


if __name__ == "__main__":
    main()
