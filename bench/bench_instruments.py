"""Cost of the TensorBoard instruments on the paper's network.

    python bench/bench_instruments.py            # about 8 minutes on 2 CPU cores
    python bench/bench_instruments.py --quick    # a smoke run, about a minute
    python bench/bench_instruments.py --jacobian # section 4 alone, about a minute

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
   and, alternated with the passes in the same run, the time TensorFlow's
   eigenvalue solver alone takes for that pass's Gram matrices:
   the floor of any exact method that decomposes one Gram matrix per example
   and layer. The pass's ratio to ``tf.linalg.eigvalsh`` alone should stay
   under 1.5; the number of TensorFlow retracing warnings over the warm
   passes should be 0 (the pass is compiled once per model).

Timings on a shared machine vary by 10% or more from window to window;
(1) and (2) are the steadiest figures, (3) checks them end to end.
"""

import argparse
import dataclasses
import logging
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
# The course project's run length, which sets the Jacobian's default period (a tenth of it).
TRAIN_STEPS = 40_000
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


def log_defaults():
    """`LogConfig`'s defaults, with the Jacobian's period resolved as a config of `TRAIN_STEPS` has it."""
    return dataclasses.replace(LogConfig(), jacobian_every=TRAIN_STEPS // 10)


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
    defaults = log_defaults()
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
    """Median seconds of a warm pass and of the eigenvalue solver alone on its Gram matrices,
    alternated; the peak of TensorFlow's CPU allocator in MiB; retracing warnings seen."""
    model = build()
    first = time.perf_counter()
    jacobian_singular_values(model, probe)  # traces the compiled pass
    first = time.perf_counter() - first
    grams = _gram_matrices(model, probe)
    solvers = {"pass": lambda: jacobian_singular_values(model, probe),
               "tf.linalg.eigvalsh": lambda: [tf.linalg.eigvalsh(g).numpy() for g in grams]}
    times = {name: [] for name in solvers}
    with _RetracingCount() as retracing:
        for _ in range(repeats):
            for name, solve in solvers.items():
                start = time.perf_counter()
                solve()
                times[name].append(time.perf_counter() - start)
    tf.config.experimental.reset_memory_stats("CPU:0")
    jacobian_singular_values(model, probe)
    peak = tf.config.experimental.get_memory_info("CPU:0")["peak"] / 2**20
    return first, {name: statistics.median(t) for name, t in times.items()}, peak, retracing.count


def _gram_matrices(model, probe):
    """The float64 Gram matrices that a pass over ``probe`` decomposes: every hidden block's and
    the network's, by the pass's own functions, so that the floor is for exactly these."""
    steps = instruments._steps(model)
    state = instruments._compiled(model, "forward", "inference")(tf.constant(probe))
    gains = state["gains"]
    grams = [instruments._block_gram(instruments._kernel(steps[start].layer), gains[name]).numpy()
             for name, (start, _) in instruments._blocks(steps).items()]
    return grams + [instruments._network_gram(steps, list(gains.values())).numpy()]


class _RetracingCount(logging.Handler):
    """Counts TensorFlow's retracing warnings while in use."""

    def __enter__(self):
        self.count = 0
        tf.get_logger().addHandler(self)
        return self

    def __exit__(self, *exc):
        tf.get_logger().removeHandler(self)

    def emit(self, record):
        self.count += "retracing" in record.getMessage()


def instrument_costs(dataset, x, chunks, writes, window, repeats):
    """Sections 1 to 3."""
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
        config = dataclasses.replace(log_defaults(), instruments=INSTRUMENTS + ON_REQUEST)
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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--jacobian", action="store_true", help="only the Jacobian pass against its floor")
    args = parser.parse_args(argv)
    window, repeats, chunks, writes = (1000, 1, 20, 3) if args.quick else (5000, 5, 300, 10)
    rng = np.random.default_rng(0)
    x = rng.random((6000, 784), dtype=np.float32)
    y = rng.integers(0, 10, 6000)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(BATCH).prefetch(4)
    print(f"{os.cpu_count()} CPU cores; TensorFlow {tf.__version__}, Keras {keras.__version__}")

    if not args.jacobian:
        instrument_costs(dataset, x, chunks, writes, window, repeats)
    print("\n4. Jacobian-spectrum pass, all hidden layers + network, alternated with the solvers alone:")
    for n in (1000, 250):
        first, seconds, peak, retracing = jacobian_pass(x[:n], 3 if args.quick else 7)
        print(f"   {n:5d} examples: {seconds['pass']:.3f} s (first call {first:.2f} s), peak TensorFlow "
              f"CPU memory {peak:.0f} MiB, retracing warnings {retracing}")
        print(f"          the floor, tf.linalg.eigvalsh alone: {seconds['tf.linalg.eigvalsh']:.3f} s; "
              f"pass / floor {seconds['pass'] / seconds['tf.linalg.eigvalsh']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
