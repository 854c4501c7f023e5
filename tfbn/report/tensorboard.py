"""The report as a TensorBoard run: its figures in the Images tab, its text in the Text tab.

TensorBoard's Text tab sanitizes Markdown: it keeps an image only from an
``http(s)`` address, so neither a file beside the report nor a ``data:`` URI
shows, and an image's own address in the Images tab is an opaque key of the
running server. The report in the Text tab names each figure's tag instead,
with a link that opens the Images tab filtered to it.
"""

import glob
import os
import urllib.parse

import tensorflow as tf

# Tags are ``report/<name>``, so that the report forms its own group in each tab.
GROUP = "report"


def figure_pointer(image):
    """The Text tab's Markdown for a report figure (`tfbn.report.render.Image`): its tag in the Images tab."""
    tag = f"{GROUP}/{os.path.splitext(os.path.basename(image.path))[0]}"
    query = urllib.parse.quote(f"^{tag}(/|$)", safe="")
    return f"*Figure: {image.alt}* (Images tab, tag `{tag}`: [show](#images&tagFilter={query}))"


def write_report_run(report_dir, plots, texts):
    """Writes the drawn figures and the texts as the TensorBoard run ``report_dir``.

    Event files of an earlier report in that folder are removed first, so the
    run shows each figure and text once.

    Args:
        report_dir: The report's folder, ``<experiment>/report``.
        plots: `tfbn.report.figures.Plot`s; the drawn ones become images
            ``report/<name>``, and their panels ``report/<name>/<k>``.
        texts: Dict from name to Markdown, shown as rendered text.
    """
    for old in glob.glob(os.path.join(report_dir, "events.out.tfevents.*")):
        os.remove(old)
    writer = tf.summary.create_file_writer(report_dir)
    with writer.as_default():
        for plot in plots:
            if plot.path:
                image = tf.io.decode_png(tf.io.read_file(plot.path), channels=3)
                tf.summary.image(f"{GROUP}/{plot.name}", image[None], step=0, description=plot.caption)
            # Each panel of a grid as its own image as well, readable at the card's size.
            for number, (title, panel) in enumerate(plot.panels, start=1):
                tf.summary.image(f"{GROUP}/{plot.name}/{number}", panel[None], step=0,
                                 description=f"{title}: {plot.caption}")
        for name, markdown in texts.items():
            tf.summary.text(f"{GROUP}/{name}", markdown, step=0)
    writer.close()
