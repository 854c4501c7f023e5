"""Several `tfbn.build_mlp` networks trained as branches of one Keras model.

A network this small leaves most of a training step to per-operation overhead,
so networks that train on the same data train faster in one graph than one after
another. `PackedModel` holds the branches, feeds each its own seed's training
batch from the one copy of the training split and minimises the sum of their
losses. The gradient of that sum with
respect to a branch's variables is exactly the gradient of the branch's own
loss, and each branch has an optimizer of its own, so every branch takes
exactly the updates it would take alone.

A branch whose training loss becomes NaN or infinite is frozen: from that step
on its gradients are replaced by zeros, and the other branches train on.

`PackEvaluation` measures every branch on its test splits in one compiled call.
"""

import keras
import numpy as np
import tensorflow as tf

from tfbn import noise
from tfbn.data.subset import distinct_rows
from tfbn.instruments import has_batch_norm

_TRAIN_TOTALS = 3  # loss summed over examples, correct predictions, examples


class PackedModel(keras.Model):
    """Branches fed the same batches, each with its own optimizer.

    The model is fed indices into the training split, which it holds in
    memory and gathers from: a batch ``[batch_size, streams]`` holds side by
    side the index batches of the pack's seeds (`tfbn.data.seeded_indices`),
    and each branch gathers the column of its own seed.

    `train_step` takes a batch of indices, or a block of consecutive batches
    ``[steps, batch_size, streams]`` that it trains on in a loop inside the
    compiled step: Keras's own
    ``steps_per_execution`` still pays a dispatch and an input-pipeline read
    per step, which measured as much as a third of a 9-branch step at batch 64.

    The first Dense layers of branches trained by plain SGD (no momentum, no
    norm clipping) run as one matrix product of the batch with their kernels
    side by side (those of branches on the same stream), kept during training
    in one variable (`KernelGroup`) that an SGD of the same configuration updates: SGD's update is elementwise, so
    each column block takes exactly the update its branch's own optimizer
    would give it. Kernels in variables of their own would cost copies of
    every kernel and its gradient each step (joining them for the product,
    splitting and masking the gradient), as much again as the training itself
    at batch 4. Branches with optimizers that keep state (Adam's moments) keep
    their kernels, which their own optimizers update.

    Each branch's first-layer kernel, and the gradients it keeps
    (``kernel_gradients``), are brought up to date at the end of every call of
    `train_step`: the points at which Keras hands control to callbacks.
    Between calls every branch holds exactly the variables it would hold if
    trained alone.

    `restart` starts a new pack of the same shapes on the same model, so
    that its compiled steps serve it without tracing or compiling again.

    Args:
        branches: `tfbn.models.MLP` networks; each keeps the gradients its
            optimizer applied (``kernel_gradients``), as when trained alone.
        optimizers: One unbuilt Keras optimizer per branch; the branch also
            gets it as its ``optimizer`` attribute, so that callbacks given the
            branch as their model read its own step count.
        x_train: The training inputs, a NumPy array.
        y_train: Their integer labels.
        streams: Per branch, the column of the index batches it trains on
            (its seed's); None: all on one stream.

    Attributes:
        alive: Bool variable ``[branches]``: False once a branch's loss was not finite.
        totals: Float variable ``[branches, 3]``: per branch, the training loss
            summed over examples, the correct predictions and the examples since
            the last `reset_totals`.
        kernel_groups: The `KernelGroup`s that train first-layer kernels side by side.
    """

    def __init__(self, branches, optimizers, x_train, y_train, streams=None, **kwargs):
        super().__init__(**kwargs)
        self.branches = list(branches)
        self.branch_optimizers = list(optimizers)
        self.streams = list(streams) if streams is not None else [0] * len(self.branches)
        for branch, optimizer in zip(self.branches, self.branch_optimizers):
            optimizer.build(branch.trainable_variables)
            branch.optimizer = optimizer
        self.first_layers = [branch.get_layer("dense_1") for branch in self.branches]
        # The rest of each branch after its first Dense layer: the same layers and variables.
        self.tails = [keras.Model(first.output, branch.output, name=f"{branch.name}_tail")
                      for first, branch in zip(self.first_layers, self.branches)]
        self.kernel_groups = [
            KernelGroup(members, [self.first_layers[i] for i in members], optimizer)
            for members, optimizer in kernel_groups(self.branch_optimizers, self.streams)]
        grouped = {i for group in self.kernel_groups for i in group.branches}
        # The variables each branch's own optimizer updates in training.
        self._own_variables = [
            [v for v in branch.trainable_variables if not (i in grouped and v is first.kernel)]
            for i, (branch, first) in enumerate(zip(self.branches, self.first_layers))]
        self._x_train = tf.constant(x_train)
        self._y_train = tf.constant(y_train)
        count = len(self.branches)
        # Its branches are built; Keras must not build it by calling it on index batches.
        self.built = True
        self.alive = tf.Variable(tf.ones([count], tf.bool), trainable=False, name="alive",
                                 aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        self.totals = tf.Variable(tf.zeros([count, _TRAIN_TOTALS], tf.float64), trainable=False,
                                  name="totals", aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)

    def call(self, x, training=False):
        return [branch(x, training=training) for branch in self.branches]

    def reset_totals(self):
        self.totals.assign(tf.zeros_like(self.totals))

    def restart(self, networks, optimizers):
        """Makes this pack start afresh as a pack of ``networks`` and ``optimizers``.

        They must have the branches' shapes and optimizer configurations (the
        compiled steps are kept); every branch variable (kernels, BN's
        statistics, noise draws' states) takes its network's value, every
        optimizer starts again, and no branch has diverged yet.

        Args:
            networks: Networks built as the branches were, with new initial values.
            optimizers: Unbuilt optimizers configured as the branches' own.
        """
        for branch, network, own, fresh in zip(self.branches, networks, self.branch_optimizers,
                                               optimizers, strict=True):
            fresh.build(network.trainable_variables)
            for variable, value in zip(branch.variables + own.variables,
                                       network.variables + fresh.variables, strict=True):
                variable.assign(value)
            for gradient in branch.kernel_gradients.values():
                gradient.assign(tf.zeros_like(gradient))
        for group in self.kernel_groups:
            group.restart([self.first_layers[i] for i in group.branches])
        self.alive.assign(tf.ones_like(self.alive))
        self.reset_totals()

    def train_step(self, indices):
        """Trains on a batch of indices ``[batch, streams]``, or on a block of consecutive
        batches ``[steps, batch, streams]`` in one loop inside the compiled step."""
        if indices.shape.rank == 2:
            last = self._one_step(indices)
        else:
            def body(step, *last):
                return (step + 1, *tf.nest.flatten(self._one_step(indices[step])))
            start = self._zero_step()
            _, *flat = tf.while_loop(lambda step, *_: step < tf.shape(indices)[0], body,
                                     (tf.constant(0), *tf.nest.flatten(start)))
            last = tf.nest.pack_sequence_as(start, flat)
        self._publish(*last)
        # Each branch's training totals are in `totals`; Keras needs some output.
        return {"branches_alive": tf.reduce_sum(tf.cast(self.alive, tf.int32))}

    def _one_step(self, indices):
        """One training step; returns its applied gradients and ``alive`` for `_publish`."""
        # Each stream's batch, gathered once for the branches that train on it.
        x = {s: tf.gather(self._x_train, indices[:, s]) for s in sorted(set(self.streams))}
        y = {s: tf.gather(self._y_train, indices[:, s]) for s in x}
        labels = [y[s] for s in self.streams]
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        with tf.GradientTape() as tape:
            products = {}
            for group in self.kernel_groups:
                products.update(zip(group.branches, group.outputs(x[self.streams[group.branches[0]]])))
            logits = []
            for i, (first, tail) in enumerate(zip(self.first_layers, self.tails)):
                z = products[i] if i in products else tf.matmul(x[self.streams[i]], first.kernel)
                logits.append(tail(z + first.bias if first.use_bias else z, training=True))
            # Per example; each replica's mean is divided by the replicas, whose
            # gradients the optimizers sum, as Keras's own loss scaling does.
            losses = [keras.losses.sparse_categorical_crossentropy(labels_i, z, from_logits=True)
                      for labels_i, z in zip(labels, logits)]
            total = tf.add_n([tf.reduce_mean(loss) for loss in losses]) / replicas
        own_gradients, group_gradients = tape.gradient(
            total, (self._own_variables, [group.kernel for group in self.kernel_groups]))
        step_totals = tf.stack([
            tf.stack([tf.reduce_sum(tf.cast(loss, tf.float64)),
                      tf.reduce_sum(tf.cast(tf.equal(tf.argmax(z, -1, output_type=y_i.dtype), y_i),
                                            tf.float64)),
                      tf.cast(tf.shape(y_i)[0], tf.float64)])
            for loss, z, y_i in zip(losses, logits, labels)])
        context = tf.distribute.get_replica_context()
        if context is not None and replicas > 1:
            step_totals = context.all_reduce(tf.distribute.ReduceOp.SUM, step_totals)
        alive = tf.logical_and(self.alive, tf.math.is_finite(step_totals[:, 0]))
        self.alive.assign(alive)
        self.totals.assign_add(step_totals)
        kept_own = []
        for i, (variables, optimizer) in enumerate(zip(self._own_variables, self.branch_optimizers)):
            kept_own.append([tf.where(alive[i], g, tf.zeros_like(g)) for g in own_gradients[i]])
            optimizer.apply_gradients(zip(kept_own[-1], variables))
        for group, gradient in zip(self.kernel_groups, group_gradients):
            group.optimizer.apply_gradients([(group.keep_alive(gradient, alive), group.kernel)])
        return kept_own, group_gradients, alive

    def _zero_step(self):
        """Zeros shaped as `_one_step`'s result: the start of a block's loop."""
        return ([[tf.zeros(v.shape, v.dtype) for v in variables] for variables in self._own_variables],
                [tf.zeros(group.kernel.shape, group.kernel.dtype) for group in self.kernel_groups],
                tf.identity(self.alive))

    def _publish(self, kept_own, group_gradients, alive):
        """Copies grouped first-layer kernels into their branches, and each branch's
        last applied gradients into its ``kernel_gradients``."""
        applied = [dict(zip((v.path for v in variables), kept))
                   for variables, kept in zip(self._own_variables, kept_own)]
        for group, gradient in zip(self.kernel_groups, group_gradients):
            for i, kernel, g in zip(group.branches, group.split(group.kernel), group.split(gradient)):
                first = self.first_layers[i]
                first.kernel.assign(kernel)
                applied[i][first.kernel.path] = tf.where(alive[i], g, tf.zeros_like(g))
        for branch, gradients in zip(self.branches, applied):
            branch.record_gradients(gradients)


class KernelGroup:
    """First-layer kernels of branches with the same plain SGD, side by side in one variable.

    Args:
        branches: Positions in the pack of the branches whose kernels it holds.
        layers: Their first Dense layers, in the same order.
        optimizer: An unbuilt SGD configured as those branches' own; it is
            built on the joint kernel.

    Attributes:
        kernel: The joint kernel ``[inputs, sum of units]``, initialised from
            the layers' kernels.
        units: Each branch's number of columns.
    """

    def __init__(self, branches, layers, optimizer):
        self.branches = list(branches)
        self.units = [layer.units for layer in layers]
        self.kernel = keras.Variable(tf.concat([layer.kernel.value for layer in layers], axis=1),
                                     name=f"first_kernels_{self.branches[0]}")
        self.optimizer = optimizer
        self.optimizer.build([self.kernel])

    def restart(self, layers):
        """Takes the layers' kernels again and starts the optimizer's step count afresh
        (its configuration, learning rate included, is that of the new branches)."""
        self.kernel.assign(tf.concat([layer.kernel.value for layer in layers], axis=1))
        self.optimizer.iterations.assign(0)

    def outputs(self, x):
        """Each branch's first-layer product ``x @ kernel`` (bias not added)."""
        return self.split(tf.matmul(x, self.kernel))

    def split(self, joint):
        """A ``[..., sum of units]`` tensor cut into each branch's columns."""
        return tf.split(joint, self.units, axis=-1) if len(self.units) > 1 else [joint]

    def keep_alive(self, gradient, alive):
        """The joint kernel's gradient with the columns of frozen branches zeroed."""
        columns = tf.repeat(tf.gather(alive, self.branches), self.units)
        return tf.where(columns[tf.newaxis, :], gradient, tf.zeros_like(gradient))


def kernel_groups(optimizers, streams):
    """The branches whose first-layer kernels train side by side, and the SGD of each group.

    One group per stream and configuration of plain SGD among ``optimizers``,
    in order of appearance: elementwise and stateless, one SGD on the joint
    kernel updates each branch's block as the branch's own would.

    Returns:
        A list of ``(branch positions, unbuilt SGD)``.
    """
    groups = {}
    for i, (optimizer, stream) in enumerate(zip(optimizers, streams)):
        config = optimizer.get_config()
        if (type(optimizer) is keras.optimizers.SGD and not config["momentum"]
                and not config["use_ema"] and config["clipnorm"] is None
                and config["global_clipnorm"] is None):
            key = (stream, optimizer_key(optimizer))
            groups.setdefault(key, (optimizer, []))[1].append(i)
    return [(members, keras.optimizers.SGD.from_config(optimizer.get_config()))
            for optimizer, members in groups.values()]


def optimizer_key(optimizer):
    """An optimizer's class and configuration, without its name: equal for equal optimizers."""
    return type(optimizer).__name__, repr(sorted((k, v) for k, v in optimizer.get_config().items()
                                                 if k != "name"))


def first_layer_outputs(x, layers):
    """The outputs of Dense ``layers`` that share the input ``x``, by one matrix product."""
    kernels = [layer.kernel for layer in layers]
    joint = tf.matmul(x, kernels[0] if len(kernels) == 1 else tf.concat(kernels, axis=1))
    outputs = tf.split(joint, [layer.units for layer in layers], axis=1)
    return [z + layer.bias if layer.use_bias else z for layer, z in zip(layers, outputs)]


class PackEvaluation:
    """Test loss and accuracy of every branch on its test splits, in one call.

    Each split is measured with BN's moving statistics (inference) and, for
    branches with BN, with each test batch of ``batch_size`` normalised by its
    own statistics. The second mode runs BN in training mode statelessly: no
    variable of any layer changes (BN's and Batch Renormalization's moving
    statistics and step counters included), and noisy BN's noise is off, as
    at any evaluation.

    The first Dense layer, which holds most of the arithmetic, runs once per
    test example and branch: each branch's over the union of its splits'
    examples (the test class ratios of one data set keep the first examples of
    each class, so they share most of them), and the branches with the same
    union as one product. Both modes share it (it comes before any BN); each
    split then takes its own rows, in its own order, so that its batches are
    those it would have alone.

    Args:
        model: A `PackedModel`.
        splits: Per branch, a list of ``(x_test, y_test)`` NumPy arrays; the
            same array objects for branches that share a split.
        batch_size: Examples per batch of the batch-statistics mode.

    Calling it returns, per branch, a list with one dict per split with
    ``val_loss`` and ``val_accuracy`` (and ``val_loss_batch_stats`` and
    ``val_accuracy_batch_stats`` with BN).
    """

    NAMES = ("val_loss", "val_accuracy", "val_loss_batch_stats", "val_accuracy_batch_stats")

    def __init__(self, model, splits, batch_size):
        self.model = model
        self.batch_size = batch_size
        self._shape = [len(branch) for branch in splits]
        self._batch_stats = [has_batch_norm(branch) for branch in model.branches]
        distinct = list({(id(x), id(y)): (x, y) for branch in splits for x, y in branch}.values())
        examples, row_numbers = distinct_rows([x for x, _ in distinct])
        rows = {(id(x), id(y)): (tf.constant(y), numbers)
                for (x, y), numbers in zip(distinct, row_numbers)}
        # Branches whose splits together hold the same examples share one product.
        unions = {}
        for i, branch in enumerate(splits):
            union = np.unique(np.concatenate([rows[id(x), id(y)][1] for x, y in branch]))
            unions.setdefault(union.tobytes(), (union, []))[1].append(i)
        # Per group: its examples, its branches and, per branch and split, the
        # split's labels and its rows among the examples (None: all, in order).
        self._groups = [
            (tf.constant(examples[union]), members,
             [[(rows[id(x), id(y)][0], _positions(union, rows[id(x), id(y)][1]))
               for x, y in splits[i]] for i in members])
            for union, members in unions.values()]
        # Not XLA: compiling this many branches takes longer than it saves.
        self._measure = tf.function(self._measure_all)

    def __call__(self):
        measured = iter(self._measure().numpy())
        results = [[None] * count for count in self._shape]
        for _, members, _ in self._groups:
            for i in members:
                names = self.NAMES if self._batch_stats[i] else self.NAMES[:2]
                results[i] = [dict(zip(names, map(float, next(measured))))
                              for _ in range(self._shape[i])]
        return results

    def _measure_all(self):
        out = []
        for x, members, branch_splits in self._groups:
            outputs = first_layer_outputs(x, [self.model.first_layers[i] for i in members])
            for i, z_union, own_splits in zip(members, outputs, branch_splits):
                tail = self.model.tails[i]
                for y, positions in own_splits:
                    z = z_union if positions is None else tf.gather(z_union, positions)
                    measures = _loss_and_accuracy(tail(z, training=False), y)
                    if self._batch_stats[i]:
                        logits = _batch_statistics_logits(tail, z, self.batch_size)
                        measures = tf.concat([measures, _loss_and_accuracy(logits, y)], 0)
                    else:
                        measures = tf.concat([measures, tf.fill([2], tf.constant(float("nan"), tf.float64))], 0)
                    out.append(measures)
        return tf.stack(out)


def _positions(union, numbers):
    """Where the rows ``numbers`` lie in the sorted ``union``; None when they are all of it, in order."""
    if np.array_equal(union, numbers):
        return None
    return tf.constant(np.searchsorted(union, numbers), tf.int32)


def _batch_statistics_logits(model, x, batch_size):
    """Logits with BN normalising each batch of ``x`` by its own statistics, changing no variable."""
    def logits(batch):
        trainable = [v.value for v in model.trainable_variables]
        non_trainable = [v.value for v in model.non_trainable_variables]
        with noise.suspended():  # training mode for BN's statistics only: noisy BN's noise stays off
            return model.stateless_call(trainable, non_trainable, batch, training=True)[0]

    # The whole batches in one loop, so that the model is traced once, not once per batch.
    whole = x.shape[0] // batch_size * batch_size
    parts = []
    if whole:
        batches = tf.reshape(x[:whole], [whole // batch_size, batch_size, x.shape[1]])
        parts.append(tf.reshape(tf.map_fn(logits, batches), [whole, -1]))
    if whole < x.shape[0]:
        parts.append(logits(x[whole:]))
    return tf.concat(parts, 0)


def _loss_and_accuracy(logits, labels):
    """Mean cross-entropy and accuracy of logits, as a [2] tensor."""
    loss = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
    correct = tf.equal(tf.argmax(logits, -1, output_type=labels.dtype), labels)
    return tf.stack([tf.reduce_mean(tf.cast(loss, tf.float64)),
                     tf.reduce_mean(tf.cast(correct, tf.float64))])
