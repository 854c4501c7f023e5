"""Cost of the TensorBoard instruments on the paper's network.

    python bench/bench_instruments.py            # about 8 minutes on 2 CPU cores
    python bench/bench_instruments.py --quick    # a smoke run, about a minute

The network is 784-100-100-100-10 with sigmoid and BN before the activation,
trained by SGD on random data of MNIST's shape in batches of 60 with
``steps_per_execution=32``. Prints:

1. the cost of `tfbn.models.MLP` recording its gradients every step: chunks
   of 32 steps of it and of Keras's own train step, alternated;
2. the seconds of each instrument's first write (once per trial: it traces
   what the instrument compiles) and of a later one, and the share of the
   training time the later ones take at the `tfbn.config.LogConfig` defaults
   (``ics`` and ``landscape`` too, which run only on request);
3. steps/s of `model.fit` without instruments, with each instrument and with
   all of them at the defaults, in interleaved windows;
4. time and peak TensorFlow memory of one Jacobian-spectrum pass (all
   hidden layers and the network) over 1,000 and over 250 probe examples,
   and the time the eigenvalue solvers of TensorFlow and NumPy alone take
   for that pass's Gram matrices: the floor of any exact method that
   decomposes one Gram matrix per example and layer.

Timings on a shared machine vary by 10% or more from window to window;
(1) and (2) are the steadiest figures, (3) checks them end to end.
"""

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time

# TensorFlow keeps the peak of its CPU allocator (section 4) only when its BFC
# allocator serves the CPU, which it reads from this variable at start-up.
os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")

import keras  # noqa: E402 (after the allocator's variable)
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfbn import instruments  # noqa: E402
from tfbn.callbacks import TrainingSample, build_instruments  # noqa: E402
from tfbn.config import LogConfig  # noqa: E402
from tfbn.instruments import jacobian_singular_values  # noqa: E402
from tfbn.models import build_mlp  # noqa: E402

BATCH = 60
STEPS_PER_EXECUTION = 32
INSTRUMENTS = ("weights", "gradients", "jacobian", "percentiles")
ON_REQUEST = ("ics", "landscape")


class Clock(keras.callbacks.Callback):
    """Times a fit from after the other callbacks' ``on_train_begin`` to its end.

    Listed last, it leaves out the writes at step 0, which a real run makes
    once, and keeps everything the instruments cost per step.
    """

    def on_train_begin(self, logs=None):
        self.start = time.perf_counter()

    def on_train_end(self, logs=None):
        self.seconds = time.perf_counter() - self.start


def build(plain=False):
    model = build_mlp((784,), 10, (100, 100, 100), "sigmoid", "before")
    if plain:  # the same layers under Keras's own train_step
        model = keras.Model(model.inputs, model.outputs)
    model.compile(keras.optimizers.SGD(0.01),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  steps_per_execution=STEPS_PER_EXECUTION)
    return model


def recording_cost(dataset, chunks):
    """Median seconds per chunk of 32 steps: Keras's train step and MLP's."""
    models = {"keras.Model": build(plain=True), "MLP": build()}
    times = {name: [] for name in models}
    functions, iterators = {}, {}
    for name, model in models.items():
        model.fit(dataset, steps_per_epoch=STEPS_PER_EXECUTION * 2, epochs=1, verbose=0)
        functions[name] = model.make_train_function()  # what fit calls once per chunk
        iterators[name] = iter(dataset)
    for i in range(chunks):
        for name in sorted(models, reverse=i % 2 == 1):
            start = time.perf_counter()
            functions[name](iterators[name])["loss"].numpy()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def write_seconds(config, probe, log_dir, writes):
    """Seconds of each instrument's first write, and the mean of its next ``writes``,
    on a briefly trained model.

    A trial pays the first write once: it traces what the instrument compiles.
    """
    model = build()
    labels = np.zeros(len(probe), int)
    model.fit(probe, labels, batch_size=BATCH, epochs=1, verbose=0)
    sample = TrainingSample(probe, labels, BATCH, seed=0)
    seconds = {}
    for callback, name in zip(build_instruments(config, log_dir, probe, sample), config.instruments):
        callback.set_model(model)
        start = time.perf_counter()
        callback.write(0)
        first = time.perf_counter() - start
        start = time.perf_counter()
        for step in range(1, writes + 1):
            callback.write(step)
        seconds[name] = first, (time.perf_counter() - start) / writes
        callback.on_train_end()
    return seconds


def throughput(dataset, log_dir, x, window, repeats):
    """Steps/s of fit in interleaved windows of ``window`` steps, per variant."""
    defaults = LogConfig()
    variants = {"keras.Model": (build(plain=True), []), "MLP": (build(), [])}
    for name in INSTRUMENTS:
        config = dataclasses.replace(defaults, instruments=(name,))
        variants[name] = (build(), build_instruments(config, os.path.join(log_dir, name), x))
    variants["all, defaults"] = (build(), build_instruments(defaults, os.path.join(log_dir, "all"), x))
    for model, _ in variants.values():  # traces the train function
        model.fit(dataset, steps_per_epoch=STEPS_PER_EXECUTION * 2, epochs=1, verbose=0)
    rates = {name: [] for name in variants}
    for _ in range(repeats):
        for name, (model, callbacks) in variants.items():
            clock = Clock()
            model.fit(dataset, steps_per_epoch=window, epochs=1, verbose=0, callbacks=[*callbacks, clock])
            rates[name].append(window / clock.seconds)
    return rates


def jacobian_pass(probe, repeats):
    """Median seconds of a pass and the peak of TensorFlow's CPU allocator in MiB."""
    model = build()
    jacobian_singular_values(model, probe)  # first-call setup
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jacobian_singular_values(model, probe)
        times.append(time.perf_counter() - start)
    tf.config.experimental.reset_memory_stats("CPU:0")
    jacobian_singular_values(model, probe)
    peak = tf.config.experimental.get_memory_info("CPU:0")["peak"] / 2**20
    return statistics.median(times), peak


def eigensolver_floor(probe, repeats):
    """Median seconds of TensorFlow's and NumPy's eigenvalue solvers alone on the
    float64 Gram matrices of every hidden block that a pass over ``probe`` decomposes."""
    model = build()
    # The pass's own Gram matrices, by its internal helpers: the floor is meant for exactly these.
    blocks, _, gains = zip(*instruments._forward(model, probe, "inference"))
    grams = [instruments._block_gram(instruments._kernel(block.dense), gain).numpy()
             for block, gain in zip(blocks, gains)]
    solvers = {"tf.linalg.eigvalsh": lambda g: tf.linalg.eigvalsh(g).numpy(),
               "np.linalg.eigvalsh": np.linalg.eigvalsh}
    floor = {}
    for name, solve in solvers.items():
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            for gram in grams:
                solve(gram)
            times.append(time.perf_counter() - start)
        floor[name] = statistics.median(times)
    return floor


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    args = parser.parse_args(argv)
    window, repeats, chunks, writes = (1000, 1, 20, 3) if args.quick else (5000, 5, 300, 10)
    rng = np.random.default_rng(0)
    x = rng.random((6000, 784), dtype=np.float32)
    y = rng.integers(0, 10, 6000)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(BATCH).prefetch(4)
    print(f"{os.cpu_count()} CPU cores; TensorFlow {tf.__version__}, Keras {keras.__version__}")

    chunk = recording_cost(dataset, chunks)
    step = chunk["MLP"] / STEPS_PER_EXECUTION
    print(f"\n1. Gradient recording, median of {chunks} alternated chunks of {STEPS_PER_EXECUTION} steps:")
    for name, seconds in chunk.items():
        print(f"   {name:12s} {seconds * 1e3:7.2f} ms/chunk  {STEPS_PER_EXECUTION / seconds:6.0f} steps/s")
    print(f"   MLP / keras.Model time: {chunk['MLP'] / chunk['keras.Model']:.3f}")

    with tempfile.TemporaryDirectory() as log_dir:
        print(f"\n2. The first write, one later write (mean of {writes}) and its share of the "
              f"training time at {step * 1e3:.2f} ms/step:")
        print(f"   {'config':10s} {'instrument':12s} {'probe':>5s} {'every':>6s} {'first s':>8s} "
              f"{'s/write':>8s} {'share':>6s}")
        config = LogConfig(instruments=INSTRUMENTS + ON_REQUEST)
        seconds = write_seconds(config, x[:config.probe_size], log_dir, writes)
        shares = {i: seconds[i][1] / (getattr(config, f"{i}_every") * step) for i in config.instruments}
        for i in config.instruments:
            print(f"   {'defaults':10s} {i:12s} {config.probe_size:5d} {getattr(config, f'{i}_every'):6d} "
                  f"{seconds[i][0]:8.4f} {seconds[i][1]:8.4f} {shares[i]:6.1%}")
        print(f"   {'defaults':10s} {'all four':12s} {'':5s} {'':6s} {'':8s} {'':8s} "
              f"{sum(shares[i] for i in INSTRUMENTS):6.1%}")
        rates = throughput(dataset, log_dir, x, window, repeats)
    base = statistics.median(rates["keras.Model"])
    print(f"\n3. fit, {repeats} interleaved windows of {window} steps per variant:")
    print(f"   {'variant':16s} {'median steps/s':>14s} {'vs plain':>9s} {'range':>11s}")
    for name, r in rates.items():
        print(f"   {name:16s} {statistics.median(r):14.0f} {statistics.median(r) / base:9.3f} "
              f"{min(r):5.0f}-{max(r):<5.0f}")

    print("\n4. Jacobian-spectrum pass, all hidden layers + network:")
    for n in (1000, 250):
        pass_seconds, peak = jacobian_pass(x[:n], 3 if args.quick else 5)
        print(f"   {n:5d} examples: {pass_seconds:.3f} s, peak TensorFlow CPU memory {peak:.0f} MiB")
        for solver, seconds in eigensolver_floor(x[:n], 3 if args.quick else 5).items():
            print(f"          of which the floor, {solver} alone: {seconds:.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
