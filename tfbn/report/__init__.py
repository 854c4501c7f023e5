"""The report of a finished study: figures, effect sizes and a verdict per claim.

    python -m tfbn.report logs/quickstart

reads ``results.csv``, ``config.yaml`` and every trial's TensorBoard run under
the experiment folder and writes ``<experiment>/report/``: ``report.md``, a
self-contained ``report.html``, the figures as PNG files, and the TensorBoard
run ``report``: the figures in the Images tab and the config, the verdicts and
the report in the Text tab, all under ``report/``.

* `tfbn.report.trials`: reading the study and pairing its trials.
* `tfbn.report.stats`: paired effects, confidence intervals, verdicts.
* `tfbn.report.summaries`: Summary I (per factor level) and II (mechanisms).
* `tfbn.report.figures`, `tfbn.report.document`, `tfbn.report.render`,
  `tfbn.report.tensorboard`: the output.

Example:

```python
path = tfbn.report.write_report("logs/quickstart")  # logs/quickstart/report/report.md
```
"""

import argparse
import os
import sys

from tfbn.errors import UserError


def write_report(experiment_dir):
    """Writes the report of the study in ``experiment_dir``.

    Args:
        experiment_dir: ``<log.dir>/<experiment>`` of a study run by
            ``python -m tfbn.run``.

    Returns:
        The path of ``report.md``; ``report.html`` and the figures lie beside it.

    Raises:
        UserError: when the folder holds no study.
    """
    return _write_report(experiment_dir)[0]


def _write_report(experiment_dir):
    """Writes the report; returns the path of ``report.md`` and Summary II's measures."""
    # Imported here, not with the package: they load TensorFlow, which
    # ``python -m tfbn.report --help`` does without and `main` loads quietly.
    from tfbn.report.document import build_document, verdict_table
    from tfbn.report.figures import draw_figures
    from tfbn.report.render import to_html, to_markdown
    from tfbn.report.summaries import summarise_levels, summarise_mechanisms
    from tfbn.report.tensorboard import figure_pointer, write_report_run
    from tfbn.report.trials import load_study

    study = load_study(experiment_dir)
    report_dir = os.path.join(experiment_dir, "report")
    os.makedirs(report_dir, exist_ok=True)
    plots = draw_figures(study, report_dir)
    measures = summarise_mechanisms(study)
    blocks = build_document(study, summarise_levels(study), measures, plots)
    markdown = to_markdown(blocks, report_dir)
    path = os.path.join(report_dir, "report.md")
    with open(path, "w") as f:
        f.write(markdown)
    with open(os.path.join(report_dir, "report.html"), "w") as f:
        f.write(to_html(blocks, f"tfbn report: {study.config.experiment}"))
    with open(os.path.join(experiment_dir, "config.yaml")) as f:
        config_text = f.read()
    table = verdict_table(measures)
    write_report_run(report_dir, plots, {
        "config": f"```yaml\n{config_text}```",
        "verdicts": to_markdown([table], report_dir).strip() if table else "No verdicts.",
        "report": to_markdown(blocks, report_dir, image=figure_pointer)})
    return path, measures


def main(argv=None):
    """Command line: ``python -m tfbn.report EXPERIMENT_DIR``; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m tfbn.report", description=__doc__.split("\n")[0])
    parser.add_argument("experiment_dir", help="a study's folder, <log.dir>/<experiment>")
    args = parser.parse_args(argv)
    from tfbn.run import quiet_tensorflow_start

    quiet_tensorflow_start()
    from tfbn.report.stats import CONTRADICTED, MIXED, SUPPORTED
    from tfbn.report.summaries import CLAIMS, claim_sides, claim_verdicts

    try:
        path, measures = _write_report(args.experiment_dir)
    except UserError as e:
        print(f"tfbn: error: {e}", file=sys.stderr)
        return 2
    sides = claim_sides(measures)
    for claim, verdict in claim_verdicts(measures).items():
        detail = ""
        if verdict == MIXED:
            detail = " (" + "; ".join(f"{side} by {', '.join(sides[claim][side])}"
                                      for side in (SUPPORTED, CONTRADICTED)) + ")"
        print(f"claim {claim} ({CLAIMS[claim]}): {verdict}{detail}")
    print(f"report: {path} (and report.html beside it)")
    return 0
