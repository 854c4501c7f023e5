"""Speed of tfbn's studies against plain Keras, side by side in one run.

    python bench/bench_study.py --data /usr/share/datasets/fashion-mnist
    python bench/bench_study.py --data DIR --quick     # 500 steps, batch 64 only

On the four IDX files in DIR (Fashion-MNIST or MNIST), prints:

1. **The 15-point study end to end**: 5 activations x BN none/before/after of the
   784-100-100-10 MLP (SGD 0.01, batch 64, ``--steps`` steps, evaluation every
   100), run as ``python -m tfbn.run`` with its instruments at their defaults and
   its report, against ``bench/plain_keras_study.py``, the plain-Keras script that
   trains the same 15 networks one after another with `fit` and its validation,
   as written (``prefetch(AUTOTUNE)``) and with tf.data's autotuning off, which
   spares it a wait at the end of every `fit` (see that script). Wall times
   (process start to exit), the ratios and each process's peak resident memory.
2. **Throughput per trial**, in this process: the plain-Keras peer (the same
   network and evaluation schedule written the obvious way: `fit`,
   ``steps_per_execution=32``, an in-memory pipeline, validation every 100 steps),
   as written and with autotuning off, a solo tfbn trial
   (`tfbn.training.train_pack` with one branch, instruments at their defaults)
   and packs of 3 and 15 branches (the BN arms x activations), at batch 4, 64
   and 256. Each figure is ``--steps`` steps over the wall time of the whole
   call, graph tracing included; packs as trial-steps/s (steps x branches), and
   each as a ratio to either peer at the same batch size.

The machine may be shared: the variants run interleaved, and ``--repeats`` runs
the whole sequence again so that the spread shows.
"""

import argparse
import os
import pathlib
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
ACTIVATIONS = ("sigmoid", "relu", "tanh", "softplus", "lrelu")
ARMS = ("none", "before", "after")


def run_process(command, log_path):
    """Runs a command; returns its wall seconds and peak resident memory in MiB.

    The peak is the process's own high-water mark (VmHWM), read until it exits:
    `os.wait4`'s ru_maxrss would count this process's size too, which a forked
    child starts with.
    """
    start = time.monotonic()
    peak_kib = 0
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        while process.poll() is None:
            try:
                with open(f"/proc/{process.pid}/status") as status:
                    peak_kib = max([peak_kib] + [int(line.split()[1]) for line in status
                                                 if line.startswith("VmHWM:")])
            except (FileNotFoundError, ProcessLookupError):
                pass  # it has just exited
            time.sleep(0.1)
    if process.returncode:
        sys.exit(f"{command[:4]} failed; see {log_path}")
    return time.monotonic() - start, peak_kib / 1024


def end_to_end(data, steps, folder):
    factors = f"{{activation: [{', '.join(ACTIVATIONS)}], bn: [{', '.join(ARMS)}]}}"
    tfbn_command = [sys.executable, "-m", "tfbn.run", "--config", "configs/quickstart.yaml"]
    for override in ("data.source=idx", f"data.path={data}", f"train.steps={steps}",
                     "train.eval_every=100", "train.threshold=0.8", f"log.dir={folder}",
                     "experiment=bench_15_points", f"study.factors={factors}"):
        tfbn_command += ["--set", override]
    plain_command = [sys.executable, str(ROOT / "bench" / "plain_keras_study.py"), str(data),
                     "--steps", str(steps)]
    tfbn_result = run_process(tfbn_command + ["--restart"], folder / "tfbn.log")
    plain_result = run_process(plain_command, folder / "plain.log")
    untuned_result = run_process(plain_command + ["--no-autotune"], folder / "plain_untuned.log")
    return tfbn_result, plain_result, untuned_result


def throughput(data, steps, batch_sizes, folder):
    """Rows (batch, variant, trials, steps/s, trial-steps/s, ratios to the two peers) measured
    in this process."""
    from tfbn.config import load_config
    from tfbn.data import load_data
    from tfbn.design import apply_factors, run_name
    from tfbn.training import Target, train_pack
    sys.path.insert(0, str(ROOT / "bench"))
    from plain_keras_study import fit, network, training_pipeline

    base = load_config(ROOT / "configs" / "quickstart.yaml", [
        "data.source=idx", f"data.path={data}", f"train.steps={steps}", "train.eval_every=100"])
    dataset = load_data(base.data)
    points = [{"bn": bn, "activation": act} for act in ACTIVATIONS for bn in ARMS]
    rows = []
    for batch in batch_sizes:
        config = apply_factors(base, {"batch_size": batch})
        peers = []
        for autotune in (True, False):
            train = training_pipeline(dataset.x_train, dataset.y_train, batch, autotune)
            start = time.monotonic()
            fit(network("sigmoid", "before"), train, dataset.x_test, dataset.y_test, steps)
            peers.append(steps / (time.monotonic() - start))
        for label, rate in zip(("plain-Keras peer (fit + validation)", "  the same, autotune off"),
                               peers):
            rows.append((batch, label, 1, rate, rate, *(rate / peer for peer in peers)))
        for count, label in ((1, "tfbn solo trial"), (3, "tfbn pack"), (15, "tfbn pack")):
            chosen = [{"bn": "before", "activation": "sigmoid"}] if count == 1 else points[:count]
            branches = [[Target(apply_factors(config, p),
                                str(folder / f"bs{batch}_n{count}" / run_name(p)))]
                        for p in chosen]
            start = time.monotonic()
            train_pack(branches)
            rate = steps / (time.monotonic() - start)
            rows.append((batch, label, count, rate, rate * count,
                         *(rate * count / peer for peer in peers)))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="folder of the four IDX files")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="500 steps, batch 64 only")
    args = parser.parse_args()
    steps = 500 if args.quick else args.steps
    batch_sizes = (64,) if args.quick else (4, 64, 256)
    print(f"load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs, {steps} steps")
    with tempfile.TemporaryDirectory() as tmp:
        folder = pathlib.Path(tmp)
        for repeat in range(args.repeats):
            (tfbn_s, tfbn_mib), *plain = end_to_end(args.data, steps, folder)
            print(f"\n15-point study end to end ({steps} steps per point), repeat {repeat + 1}:")
            print(f"  python -m tfbn.run (instruments, report)  {tfbn_s:7.1f} s   "
                  f"peak RSS {tfbn_mib:6.0f} MiB")
            for label, (plain_s, plain_mib) in zip(("plain-Keras script (15 x fit)",
                                                    "  the same, autotune off"), plain):
                print(f"  {label:40s} {plain_s:7.1f} s   peak RSS {plain_mib:6.0f} MiB   "
                      f"tfbn {plain_s / tfbn_s:.2f}x as fast")
            print("\nthroughput (wall time of each whole call, tracing included):")
            print(f"  {'batch':>5}  {'variant':38s} {'trials':>6} {'steps/s':>8} "
                  f"{'trial-steps/s':>13} {'x peer':>7} {'x peer, autotune off':>21}")
            for batch, label, count, rate, trial_rate, ratio, untuned_ratio in throughput(
                    args.data, steps, batch_sizes, folder):
                print(f"  {batch:5d}  {label:38s} {count:6d} {rate:8.0f} {trial_rate:13.0f} "
                      f"{ratio:7.2f} {untuned_ratio:21.2f}")
    import resource
    print(f"\npeak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
