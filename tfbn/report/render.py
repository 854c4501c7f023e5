"""A report as a list of blocks, rendered to Markdown or to self-contained HTML.

Blocks are `Heading`, `Text` (a paragraph), `Items` (a bullet list), `Table`
and `Image`. Text may use Markdown's inline ``*emphasis*``, ``**strong**`` and
`` `code` ``; the HTML renderer converts exactly these and embeds images as
base64 PNG, so the HTML file needs nothing beside it.
"""

import base64
import dataclasses
import html
import os
import re


@dataclasses.dataclass(frozen=True)
class Heading:
    level: int
    text: str


@dataclasses.dataclass(frozen=True)
class Text:
    text: str


@dataclasses.dataclass(frozen=True)
class Items:
    items: tuple


@dataclasses.dataclass(frozen=True)
class Table:
    header: tuple
    rows: tuple


@dataclasses.dataclass(frozen=True)
class Image:
    path: str  # a PNG file; Markdown links it relative to the report
    alt: str


def to_markdown(blocks, folder, image=None):
    """Markdown text of the blocks; image links are relative to ``folder``.

    Args:
        blocks: The report's blocks.
        folder: The folder the Markdown file lies in.
        image: A function from an `Image` to the Markdown that stands for it;
            None: the image itself.
    """
    parts = []
    for block in blocks:
        if isinstance(block, Heading):
            parts.append(f"{'#' * block.level} {block.text}")
        elif isinstance(block, Text):
            parts.append(block.text)
        elif isinstance(block, Items):
            parts.append("\n".join(f"- {item}" for item in block.items))
        elif isinstance(block, Table):
            lines = [block.header, ["---"] * len(block.header), *block.rows]
            parts.append("\n".join("| " + " | ".join(_cell(c) for c in line) + " |" for line in lines))
        elif isinstance(block, Image):
            parts.append(image(block) if image else f"![{block.alt}]({os.path.relpath(block.path, folder)})")
    return "\n\n".join(parts) + "\n"


def to_html(blocks, title):
    """A standalone HTML page of the blocks, images embedded."""
    body = []
    for block in blocks:
        if isinstance(block, Heading):
            body.append(f"<h{block.level}>{_inline(block.text)}</h{block.level}>")
        elif isinstance(block, Text):
            body.append(f"<p>{_inline(block.text)}</p>")
        elif isinstance(block, Items):
            body.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in block.items) + "</ul>")
        elif isinstance(block, Table):
            head = "".join(f"<th>{_inline(str(c))}</th>" for c in block.header)
            rows = "".join("<tr>" + "".join(f"<td>{_inline(str(c))}</td>" for c in row) + "</tr>"
                           for row in block.rows)
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif isinstance(block, Image):
            with open(block.path, "rb") as f:
                data = base64.b64encode(f.read()).decode("ascii")
            body.append(f'<img src="data:image/png;base64,{data}" alt="{html.escape(block.alt)}">')
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}"
            f"</title><style>{_STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


_STYLE = ("body{font-family:sans-serif;max-width:75em;margin:2em auto;padding:0 1em;line-height:1.4}"
          "table{border-collapse:collapse;margin:1em 0;font-size:90%}"
          "th,td{border:1px solid #ccc;padding:.25em .5em;text-align:left}"
          "th{background:#f3f3f3}img{max-width:100%}code{background:#f3f3f3}")


def _cell(value):
    return str(value).replace("|", "\\|").replace("\n", " ")


def _inline(text):
    text = html.escape(text)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    text = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"\*([^*\s][^*]*)\*", r"<em>\1</em>", text)
