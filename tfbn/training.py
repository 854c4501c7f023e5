"""Step-based training of trials, one network per trial or several packed together.

A *pack* is a list of branches; a branch is one network trained on its own
seed's batches from the pack's shared training split (`tfbn.packed.PackedModel`),
and measured as one or more trials
(`Target`), each on its own test split: trials that differ only in the test
split (``data.test_ratio``) share a training. Every trial keeps its own
TensorBoard run, instruments and summary, exactly as if it had trained alone;
the trials of one branch compute their Jacobian spectra once a step, on the
distinct examples of their probe sets (`tfbn.callbacks.SharedSpectra`).

Training runs ``train.steps`` steps as ``steps / eval_every`` Keras epochs of
``eval_every`` steps each; after each, every trial is evaluated on its test
split (BN with its moving statistics, and with each test batch's own
statistics) by one compiled call over the in-memory test sets.

Packs of the same shapes (branch networks, optimizers, streams, batch size and
training data) train on one model, restarted with each pack's initial values:
its steps are traced and compiled once per process, however many packs follow.
"""

import collections
import contextlib
import dataclasses
import inspect
import json
import math
import time

import keras

from tfbn import interrupts
from tfbn.callbacks import SharedSpectra, StepMetrics, TrainingSample, build_instruments
from tfbn.config import absolute_threshold, load_builder
from tfbn.data import load_data, seeded_indices
from tfbn.errors import ConfigError, DataError
from tfbn.models import MLP, build_mlp, initializer_from
from tfbn.packed import PackEvaluation, PackedModel, kernel_groups, optimizer_key
from tfbn.results import TrialResult

# Training steps per call into the compiled graph (a block of batches that
# `tfbn.packed.PackedModel` loops over); per-step Python dispatch dominates an
# MLP this small (about 30x slower with one step per call on 2 CPU cores).
MAX_STEPS_PER_EXECUTION = 50

# Compiled packs kept for packs of the same shapes. TensorFlow keeps what XLA
# compiled for a model as long as the process lives (about 30 MB for a
# 3-branch pack of the quickstart's networks): a process that compiled a
# model per pack grew by that much with every pack. A study has a few shapes.
MAX_COMPILED_PACKS = 8
_compiled = collections.OrderedDict()  # shape key -> _Compiled, least recently used first


@dataclasses.dataclass
class _Compiled:
    """A compiled `PackedModel`, what it was built for, and its last evaluation."""

    model: object
    x_train: object  # kept, so that no other array takes its id in the key
    evaluation: object = None
    splits: tuple = ()


@dataclasses.dataclass(frozen=True)
class Target:
    """One trial measured on a branch of a pack.

    Attributes:
        config: The trial's `tfbn.config.Config`; its ``data`` section gives the
            test split. The first target of a branch also gives the network,
            the optimiser and the training batches.
        log_dir: The trial's run directory.
        callbacks: Further Keras callbacks of this trial (`tfbn.callbacks.Progress`).
    """

    config: object
    log_dir: str
    callbacks: tuple = ()


def build_model(config, data):
    """The network a config describes, sized for ``data``.

    `tfbn.build_mlp`'s, or, with ``model.builder``, the network of the user's
    function that it names, called with those of `tfbn.build_mlp`'s keyword
    arguments below that it declares (all of them if it takes ``**kwargs``).
    That function must return a functional `keras.Model` from flat examples to
    logits whose first layer is a Dense layer named ``dense_1`` on the input,
    as `tfbn.build_mlp`'s is: packs train such networks (`tfbn.packed`).
    """
    m = config.model
    arguments = dict(
        input_shape=data.input_shape,
        num_classes=data.num_classes,
        hidden_units=(m.width,) * m.depth,
        activation=m.activation,
        bn=m.bn,
        seed=config.train.seed,
        leaky_slope=m.leaky_slope,
        bn_momentum=m.bn_momentum,
        bn_epsilon=m.bn_epsilon,
        bn_synchronized=config.model.bn_sync,
        noise_shift=m.noise_shift,
        noise_scale=m.noise_scale,
        kernel_initializer=initializer_from(m.initializer),
        logits_initializer=None if m.logits_initializer is None else initializer_from(m.logits_initializer),
    )
    if m.builder is None:
        return build_mlp(**arguments)
    return _build_user_model(m.builder, arguments)


def _build_user_model(spec, arguments):
    """The network of the function ``model.builder`` names, as a `tfbn.models.MLP`."""
    builder = load_builder(spec)
    parameters = inspect.signature(builder).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        arguments = {name: value for name, value in arguments.items() if name in parameters}
    network = builder(**arguments)
    if not isinstance(network, keras.Model) or "dense_1" not in [l.name for l in network.layers]:
        raise ConfigError(
            f"model.builder {spec!r} returned {type(network).__name__}; return a functional "
            "keras.Model whose first layer is a Dense layer named dense_1 (see tfbn.training.build_model)")
    # The same layers as a model whose training step keeps its kernels' gradients.
    return MLP(network.input, network.output, name=network.name)


def build_optimizer(train_config):
    """SGD (no momentum) or Adam at the configured learning rate."""
    if train_config.optimizer == "adam":
        return keras.optimizers.Adam(train_config.learning_rate)
    return keras.optimizers.SGD(train_config.learning_rate)


def steps_per_execution(eval_every):
    """The largest divisor of ``eval_every`` up to `MAX_STEPS_PER_EXECUTION`."""
    return max(d for d in range(1, min(eval_every, MAX_STEPS_PER_EXECUTION) + 1)
               if eval_every % d == 0)


def train_trial(config, data, log_dir, callbacks=(), strategy=None):
    """Trains the model of one trial config and summarises its test accuracy.

    Args:
        config: The trial's `tfbn.config.Config` (factor levels applied).
        data: The `tfbn.data.Data` to train and evaluate on.
        log_dir: Run directory for its TensorBoard event file.
        callbacks: Further Keras callbacks, e.g. `tfbn.callbacks.Progress`.
        strategy: A `tf.distribute.Strategy` to build and train under, or None.

    Returns:
        The trial's `tfbn.results.TrialResult`.
    """
    [[result]] = train_pack([[Target(config, log_dir, tuple(callbacks))]], strategy,
                            datasets=[[data]])
    return result


def train_pack(branches, strategy=None, on_result=None, datasets=None):
    """Trains the branches of a pack together and summarises each trial.

    Args:
        branches: A list of branches, each a list of `Target`s. All branches
            must share the training data, ``batch_size``, ``steps`` and
            ``eval_every``; each trains on its own ``train.seed``'s batches.
        strategy: A `tf.distribute.Strategy` to build and train under, or None.
        on_result: Called as ``on_result(target, result)`` for each trial as
            soon as its branch has finished (or diverged).
        datasets: Per branch and target, the `tfbn.data.Data` to use; loaded
            from each target's ``data`` section when None.

    Returns:
        Per branch, per target, its `tfbn.results.TrialResult`.
    """
    lead = branches[0][0].config
    train = lead.train
    if datasets is None:
        datasets = [[load_data(target.config.data) for target in targets] for targets in branches]
    data = datasets[0][0]
    if train.batch_size > len(data.y_train):
        raise DataError(f"train.batch_size {train.batch_size} exceeds the {len(data.y_train)} "
                        "training examples; lower the batch size")
    # The pack's distinct seeds, in order of appearance: one stream of batches each.
    seeds = list(dict.fromkeys(targets[0].config.train.seed for targets in branches))
    streams = [seeds.index(targets[0].config.train.seed) for targets in branches]
    mirrored = strategy is not None and strategy.num_replicas_in_sync > 1
    # Under MirroredStrategy one step per call: a replica's loop over a block
    # would all-reduce inside it, and the strategy splits a block's first axis.
    block = 1 if mirrored else steps_per_execution(train.eval_every)
    with strategy.scope() if strategy else contextlib.nullcontext():
        compiled = _compiled_pack([build_model(targets[0].config, data) for targets in branches],
                                  [build_optimizer(targets[0].config.train) for targets in branches],
                                  streams, data, strategy, block)
    model = compiled.model
    splits = tuple(tuple((d.x_test, d.y_test) for d in branch_data) for branch_data in datasets)
    if compiled.evaluation is None or not _same_arrays(splits, compiled.splits) \
            or compiled.evaluation.batch_size != train.eval_batch_size:
        compiled.evaluation = PackEvaluation(model, splits, train.eval_batch_size)
        compiled.splits = splits
    driver = _PackDriver(branches, datasets, compiled.evaluation, on_result)
    indices = seeded_indices(len(data.y_train), train.batch_size, seeds)
    model.fit(
        indices if block == 1 else indices.batch(block, drop_remainder=True),
        steps_per_epoch=train.eval_every // block,
        epochs=train.steps // train.eval_every,
        # A stop asked for (Ctrl-C, SIGTERM) ends the training between blocks of steps.
        callbacks=[interrupts.stop_callback(), driver],
        shuffle=False,  # the pipeline shuffles, seeded
        verbose=0,
    )
    return driver.results


def _compiled_pack(networks, optimizers, streams, data, strategy, block):
    """A `PackedModel` of ``networks`` compiled for steps of ``block`` batches: the one
    kept for packs of their shapes, restarted with their values, or a new one."""
    key = (tuple(map(_structure, networks)), tuple(map(optimizer_key, optimizers)),
           tuple(streams), tuple(tuple(members) for members, _ in kernel_groups(optimizers, streams)),
           data.x_train.shape, id(data.x_train), strategy, block)
    compiled = _compiled.get(key)
    if compiled is not None:
        _compiled.move_to_end(key)
        compiled.model.restart(networks, optimizers)
        return compiled
    model = PackedModel(networks, optimizers, data.x_train, data.y_train, streams)
    # XLA fuses a step's many small operations: about a third less CPU time.
    mirrored = strategy is not None and strategy.num_replicas_in_sync > 1
    model.compile(optimizer=None, jit_compile=not mirrored)  # each branch has its own optimizer
    _compiled[key] = compiled = _Compiled(model, data.x_train)
    while len(_compiled) > MAX_COMPILED_PACKS:
        _compiled.popitem(last=False)
    return compiled


def _structure(network):
    """What a network computes, without its initial values: its configuration, seeds left out."""
    def unseeded(value):
        if isinstance(value, dict):
            return {k: unseeded(v) for k, v in value.items() if k != "seed"}
        if isinstance(value, (list, tuple)):
            return [unseeded(v) for v in value]
        return value
    return json.dumps(unseeded(network.get_config()), sort_keys=True, default=repr)


def _same_arrays(splits, others):
    """Whether two nested tuples hold the very same arrays."""
    return len(splits) == len(others) and all(
        len(a) == len(b) and all(x is u and y is v for (x, y), (u, v) in zip(a, b))
        for a, b in zip(splits, others))


class _PackDriver(keras.callbacks.Callback):
    """Runs each trial's own callbacks on its branch, with its own logs.

    Keras's callbacks see one model; here each trial's `StepMetrics`,
    instruments and further callbacks get the branch network as their model
    (a `keras.callbacks.CallbackList` per trial), and epoch logs made of the
    branch's training totals and the trial's test metrics.
    """

    def __init__(self, branches, datasets, evaluation, on_result):
        super().__init__()
        self.branches = branches
        self.datasets = datasets
        self.evaluation = evaluation
        self.on_result = on_result
        self.results = [[None] * len(targets) for targets in branches]
        self._lists = None
        self._metrics = None
        self._running = None
        self._start = None

    def on_train_begin(self, logs=None):
        self._start = time.monotonic()
        self._metrics = [[StepMetrics(t.log_dir) for t in targets] for targets in self.branches]
        self._lists = []
        for targets, branch_data, branch_metrics, network in zip(
                self.branches, self.datasets, self._metrics, self.model.branches):
            shared = _shared_spectra(targets, branch_data)
            self._lists.append([
                keras.callbacks.CallbackList(
                    [metrics, *build_instruments(t.config.log, metrics.writer, d.x_test,
                                                 _sample(t.config, d), shared), *t.callbacks],
                    model=network)
                for t, d, metrics in zip(targets, branch_data, branch_metrics)])
        self._running = list(range(len(self.branches)))
        for i in self._running:
            for callbacks in self._lists[i]:
                callbacks.on_train_begin()

    def on_epoch_begin(self, epoch, logs=None):
        self.model.reset_totals()

    def on_train_batch_end(self, batch, logs=None):
        for i in self._running:
            for callbacks in self._lists[i]:
                callbacks.on_train_batch_end(batch)

    def on_epoch_end(self, epoch, logs=None):
        totals = self.model.totals.numpy()
        alive = self.model.alive.numpy()
        measured = self.evaluation()
        for i in list(self._running):
            loss, correct, count = totals[i]
            train_logs = {"loss": loss / count, "accuracy": correct / count}
            for callbacks, test_logs in zip(self._lists[i], measured[i]):
                callbacks.on_epoch_end(epoch, {**train_logs, **test_logs})
            if not alive[i]:
                self._finish(i)
        if not self._running:
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        for i in list(self._running):
            self._finish(i)

    def _finish(self, i):
        self._running.remove(i)
        seconds = time.monotonic() - self._start
        for j, (target, callbacks, metrics) in enumerate(
                zip(self.branches[i], self._lists[i], self._metrics[i])):
            callbacks.on_train_end()
            train = target.config.train
            self.results[i][j] = summarise(metrics.history, train.steps, absolute_threshold(train.threshold), seconds)
            if self.on_result:
                self.on_result(target, self.results[i][j])


def _shared_spectra(targets, datasets):
    """One `SharedSpectra` for the Jacobian probes of a branch's trials, or None.

    Only where it saves work: several trials, each with the ``jacobian``
    instrument in inference mode.
    """
    logs = [target.config.log for target in targets]
    if len(targets) < 2 or any("jacobian" not in log.instruments or log.jacobian_mode != "inference"
                               for log in logs):
        return None
    return SharedSpectra([data.x_test[:log.probe_size] for data, log in zip(datasets, logs)])


def _sample(config, data):
    """The training batches of a trial's optimization probes."""
    return TrainingSample(data.x_train, data.y_train, config.train.batch_size, config.train.seed)


def summarise(history, steps, threshold, seconds):
    """The `tfbn.results.TrialResult` of one trial from its evaluation history."""
    finite = [(step, logs) for step, logs in history
              if math.isfinite(logs.get("loss", math.nan))]
    accuracies = [(step, logs["val_accuracy"]) for step, logs in finite]
    last_step = history[-1][0] if history else 0
    reached = [step for step, acc in accuracies if acc >= threshold]
    return TrialResult(
        status="ok" if len(finite) == len(history) and last_step >= steps else "diverged",
        steps_run=last_step,
        final_accuracy=accuracies[-1][1] if accuracies else math.nan,
        best_accuracy=max((acc for _, acc in accuracies), default=math.nan),
        steps_to_threshold=reached[0] if reached else None,
        final_loss=finite[-1][1]["val_loss"] if finite else math.nan,
        final_accuracy_batch_stats=finite[-1][1].get("val_accuracy_batch_stats") if finite else None,
        seconds=round(seconds, 2),
    )
