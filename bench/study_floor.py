"""The least wall time a study's matrix products allow on this machine.

    python bench/study_floor.py configs/course2017_study.yaml --set data.source=idx \\
        --set data.path=/usr/share/datasets/fashion-mnist --set distribute.parallel_trials=2

Counts the floating-point operations of the Dense layers' matrix products that
the study cannot do without, from its own pack plan (`tfbn.packing.plan_packs`)
and test splits:

* training, per branch and step: the first layer's product and kernel
  gradient, and each later layer's product, input gradient and kernel gradient;
* evaluation, every ``eval_every`` steps: the first layer once per branch and
  distinct example of its test splits, the later layers once per split, and
  once more with batch statistics for branches with BN.

It then measures this machine's rate for those products at each pack's shapes:
a pack's joint first-layer product, kernel gradient and SGD update in a
compiled loop for training, its joint first-layer product over the test
examples for evaluation, run at once in ``distribute.parallel_trials``
single-threaded processes as the study's workers run. The floor is the counted
operations at those rates, shared evenly among the workers. The later layers'
products are smaller and run slower than the first layer's, and everything else
(activations, BN, the loss, the instruments, tracing, process starts, the
report) comes on top, so no run of the study on this machine can be faster.
"""

import argparse
import multiprocessing
import os
import time

import numpy as np

LOOP = 50  # products per timed call


def count(config):
    """Per pack: ``(batch size, input features, first-layer columns, test rows, training FLOP,
    evaluation FLOP)``."""
    from tfbn.data import load_data
    from tfbn.data.subset import distinct_rows
    from tfbn.design import apply_factors, design_points
    from tfbn.packing import plan_packs

    packs = []
    for pack in plan_packs(config, design_points(config)):
        columns = rows = train_flop = eval_flop = 0
        for branch in pack.branches:
            trials = [apply_factors(config, point) for point in branch]
            splits = [load_data(trial.data) for trial in trials]
            model, train = trials[0].model, trials[0].train
            sizes = ([int(np.prod(splits[0].input_shape))] + [model.width] * model.depth
                     + [splits[0].num_classes])
            first = 2 * sizes[0] * sizes[1]
            later = sum(2 * a * b for a, b in zip(sizes[1:], sizes[2:]))
            union = len(distinct_rows([split.x_test for split in splits])[0])
            modes = 1 if model.bn == "none" else 2
            train_flop += train.steps * train.batch_size * (2 * first + 3 * later)
            eval_flop += (train.steps // train.eval_every) * (
                union * first + modes * later * sum(len(split.y_test) for split in splits))
            columns += sizes[1]
            rows = max(rows, union)
        packs.append((pack.batch_size, sizes[0], columns, rows, train_flop, eval_flop))
    return packs


def measure(shapes):
    """GFLOP/s of each ``(kind, rows, features, columns)``: ``train`` (product, kernel
    gradient and update) or ``eval`` (product), on one thread."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    rates = []
    for kind, rows, features, columns in shapes:
        x = tf.constant(rng.random((rows, features), dtype=np.float32))
        w = tf.constant(rng.random((features, columns), dtype=np.float32) * 1e-3)
        if kind == "train":
            def body(i, w):
                return i + 1, w - 1e-6 * tf.matmul(x, x @ w, transpose_a=True)
            flop = 4 * rows * features * columns
        else:
            def body(i, w):  # each product feeds the next; a maximum does not commute with it
                return i + 1, w + 1e-9 * tf.reduce_max(x @ w, axis=0)
            flop = 2 * rows * features * columns
        loop = tf.function(lambda w: tf.while_loop(lambda i, _: i < LOOP, body, (0, w))[1],
                           jit_compile=True)
        loop(w).numpy()
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            loop(w).numpy()
            best = min(best, time.perf_counter() - start)
        rates.append(flop * LOOP / best / 1e9)
    return rates


def _single_threaded(shapes):
    for name in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS"):
        os.environ[name] = "1"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return measure(shapes)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    from tfbn.config import load_config

    config = load_config(args.config, args.overrides)
    workers = config.distribute.parallel_trials
    packs = count(config)
    shapes = sorted({("train", batch, features, columns) for batch, features, columns, *_ in packs}
                    | {("eval", rows, features, columns) for _, features, columns, rows, *_ in packs})
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        measured = pool.map(_single_threaded, [shapes] * workers)
    rate = dict(zip(shapes, np.mean(measured, axis=0)))
    print(f"{config.experiment}: {len(packs)} packs, {workers} single-threaded workers; "
          f"rates measured with {workers} at once")
    print(f"  {'batch':>5} {'packs':>5} {'train TFLOP':>11} {'GFLOP/s':>7} "
          f"{'eval TFLOP':>10} {'GFLOP/s':>7} {'seconds':>8}")
    total = 0.0
    for batch in sorted({p[0] for p in packs}):
        chosen = [p for p in packs if p[0] == batch]
        train_rates = [rate["train", batch, features, columns] for _, features, columns, *_ in chosen]
        eval_rates = [rate["eval", rows, features, columns] for _, features, columns, rows, *_ in chosen]
        train_flop = [p[4] for p in chosen]
        eval_flop = [p[5] for p in chosen]
        seconds = sum(np.divide(train_flop, train_rates) + np.divide(eval_flop, eval_rates)) / 1e9
        total += seconds
        print(f"  {batch:5d} {len(chosen):5d} {sum(train_flop) / 1e12:11.1f} "
              f"{np.mean(train_rates):7.1f} {sum(eval_flop) / 1e12:10.1f} "
              f"{np.mean(eval_rates):7.1f} {seconds:8.0f}")
    print(f"  floor: {total:.0f} s of matrix products, {total / workers / 60:.1f} min of wall time "
          f"on {workers} workers")


if __name__ == "__main__":
    main()
