"""The report's figures as PNG files (`tfbn.report.tensorboard` shows them in TensorBoard).

Figures are drawn on `matplotlib.figure.Figure` objects without pyplot, so
they render with the Agg canvas whatever backend the caller has chosen.
A figure whose data the study lacks (no ``test_ratio`` factor, an instrument
off) is skipped with the reason, which the report states.
"""

import dataclasses
import functools
import math
import os

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.image import imsave

from tfbn import tags
from tfbn.report.summaries import final_accuracy, last_hidden_unit, thresholds

DPI = 100
PANEL_SIZE = (3.8, 2.9)  # inches per panel
MIN_WIDTH = 5.5  # inches; room for the legend under a single panel
MARGINS = {"left": 1.0, "right": 0.2, "top": 0.6, "bottom": 0.9}  # inches
MAX_COLUMNS = 4
ARM_COLORS = {"none": "black", "before": "tab:blue", "after": "tab:orange", "renorm": "tab:green",
              "noisy": "tab:red"}
BAND = ("band: min to max over the trials averaged (seeds, and in a full factorial the other "
        "factors' levels)")


@dataclasses.dataclass(frozen=True)
class Plot:
    """One figure of the report: drawn to ``path``, or skipped for ``skipped``.

    ``panels`` holds, for a figure of several panels, each panel as its own
    image: ``(panel title, RGB array)``, the figure's legend under it.
    """

    name: str
    title: str
    caption: str
    path: str = None
    skipped: str = None
    panels: tuple = ()


class Skip(Exception):
    """Raised by a figure's drawing function when the study lacks its data."""


def draw_figures(study, out_dir):
    """Draws every figure of the report into ``out_dir``.

    Returns:
        A list of `Plot`, drawn or skipped, in report order.
    """
    plots = []
    for name, title, caption, draw in _plan(study):
        try:
            figure = draw()
        except Skip as skip:
            plots.append(Plot(name, title, caption, skipped=str(skip)))
            continue
        figure.suptitle(title)
        # Rendered once: the PNG file and the panels come from the same pixels.
        figure.set_dpi(DPI)
        figure.set_facecolor("white")
        canvas = FigureCanvasAgg(figure)
        canvas.draw()
        image = np.asarray(canvas.buffer_rgba())[..., :3]
        path = os.path.join(out_dir, f"{name}.png")
        imsave(path, image)
        plots.append(Plot(name, title, caption, path=path, panels=_panels(figure, canvas, image)))
    return plots


def _panels(figure, canvas, image):
    """Each drawn panel of a figure of several, cut from its rendered ``image`` with its legend.

    TensorBoard's Images tab scales an image to its card; a grid of panels is
    unreadable there unless shown at actual size, one panel is not.
    """
    shown = [ax for ax in figure.axes if ax.get_visible() and ax.has_data()]
    if len(shown) < 2:
        return ()
    renderer = canvas.get_renderer()
    legend = [_crop(image, box.get_window_extent(renderer)) for box in figure.legends]
    return tuple((ax.get_title(), _stack([_crop(image, ax.get_tightbbox(renderer)), *legend]))
                 for ax in shown)


def _crop(image, box, pad=4):
    """The pixels of a display-space bounding box (origin bottom left) of a rendered image."""
    height, width = image.shape[:2]
    x0, x1 = max(int(box.x0) - pad, 0), min(int(box.x1) + pad, width)
    top, bottom = max(height - int(box.y1) - pad, 0), min(height - int(box.y0) + pad, height)
    return image[top:bottom, x0:x1]


def _stack(images):
    """Images one under the other on white, left-aligned."""
    width = max(image.shape[1] for image in images)
    padded = [np.pad(image, ((0, 0), (0, width - image.shape[1]), (0, 0)), constant_values=255)
              for image in images]
    return np.concatenate(padded, axis=0)


def _plan(study):
    """(name, title, caption, draw) of each figure, in report order."""
    by_level = [(f"accuracy_{f}", f"Test accuracy per {f} level",
                 f"Test accuracy (BN with moving statistics) against the training step, one panel "
                 f"per {f} level, BN arms overlaid: mean line; {BAND}. Dotted: the absolute threshold.",
                 functools.partial(_accuracy, study, f)) for f in study.compared]
    return [
        *(by_level or [("accuracy", "Test accuracy",
                        f"Test accuracy (BN with moving statistics) against the training step, BN "
                        f"arms overlaid: mean line; {BAND}. Dotted: the absolute threshold.",
                        functools.partial(_accuracy, study, None))]),
        ("grad_norm", "Gradient norm per layer (claim 4)",
         f"L2 norm of the loss gradient of each Dense kernel against the step (log scale), "
         f"BN arms overlaid; {BAND}.",
         functools.partial(_layer_grid, study, tags.GRADIENT_NORM, "gradient norm", "gradients", True)),
        ("jacobian_spectra", "Jacobian singular values, last recorded step (claim 5)",
         "Density of the singular values of the network's Jacobian and of each hidden block's, "
         "over the probe set, at the last recorded step; one line per trial. Dashed: 1, "
         "isometry.", functools.partial(_jacobian, study)),
        ("weight_norm", "Weight norm per layer (claim 3)",
         f"L2 norm of each Dense kernel against the step, BN arms overlaid; {BAND}.",
         functools.partial(_layer_grid, study, tags.WEIGHT_NORM, "kernel norm", "weights", False)),
        ("percentiles", "Input of the last hidden layer's unit (claim 2; Ioffe & Szegedy fig. 1b,c)",
         "15th, 50th and 85th percentile of one unit's nonlinearity input over the probe set "
         "against the step, one panel per BN arm; mean over the trials.",
         functools.partial(_percentiles, study)),
        ("class_ratio", "Final accuracy against the test split's class ratio",
         "Final test accuracy per test class ratio, evaluated with BN's moving statistics "
         "(final_accuracy) and with each test batch's own statistics "
         "(final_accuracy_batch_stats); without BN both modes are the same network, so `none` "
         "shows final_accuracy in both panels. Mean with min-max bars over the trials.",
         functools.partial(_class_ratio, study)),
        *_optimization_plan(study),
    ]


def _optimization_plan(study):
    """The figures of claims 7 and 8 (Santurkar et al. 2018, figures 5 and 4), where a study
    records their instruments."""
    plan = []
    if "ics" in study.config.log.instruments:
        plan += [(f"ics_{kind}", f"Internal covariate shift per layer, {kind} (claims 7, 9)",
                  f"{what} between a layer's kernel gradient G on a training batch before and G' "
                  f"after the earlier layers take that step's update, against the step, BN arms "
                  f"overlaid (Santurkar et al. 2018, fig. 5); {BAND}.",
                  functools.partial(_layer_grid, study, f"{tags.ICS}/{kind}", what, "ics", log))
                 for kind, what, log in (("l2", "||G - G'||", True), ("cosine", "cos(G, G')", False))]
    if "landscape" in study.config.log.instruments:
        plan.append(("landscape", "Loss landscape along the gradient (claim 8)",
                     "Over training, per BN arm (Santurkar et al. 2018, fig. 4): the range of the "
                     "loss (loss variation), the largest change of the gradient (gradient "
                     "predictiveness) and that change over the step's length (effective "
                     "beta-smoothness) as the step along the gradient goes from 0.25x to 4x the "
                     f"learning rate; log scale; {BAND}.", functools.partial(_landscape, study)))
    return plan


def _figure(rows, columns):
    width = max(PANEL_SIZE[0] * columns, MIN_WIDTH)
    height = PANEL_SIZE[1] * rows + MARGINS["top"] + MARGINS["bottom"]
    # Fixed margins in inches: a layout engine costs about a second per figure on a slow CPU.
    figure = Figure(figsize=(width, height))
    figure.subplots_adjust(left=MARGINS["left"] / width, right=1 - MARGINS["right"] / width,
                           top=1 - MARGINS["top"] / height, bottom=MARGINS["bottom"] / height,
                           wspace=0.4, hspace=0.5)
    return figure, figure.subplots(rows, columns, squeeze=False)


def _legend(figure, axes):
    labels = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            labels.setdefault(label, handle)
    if labels:
        figure.legend(labels.values(), labels.keys(), loc="lower center",
                      ncols=min(len(labels), 6), fontsize="small")


def _color(bn):
    return ARM_COLORS.get(bn, "tab:purple")


def _activation_rows(study):
    """(label, levels) per figure row: sigmoid and relu if present, else every activation."""
    if "activation" not in study.compared:
        return [(f"act={study.config.model.activation}", {})]
    levels = study.factors["activation"]
    shown = [a for a in ("sigmoid", "relu") if a in levels] or levels
    return [(f"act={a}", {"activation": a}) for a in shown]


def _series(trials, tag_of):
    """Mean, min and max over trials of a scalar, on the union of their steps."""
    series = [dict(zip(*t.scalar(tag_of(t)))) for t in trials if tag_of(t)]
    series = [s for s in series if s]
    if not series:
        return None
    steps = sorted(set().union(*series))
    values = np.array([[s.get(step, np.nan) for step in steps] for s in series])
    return np.array(steps), np.nanmean(values, 0), np.nanmin(values, 0), np.nanmax(values, 0)


def _band(ax, trials, tag, label, color):
    """Draws a mean line and its min-max band; returns whether there was data."""
    series = _series(trials, lambda t: tag)
    if series is None:
        return False
    steps, mean, low, high = series
    # A lone point (e.g. only the initial weights recorded) would be an invisible line.
    ax.plot(steps, mean, color=color, label=label, linewidth=1.2, marker="o" if len(steps) == 1 else None)
    ax.fill_between(steps, low, high, color=color, alpha=0.18, linewidth=0)
    return True


def _accuracy(study, factor):
    levels = study.factors[factor] if factor else [None]
    columns = min(len(levels), MAX_COLUMNS)
    figure, axes = _figure(math.ceil(len(levels) / columns), columns)
    absolute = thresholds(study.config)[0]
    drawn = False
    for ax, level in zip(axes.flat, levels):
        chosen = {factor: level} if factor else {}
        for bn in study.bn_levels:
            drawn |= _band(ax, study.select(**chosen, bn=bn), tags.TEST_ACCURACY, f"bn={bn}", _color(bn))
        if absolute is not None:
            ax.axhline(absolute, color="gray", linestyle=":", linewidth=1)
        ax.set_title(f"{factor}={level}" if factor else "all trials", fontsize="medium")
        ax.set_xlabel("step")
        ax.set_ylabel("test accuracy")
    for ax in axes.flat[len(levels):]:
        ax.set_visible(False)
    if not drawn:
        raise Skip(f"no trial logged {tags.TEST_ACCURACY}")
    _legend(figure, axes)
    return figure


def _layer_order(layer):
    if layer == "network":
        return (0, 0)
    index = layer.rsplit("_", 1)[-1]
    return (1, int(index)) if index.isdigit() else (2, 0)


def _layers(study, prefix, suffix=""):
    """Layer names ``L`` of tags ``<prefix>/L<suffix>`` that some trial logged, in model order."""
    layers = {tag[len(prefix) + 1:len(tag) - len(suffix)]
              for trial in study.select() for tag in trial.tags(prefix + "/")
              if tag.endswith(suffix)}
    return sorted((layer for layer in layers if layer and "/" not in layer), key=_layer_order)


def _layer_grid(study, prefix, ylabel, instrument, log):
    layers = _layers(study, prefix)
    if not layers:
        raise Skip(f"no trial logged {prefix}/<layer> (the {instrument} instrument was off; "
                   f"add {instrument} to log.instruments)")
    _check_curves(study, [f"{prefix}/{layer}" for layer in layers], instrument)
    rows = _activation_rows(study)
    figure, axes = _figure(len(rows), len(layers))
    for (label, chosen), row in zip(rows, axes):
        for layer, ax in zip(layers, row):
            for bn in study.bn_levels:
                _band(ax, study.select(**chosen, bn=bn), f"{prefix}/{layer}", f"bn={bn}", _color(bn))
            if log and ax.has_data():
                ax.set_yscale("log")
            ax.set_title(f"{label}  {layer}", fontsize="medium")
            ax.set_xlabel("step")
        row[0].set_ylabel(ylabel)
    _legend(figure, axes)
    return figure


def _check_curves(study, tags, instrument):
    """Skips a figure of curves when no trial recorded any of them at two steps or more."""
    if all(len(t.scalar(tag)[0]) < 2 for t in study.select() for tag in tags):
        raise Skip(f"{' and '.join(tags) if len(tags) < 3 else tags[0] + ' etc.'} were recorded "
                   f"at fewer than two steps (is log.{instrument}_every above train.steps?)")


def _jacobian(study):
    layers = _layers(study, tags.JACOBIAN, "/singular_values")
    if not layers:
        raise Skip("no trial logged jacobian/<layer>/singular_values (the jacobian instrument was "
                   "off; add jacobian to log.instruments)")
    rows = _activation_rows(study)
    figure, axes = _figure(len(rows), len(layers))
    for (label, chosen), row in zip(rows, axes):
        for layer, ax in zip(layers, row):
            steps = set()
            for bn in study.bn_levels:
                for i, trial in enumerate(study.select(**chosen, bn=bn)):
                    history = trial.histograms(tags.jacobian(layer, "singular_values"))
                    if history:
                        steps.add(history[-1][0])
                        _stairs(ax, history[-1][1], _color(bn), f"bn={bn}" if i == 0 else None)
            ax.axvline(1.0, color="gray", linestyle="--", linewidth=1)
            at = f", step {max(steps)}" if steps else ""
            ax.set_title(f"{label}  {layer}{at}", fontsize="medium")
            ax.set_xlabel("singular value")
        row[0].set_ylabel("density")
    _legend(figure, axes)
    return figure


def _stairs(ax, buckets, color, label):
    left, right, counts = np.asarray(buckets, float).T
    if counts.sum() <= 0:
        return
    edges = np.append(left, right[-1])
    widths = np.maximum(right - left, 1e-12)
    ax.stairs(counts / (counts.sum() * widths), edges, color=color, label=label, linewidth=1.2)


def _percentiles(study):
    if not any(last_hidden_unit(t) for t in study.select()):
        raise Skip("no trial logged percentiles/act_<i>/unit_<u>/p<q> "
                   "(the percentiles instrument was off; add percentiles to log.instruments)")
    _check_curves(study, sorted({f"{last_hidden_unit(t)}/p50" for t in study.select()
                                 if last_hidden_unit(t)}), "percentiles")
    rows, columns = _activation_rows(study), study.bn_levels
    figure, axes = _figure(len(rows), len(columns))
    for (label, chosen), row in zip(rows, axes):
        for bn, ax in zip(columns, row):
            trials = study.select(**chosen, bn=bn)
            lines = [_series(trials, lambda t, q=q: last_hidden_unit(t) and f"{last_hidden_unit(t)}/p{q}")
                     for q in (15, 50, 85)]
            if all(lines):
                (steps, p15, *_), (_, p50, *_), (_, p85, *_) = lines
                ax.fill_between(steps, p15, p85, color=_color(bn), alpha=0.2, linewidth=0)
                ax.plot(steps, p50, color=_color(bn))
            units = {last_hidden_unit(t) for t in trials} - {None}
            unit = ", ".join(sorted(u.split("/", 1)[1] for u in units))
            ax.set_title(f"{label}  bn={bn}  {unit}", fontsize="medium")
            ax.set_xlabel("step")
        row[0].set_ylabel("nonlinearity input")
    return figure


def _class_ratio(study):
    if "test_ratio" not in study.compared:
        raise Skip("the study has no test_ratio factor (configs/course2017_class_ratio.yaml "
                   "varies it)")
    ratios = study.factors["test_ratio"]
    figure, axes = _figure(1, 2)
    modes = (("moving statistics", final_accuracy),
             ("batch statistics", lambda t: final_accuracy(t) if t.levels["bn"] == "none"
              else t.number("final_accuracy_batch_stats")))
    for ax, (mode, metric) in zip(axes[0], modes):
        for bn in study.bn_levels:
            values = [np.array([metric(t) for t in study.select(test_ratio=r, bn=bn)]) for r in ratios]
            values = [v[np.isfinite(v)] for v in values]
            x = [i for i, v in enumerate(values) if len(v)]
            mean = np.array([values[i].mean() for i in x])
            # Clipped: the float mean of equal values can fall an ulp outside them.
            bars = np.clip([[mean[j] - values[i].min(), values[i].max() - mean[j]]
                            for j, i in enumerate(x)], 0, None).reshape(-1, 2).T
            ax.errorbar(x, mean, yerr=bars, color=_color(bn), marker="o", capsize=3, label=f"bn={bn}")
        ax.set_xticks(range(len(ratios)), ratios)
        ax.set_xlabel("test class ratio")
        ax.set_ylabel("final test accuracy")
        ax.set_title(mode, fontsize="medium")
    _legend(figure, axes)
    return figure


def _landscape(study):
    names = [tags.landscape(name) for name in tags.LANDSCAPE_MEASURES]
    _check_curves(study, names, "landscape")
    rows = _activation_rows(study)
    figure, axes = _figure(len(rows), len(names))
    for (label, chosen), row in zip(rows, axes):
        for name, ax in zip(names, row):
            for bn in study.bn_levels:
                _band(ax, study.select(**chosen, bn=bn), name, f"bn={bn}", _color(bn))
            if ax.has_data():
                ax.set_yscale("log")
            ax.set_title(f"{label}  {name.split('/')[1].replace('_', ' ')}", fontsize="medium")
            ax.set_xlabel("step")
    _legend(figure, axes)
    return figure
