"""The text of the report: what was run, the verdicts, both summaries, trials and figures."""

import math
import os
from collections import Counter

from tfbn.report.render import Heading, Image, Items, Table, Text
from tfbn.report.stats import CONFIDENCE, CONTRADICTED, INCONCLUSIVE, RULE, SUPPORTED
from tfbn.report.summaries import (CLAIMS, OVERALL, claim_sides, claim_verdicts, factor_spread,
                                   level_verdicts, primary_arm, relative_steps, thresholds)
from tfbn.report.trials import CONTROL

# The Verdicts table's columns of measure names, one per measure verdict.
_SIDES = {SUPPORTED: "supported by", CONTRADICTED: "contradicted by", INCONCLUSIVE: "inconclusive"}
# The columns of one test in the summary tables (`_test`).
_TEST = (f"Δ mean [{CONFIDENCE:.0%} CI]", "p", "p (Holm)", "verdict")


def build_document(study, levels, measures, plots):
    """The report's blocks (`tfbn.report.render`) from the study and its summaries."""
    return [
        Heading(1, f"Why does BN work? Report on `{study.config.experiment}`"),
        *_overview(study),
        *_verdicts(study, measures),
        *_summary_one(study, levels),
        *_summary_two(study, measures),
        *_trials(study),
        *_figures(plots),
        Heading(2, "Method"),
        Items(_method(study)),
    ]


def _overview(study):
    c = study.config
    # The source that was read: an IDX run keeps the config's tfds name, which it ignores.
    data = {"tfds": c.data.name, "idx": f"IDX files in {c.data.path}"}.get(c.data.source, c.data.source)
    if c.data.classes:
        data += f", classes {list(c.data.classes)}"
    factors = "; ".join(f"{name}: {', '.join(levels)}" for name, levels in study.factors.items())
    missing = f" {len(study.missing)} design points have no result yet." if study.missing else ""
    network = (f"network of {c.model.builder}" if c.model.builder
               else f"MLP {c.model.depth}x{c.model.width} {c.model.activation}")
    return [Text(f"Config defaults: data {data}; {network}; "
                 f"{c.train.optimizer} at learning rate {c.train.learning_rate}, batch "
                 f"{c.train.batch_size}, {c.train.steps} steps, {_threshold_text(c)}. "
                 f"Design {c.study.design}; factors {factors}. "
                 f"{len(study.trials)} trials.{missing}"),
            Text(f"Regenerate with `python -m tfbn.report {study.experiment_dir}`; the figures "
                 "are also in TensorBoard, run `report`.")]


def _threshold_text(config):
    absolute, relative = thresholds(config)
    parts = ([f"accuracy threshold {absolute}"] if absolute is not None else []) + (
        [f"relative threshold {relative:g} (of the best final accuracy of the trials that differ "
         "only in `bn`)"] if relative is not None else [])
    return " and ".join(parts)


def _verdicts(study, measures):
    if not measures:
        return [Heading(2, "Verdicts"),
                Text("No verdicts: the study has no BN arm paired with `none` (same seed and levels).")]
    seeds = study.factors.get("seed", ())
    single = ([] if len(seeds) > 1 else
              [Text("Each design point ran with one seed: every test has one pair, so no interval "
                    "and no verdict. Give the study seeds (`study.factors.seed: [0, 1, 2]`) for "
                    "intervals.")])
    return [Heading(2, "Verdicts"), *single,
            Text(f"BN `{primary_arm(study)}` against `none`, from Summary II, with each measure "
                 "listed under its own verdict; the rule is under Method."),
            verdict_table(measures)]


def verdict_table(measures):
    """The Verdicts table: each claim's verdict and its measures under their own; None without measures."""
    if not measures:
        return None
    verdicts, sides, per_level = claim_verdicts(measures), claim_sides(measures), level_verdicts(measures)
    # Verdicts per level of a factor that changes them, beside the pooled one.
    levels = (("per level",) if per_level else ())
    return Table(("claim", "verdict", *levels, *_SIDES.values()),
                 tuple((f"{n}. {CLAIMS[n]}", f"*{v}*",
                        *(("; ".join(f"{level}: *{verdict}*" for level, verdict in per_level.get(n, {}).items()),)
                          if per_level else ()),
                        *("; ".join(sides[n].get(side, ())) for side in _SIDES))
                       for n, v in verdicts.items()))


def _summary_one(study, rows):
    absolute, relative = thresholds(study.config)
    speeds = ([f"{absolute}"] if absolute is not None else []) + (
        [f"{relative:g} x the best final accuracy of its group, the trials that differ from it "
         "only in `bn`, which the best of them reaches by definition"] if relative is not None else [])
    blocks = [Heading(2, "Summary I: which factor changes BN's effect most"),
              Text(f"Effect of each BN arm against `none` (arm minus none), mean and "
                   f"{CONFIDENCE:.0%} confidence interval over pairs of trials that differ only in "
                   f"`bn`. Steps to threshold: a trial that never reached its threshold "
                   f"({'; '.join(speeds)}) counts as "
                   f"{study.config.train.steps} steps (its total), so the effect on it is "
                   "bounded, not measured, when many never reach it; the never-reached columns "
                   "count them."), *_unreached(study, absolute)]
    if not rows:
        return blocks + [Text("No BN arm to compare with `none`.")]
    speed_columns = [(f"Δ steps to threshold", "never reached (bn / none)", lambda r: (r.steps, r.never))] \
        if absolute is not None else []
    if relative is not None:
        speed_columns.append((f"Δ steps to relative threshold {relative:g}", "never reached, relative (bn / none)",
                              lambda r: (r.relative, r.relative_never)))
    blocks.append(Table(
        ("factor", "level", "bn", "pairs", "Δ final accuracy", *_TEST[1:],
         *(c for title, never, _ in speed_columns for c in (title, *_TEST[1:], never))),
        tuple((r.factor, r.level, r.arm, r.accuracy.n, *_test(r.accuracy, ".4f"),
               *(c for _, _, of in speed_columns
                 for c in (*_test(of(r)[0], ".0f"), f"{of(r)[1][0]} / {of(r)[1][1]}")))
              for r in rows)))
    spread = factor_spread(rows)
    if spread:
        top = next((s for s in spread if s.arm == primary_arm(study)), spread[0])
        blocks += [Text(f"Range of the mean effect across a factor's levels (a description, not a "
                        f"test of interaction): BN `{top.arm}`'s effect on final accuracy changes "
                        f"most with **{top.factor}** ({top.lowest}: {_signed(top.lowest_mean, '.4f')}, "
                        f"{top.highest}: {_signed(top.highest_mean, '.4f')})."),
                   Table(("factor", "bn", "range of Δ final accuracy", "smallest at", "largest at",
                          "range of Δ steps"),
                         tuple((s.factor, s.arm, f"{s.accuracy_range:.4f}", s.lowest, s.highest,
                                _number(s.steps_range, ".0f")) for s in spread))]
    return blocks


def _unreached(study, absolute):
    """A warning when most trials never reached the absolute threshold."""
    trained = [t for t in study.trials if t.status != "failed"]
    never = sum(math.isnan(t.number("steps_to_threshold")) for t in trained)
    if absolute is None or never * 2 <= len(trained):
        return []
    return [Text(f"**{never} of {len(trained)} trials never reached the accuracy threshold "
                 f"{absolute}**: its steps-to-threshold effects compare totals, not speeds. A "
                 "threshold relative to each group's best arm has values on any data: "
                 f"`train.threshold: {{relative: 0.98, absolute: {absolute}}}`.")]


def _summary_two(study, measures):
    blocks = [Heading(2, f"Summary II: the mechanisms, BN `{primary_arm(study)}` against `none`"),
              Text("One row per measure, over all pairs (all factor levels pooled unless the "
                   "note says otherwise). Δ is BN minus none; 'claimed' is the sign the claim "
                   "predicts for Δ.")]
    if not measures:
        return blocks + [Text("No BN arm to compare with `none`.")]
    # Claims measured per level of a factor get a column naming the level.
    per_level = any(m.level for m in measures)
    return blocks + [Table(
        ("claim", "measure", *(("level",) if per_level else ()), "claimed", "pairs", *_TEST, "note"),
        tuple((m.claim, m.name, *((m.level or OVERALL,) if per_level else ()),
               "higher" if m.better > 0 else "lower", m.effect.n, *_test(m.effect, ".3g"), m.note)
              for m in measures))]


def _trials(study):
    statuses = Counter(t.status for t in study.trials)
    absolute, relative = thresholds(study.config)
    steps = relative_steps(study)
    blocks = [Heading(2, "Trials"),
              Text(", ".join(f"{count} {status}" for status, count in statuses.items()) + "."),
              Table(("run", "status", "final accuracy", "best accuracy",
                     *(("steps to threshold",) if absolute is not None else ()),
                     *((f"steps to relative threshold {relative:g}",) if relative is not None else ()),
                     "final accuracy, test-batch statistics", "seconds"),
                    tuple((f"`{t.run}`", t.status, _number(t.number("final_accuracy"), ".4f"),
                           _number(t.number("best_accuracy"), ".4f"),
                           *((_steps(t, t.number("steps_to_threshold")),) if absolute is not None else ()),
                           *((_steps(t, steps(t)),) if relative is not None else ()),
                           _number(t.number("final_accuracy_batch_stats"), ".4f"),
                           _number(t.number("seconds"), ".1f"))
                          for t in study.trials))]
    failed = [t for t in study.trials if t.status == "failed"]
    diverged = [t for t in study.trials if t.status == "diverged"]
    if failed:
        blocks += [Text("Failed (no metrics; left out, and so is the trial they pair with):"),
                   Items(tuple(f"`{t.run}`: {t.row.get('message') or 'no message'}" for t in failed))]
    if diverged:
        blocks += [Text("Diverged (the loss became NaN or infinite):"),
                   Items(tuple(f"`{t.run}`: stopped at step {t.row.get('steps_run')}, last finite "
                               f"test accuracy {_number(t.number('final_accuracy'), '.4f')}"
                               for t in diverged))]
    if study.missing:
        blocks += [Text("Not run yet:"), Items(tuple(f"`{name}`" for name in study.missing))]
    return blocks


def _figures(plots):
    blocks = [Heading(2, "Figures")]
    for plot in plots:
        blocks.append(Heading(3, plot.title))
        if plot.path:
            blocks += [Image(plot.path, plot.title), Text(plot.caption)]
        else:
            blocks.append(Text(f"Skipped: {plot.skipped}."))
    return blocks


def _method(study):
    return (
        RULE,
        "Pairs: two trials that differ only in `bn` (same seed, so the same initial kernels and "
        "the same batches in the same order, and the same levels of every other factor). "
        f"`{CONTROL}` is the control of every pair.",
        "Factor levels: in a one-at-a-time design a level is compared at the point that varies "
        "it, the other factors at their defaults; in a full factorial the other factors' levels "
        "are pooled. The `all` rows pool every pair.",
        "Failed trials are left out with their partners. Diverged trials count with their last "
        "finite evaluation (final accuracy, and steps to threshold if reached before the "
        f"divergence, else {study.config.train.steps}); the instrument measures use their "
        "finite values.",
        "Claim 2: median and 15-85 percentile spread of the followed unit of the deepest "
        "nonlinearity's input over the probe set, first against last recorded step. Claim 3: "
        "kernel L2 norm at the last recorded step over the first, mean over Dense layers. "
        "Claim 4: gradient L2 norms of the Dense kernels. Claim 5: the mean squared singular "
        "value of the Jacobian over the probe set, |ln| of it (0 is isometry in the mean).",
        "Claims 7 to 9 (Santurkar et al. 2018, with the `ics` and `landscape` instruments): G and "
        "G' are a layer's kernel gradient on a training batch before and after the earlier layers "
        "take that step's update; the landscape measures follow the gradient over 0.25x to 4x the "
        "learning rate. Claim 9 compares noisy BN with BN. Claim 10: per seed and other levels, the "
        "largest learning rate whose trial reached the threshold without diverging, in log10 (a "
        "decade below the grid when none did).",
        f"Report written from `{os.path.join(study.experiment_dir, 'results.csv')}` and the "
        "trials' TensorBoard event files.",
    )


def _test(effect, spec):
    """The cells of `_TEST` for one effect, its mean and interval formatted by ``spec``."""
    return (_interval(effect, spec), _number(effect.p, ".2g"), _number(effect.p_adjusted, ".2g"),
            effect.verdict)


def _interval(effect, spec):
    if effect.n == 0:
        return "no pairs"
    if math.isnan(effect.low):
        return f"{_signed(effect.mean, spec)} (n={effect.n}, no interval)"
    return f"{_signed(effect.mean, spec)} [{_signed(effect.low, spec)}, {_signed(effect.high, spec)}]"


def _steps(trial, steps):
    """A trial's steps to a threshold: ``never`` when it trained without reaching it."""
    if math.isnan(steps):
        return "–" if trial.status == "failed" else "never"
    return format(steps, ".0f")


def _signed(value, spec):
    return "nan" if math.isnan(value) else format(value, "+" + spec)


def _number(value, spec):
    return "–" if value is None or math.isnan(value) else format(value, spec)
