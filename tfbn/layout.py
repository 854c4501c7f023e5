"""TensorBoard's Custom Scalars layout of a study: the arms of every key measure on one chart.

TensorBoard's Scalars tab draws one card per tag and run group, so telling BN
before from after means hovering over lines. The Custom Scalars tab draws a
multi-line chart per entry of a layout, every run whose tag matches on the
same axes; `write_layout` writes one such chart per key measure and layer of
the instruments a study records. A chart's regex matches its tag in every run,
whichever study wrote it, so its title names no study: TensorBoard merges the
layouts of every study in a log dir by category title and drops repeated
charts, so each chart shows once however many studies share the log dir, and
its run filter (e.g. ``course2017_study/``) selects a study.
"""

import re

import tensorflow as tf
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.custom_scalar import summary as custom_scalar_summary

from tfbn import tags


def study_layout(config):
    """The `layout_pb2.Layout` of a study, from its `tfbn.config.Config`.

    Categories, titled by measure: test accuracy and loss;
    then per recorded instrument a chart per layer of gradient norms, weight
    norms, the Jacobian's mean squared singular value, the median input of
    each nonlinearity, internal covariate shift and landscape smoothness.
    """
    dense = [f"dense_{i}" for i in range(1, config.model.depth + 1)] + ["logits"]
    acts = [f"act_{i}" for i in range(1, config.model.depth + 1)]
    categories = [("accuracy and loss", [("test accuracy", tags.TEST_ACCURACY),
                                         ("test loss", tags.TEST_LOSS),
                                         ("training loss", tags.TRAIN_LOSS)])]
    per_instrument = {
        "gradients": ("gradient norm per layer", [(layer, tags.gradient_norm(layer)) for layer in dense]),
        "weights": ("kernel norm per layer", [(layer, tags.weight_norm(layer)) for layer in dense]),
        "jacobian": ("Jacobian mean squared singular value",
                     [(layer, tags.jacobian(layer, "mean_square")) for layer in ["network", *dense[:-1]]]),
        "percentiles": ("median input of each nonlinearity",
                        [(act, tags.percentile(act, "all", 50)) for act in acts]),
        "ics": ("internal covariate shift ||G - G'||", [(layer, tags.ics("l2", layer)) for layer in dense[1:]]),
        "landscape": ("loss landscape along the gradient",
                      [(name.replace("_", " "), tags.landscape(name)) for name in tags.LANDSCAPE_MEASURES]),
    }
    categories += [per_instrument[name] for name in per_instrument if name in config.log.instruments]
    return layout_pb2.Layout(category=[
        layout_pb2.Category(
            title=title,
            chart=[layout_pb2.Chart(
                title=chart, multiline=layout_pb2.MultilineChartContent(tag=[f"^{re.escape(tag)}$"]))
                for chart, tag in charts])
        for title, charts in categories])


def write_layout(experiment_dir, config):
    """Writes `study_layout` into the study's own run, the folder that holds its trials' runs."""
    with tf.summary.create_file_writer(experiment_dir).as_default():
        summary = custom_scalar_summary.pb(study_layout(config))
        tf.summary.experimental.write_raw_pb(summary.SerializeToString(), step=0)
