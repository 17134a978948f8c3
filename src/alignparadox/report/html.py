"""Building blocks for report sections. Model outputs are untrusted text: everything that is
not already `Markup` is HTML-escaped on the way in, so a section cannot inject markup by
accident.

A section is built from these helpers and returned as `Section(title, html)`:

    Section("Alignment", Markup("<p>Refusal per organism.</p>")
            + table(["target", "refusal"], [[row.target, rate(row.results["refusal"])]])
            + figure(fig, "refusal rate against alignment strength"))
"""

from __future__ import annotations

import base64
import hashlib
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from markupsafe import Markup, escape

from alignparadox.stats import Rate

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from alignparadox.study.store import CellRecord

__all__ = ["Markup", "ReportOptions", "Section", "escape", "figure", "format_value", "rate",
           "redact", "table"]


@dataclass(frozen=True)
class ReportOptions:
    """What a section may need beyond its own rows: whether harmful completions are shown,
    and every stored row by measurement (for sections that compare measurements)."""

    show_completions: bool = False
    all_rows: Mapping[str, list[CellRecord]] = field(default_factory=dict)
    # The latest study's own `strengths` ({"axis": ..., "values": {target: x}}), if it gave any.
    strengths: Mapping[str, Any] | None = None
    notes: tuple[str, ...] = ()  # the latest study's own notes


@dataclass(frozen=True)
class Section:
    """A report section. `html` is trusted markup; a plain str is escaped, shown as text."""

    title: str
    html: Markup

    def __post_init__(self) -> None:
        object.__setattr__(self, "html", escape(self.html))


def format_value(value: Any) -> Markup:
    """One table cell: Markup as is, rates with interval and counts, numbers compactly,
    anything else as escaped text."""
    if isinstance(value, Markup):
        return value
    if isinstance(value, Rate) or (isinstance(value, Mapping) and {"k", "n"} <= set(value)):
        return rate(value)
    if value is None:
        return Markup("&mdash;")
    if isinstance(value, bool):
        return escape(str(value).lower())
    if isinstance(value, float):
        return escape("nan" if math.isnan(value) else f"{value:.4g}")
    return escape(str(value))


def table(header: Sequence[str], rows: Iterable[Sequence[Any]], *,
          caption: str | None = None) -> Markup:
    """An HTML table; every cell goes through `format_value` (so untrusted text is escaped)."""
    head = Markup("").join(Markup("<th>{}</th>").format(name) for name in header)
    body = Markup("").join(
        Markup("<tr>{}</tr>").format(
            Markup("").join(Markup("<td>{}</td>").format(format_value(value))
                            for value in row))
        for row in rows
    )
    caption_html = Markup("<caption>{}</caption>").format(caption) if caption else Markup("")
    return Markup("<table>{}<thead><tr>{}</tr></thead><tbody>{}</tbody></table>").format(
        caption_html, head, body)


def rate(value: Rate | Mapping[str, Any], *, digits: int = 2) -> Markup:
    """A rate with its 95% interval and the counts behind it: 0.82 [0.71, 0.90] (41/50)."""
    if isinstance(value, Rate):
        k, n, low, high = value.successes, value.total, value.low, value.high
    else:
        k, n, low, high = value["k"], value["n"], value.get("low"), value.get("high")
    if not n:
        return Markup('<span class="rate">&mdash; <span class="count">(0/0)</span></span>')
    interval = (Markup(' <span class="ci">[{}, {}]</span>').format(
        f"{low:.{digits}f}", f"{high:.{digits}f}") if low is not None and high is not None
        else Markup(""))
    return Markup('<span class="rate">{}{} <span class="count">({}/{})</span></span>').format(
        f"{k / n:.{digits}f}", interval, k, n)


def redact(text: str, harmful: bool, show: bool, *, words: int = 6,
           max_chars: int = 60) -> Markup:
    """A model output for display: in full when harmless or `show`, otherwise its first
    words (at most `max_chars` characters) and a short hash, enough to tell answers apart
    and find them in the store."""
    if show or not harmful:
        return Markup('<span class="completion">{}</span>').format(text)
    parts = text.split()
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:10]
    shown = " ".join(parts[:words])
    if len(shown) > max_chars or len(parts) > words:
        shown = shown[:max_chars] + " …"
    return Markup('<span class="completion redacted">{} <span class="hash">[redacted '
                  '&middot; {} words &middot; sha256:{}]</span></span>').format(
        shown, len(parts), digest)


def figure(fig: Figure, alt: str, *, caption: str | None = None, dpi: int = 110) -> Markup:
    """A matplotlib figure embedded as a base64 PNG (the report stays one self-contained file).

    Build figures with `matplotlib.figure.Figure()` (no pyplot state, no display needed).
    """
    if fig.get_layout_engine() is None:
        fig.set_layout_engine("constrained")  # side-by-side panels' labels never overlap
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    caption_html = (Markup("<figcaption>{}</figcaption>").format(caption) if caption
                    else Markup(""))
    return Markup('<figure><img src="data:image/png;base64,{}" alt="{}">{}</figure>').format(
        data, alt, caption_html)
