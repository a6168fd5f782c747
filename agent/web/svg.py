"""Time plots as standalone SVG, drawn on the server: no script, no font or file from elsewhere.

A plot is a set of series of (time in ms, value) in one unit, optional horizontal bands (alarm
limits: the zone beyond each limit is tinted and the limit drawn dashed) and vertical spans
(excursions, shaded). Every text in the SVG (series names, labels) is escaped: names are user
data. Elements carry classes and ``data-`` attributes so that tests (and a reader's devtools)
can find what was drawn: ``series``, ``band``, ``limit``, ``span``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html import escape

# One colour per series, in order (colour-blind-safe, Okabe and Ito).
COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9")
MAX_POINTS = 1200  # per series: more points than this are thinned (min and max per bucket)


@dataclass(frozen=True, slots=True)
class Series:
    name: str
    points: Sequence[tuple[int, float]]  # (time_ms, value), in time order


@dataclass(frozen=True, slots=True)
class Band:
    """Limits (an alarm's, a product's): values above ``high`` or below ``low`` are beyond them.
    ``label`` says whose (``cabinet alarm``, ``plasma limit``)."""

    label: str
    low: float | None = None
    high: float | None = None


@dataclass(frozen=True, slots=True)
class Span:
    """A time interval to shade (an excursion); ``end_ms`` None: still going at the end."""

    label: str
    start_ms: int
    end_ms: int | None


@dataclass(frozen=True, slots=True)
class Plot:
    title: str
    unit: str
    series: Sequence[Series]
    bands: Sequence[Band] = ()
    spans: Sequence[Span] = ()
    width: int = 900
    height: int = 300
    margins: tuple[int, int, int, int] = field(default=(44, 16, 40, 64))  # top right bottom left


@dataclass(frozen=True, slots=True)
class _Scale:
    t0: int
    t1: int
    v0: float
    v1: float
    x0: float
    x1: float
    y0: float  # top of the plot area (value v1)
    y1: float  # bottom (value v0)

    def x(self, t: float) -> float:
        return self.x0 + (t - self.t0) * (self.x1 - self.x0) / max(1, self.t1 - self.t0)

    def y(self, v: float) -> float:
        return self.y1 - (v - self.v0) * (self.y1 - self.y0) / (self.v1 - self.v0)


def thin(points: Sequence[tuple[int, float]], limit: int = MAX_POINTS) -> list[tuple[int, float]]:
    """At most about ``limit`` points with the shape kept: the lowest and highest of each bucket,
    in time order (so a short spike still shows)."""
    if len(points) <= limit:
        return list(points)
    per = math.ceil(len(points) / (limit // 2))
    out: list[tuple[int, float]] = []
    for i in range(0, len(points), per):
        bucket = points[i : i + per]
        lo = min(bucket, key=lambda p: p[1])
        hi = max(bucket, key=lambda p: p[1])
        out.extend(sorted({lo, hi}))
    return out


def _value_range(plot: Plot) -> tuple[float, float]:
    values = [v for s in plot.series for _, v in s.points]
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    span = max(hi - lo, 1.0)
    # A limit close to the data is drawn; one far away (a plasma freezer's -80 C floor under
    # readings at -30 C) would flatten the curve, so it is left out of the range.
    reach = span + 5.0
    for b in plot.bands:
        for limit in (b.low, b.high):
            if limit is not None and lo - reach <= limit <= hi + reach:
                lo, hi = min(lo, limit), max(hi, limit)
    pad = max((hi - lo) * 0.08, 0.5)
    return lo - pad, hi + pad


def _time_range(plot: Plot) -> tuple[int, int]:
    times = [t for s in plot.series for t, _ in s.points]
    times += [sp.start_ms for sp in plot.spans] + [
        sp.end_ms for sp in plot.spans if sp.end_ms is not None
    ]
    if not times:
        return 0, 1
    return min(times), max(max(times), min(times) + 1)


def scale_of(plot: Plot) -> _Scale:
    top, right, bottom, left = plot.margins
    t0, t1 = _time_range(plot)
    v0, v1 = _value_range(plot)
    return _Scale(t0, t1, v0, v1, left, plot.width - right, top, plot.height - bottom)


def _nice_step(span: float, count: int) -> float:
    raw = span / max(count, 1)
    mag = 10.0 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


_TIME_STEPS_MS = [m * 60_000 for m in (1, 5, 10, 15, 30, 60, 120, 180, 360, 720, 1440, 2880, 10080)]


def _time_ticks(t0: int, t1: int, count: int = 7) -> list[int]:
    step = next((s for s in _TIME_STEPS_MS if (t1 - t0) / s <= count), _TIME_STEPS_MS[-1])
    first = -(-t0 // step) * step
    return list(range(first, t1 + 1, step))


def _time_label(ms: int, with_date: bool) -> str:
    t = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return t.strftime("%m-%d %H:%M" if with_date else "%H:%M")


def _num(v: float) -> str:
    return f"{v:.1f}".rstrip("0").rstrip(".") if v != int(v) else str(int(v))


def render(plot: Plot) -> str:
    """The plot as one ``<svg>`` element (UTF-8 text, inline or served as image/svg+xml)."""
    s = scale_of(plot)
    w, h = plot.width, plot.height
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="plot" width="{w}" height="{h}" '
        f'viewBox="0 0 {w} {h}" role="img" aria-label="{escape(plot.title)}" '
        'font-family="system-ui, sans-serif" font-size="12">',
        f"<title>{escape(plot.title)}</title>",
        f'<rect x="{s.x0:.1f}" y="{s.y0:.1f}" width="{s.x1 - s.x0:.1f}" '
        f'height="{s.y1 - s.y0:.1f}" fill="#fff" stroke="#bbb"/>',
    ]
    out += _bands(plot, s)
    out += _spans(plot, s)
    out += _axes(plot, s)
    for i, series in enumerate(plot.series):
        out += _series(series, COLOURS[i % len(COLOURS)], s)
    out += _legend(plot, s)
    out.append("</svg>")
    return "\n".join(out)


def _clip(y: float, s: _Scale) -> float:
    return min(max(y, s.y0), s.y1)


def _bands(plot: Plot, s: _Scale) -> list[str]:
    out = []
    for b in plot.bands:
        attrs = f'data-label="{escape(b.label)}"'
        attrs += "" if b.low is None else f' data-low="{_num(b.low)}"'
        attrs += "" if b.high is None else f' data-high="{_num(b.high)}"'
        out.append(f'<g class="band" {attrs}>')
        for limit, beyond_top in ((b.high, True), (b.low, False)):
            if limit is None:
                continue
            y = _clip(s.y(limit), s)
            top, bottom = (s.y0, y) if beyond_top else (y, s.y1)
            if bottom > top:
                out.append(
                    f'<rect class="alarm-zone" x="{s.x0:.1f}" y="{top:.1f}" '
                    f'width="{s.x1 - s.x0:.1f}" height="{bottom - top:.1f}" '
                    'fill="#d62728" fill-opacity="0.08"/>'
                )
            if s.y0 <= s.y(limit) <= s.y1:
                word = "above" if beyond_top else "below"
                text = f"{b.label}: {word} {_num(limit)} {plot.unit}"
                out.append(
                    f'<line class="limit" x1="{s.x0:.1f}" x2="{s.x1:.1f}" y1="{y:.1f}" '
                    f'y2="{y:.1f}" stroke="#d62728" stroke-dasharray="6 4"/>'
                    f'<text x="{s.x1 - 4:.1f}" y="{y - 4 if beyond_top else y + 13:.1f}" '
                    f'text-anchor="end" fill="#a31d1d">{escape(text)}</text>'
                )
        out.append("</g>")
    return out


def _spans(plot: Plot, s: _Scale) -> list[str]:
    out = []
    for sp in plot.spans:
        end = s.t1 if sp.end_ms is None else sp.end_ms
        x0, x1 = s.x(sp.start_ms), s.x(end)
        width = max(x1 - x0, 2.0)  # a short excursion stays visible
        out.append(
            f'<g class="span" data-label="{escape(sp.label)}" data-start="{sp.start_ms}" '
            f'data-end="{"" if sp.end_ms is None else sp.end_ms}">'
            f"<title>{escape(sp.label)}</title>"
            f'<rect x="{x0:.1f}" y="{s.y0:.1f}" width="{width:.1f}" height="{s.y1 - s.y0:.1f}" '
            'fill="#ff7f0e" fill-opacity="0.3"/></g>'
        )
    return out


def _axes(plot: Plot, s: _Scale) -> list[str]:
    out = ['<g class="axes" fill="#444">']
    step = _nice_step(s.v1 - s.v0, 5)
    v = math.ceil(s.v0 / step) * step
    while v <= s.v1:
        y = s.y(v)
        out.append(
            f'<line x1="{s.x0:.1f}" x2="{s.x1:.1f}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>'
            f'<text x="{s.x0 - 6:.1f}" y="{y + 4:.1f}" text-anchor="end">{_num(v)}</text>'
        )
        v += step
    with_date = s.t1 - s.t0 > 20 * 3_600_000
    for t in _time_ticks(s.t0, s.t1):
        x = s.x(t)
        out.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{s.y1:.1f}" y2="{s.y1 + 4:.1f}" stroke="#888"/>'
            f'<text x="{x:.1f}" y="{s.y1 + 17:.1f}" text-anchor="middle">'
            f"{_time_label(t, with_date)}</text>"
        )
    out.append(
        f'<text x="14" y="{(s.y0 + s.y1) / 2:.1f}" text-anchor="middle" '
        f'transform="rotate(-90 14 {(s.y0 + s.y1) / 2:.1f})">{escape(plot.unit)}</text>'
        f'<text x="{(s.x0 + s.x1) / 2:.1f}" y="{plot.height - 4}" text-anchor="middle">'
        "time (UTC)</text></g>"
    )
    return out


def _series(series: Series, colour: str, s: _Scale) -> list[str]:
    pts = thin(series.points)
    coords = " ".join(f"{s.x(t):.1f},{s.y(v):.1f}" for t, v in pts)
    return [
        f'<polyline class="series" data-name="{escape(series.name)}" '
        f'data-points="{len(series.points)}" fill="none" stroke="{colour}" '
        f'stroke-width="1.5" points="{coords}"/>'
    ]


def _legend(plot: Plot, s: _Scale) -> list[str]:
    out = [
        '<g class="legend">',
        f'<text x="{s.x0:.1f}" y="14" font-weight="600">{escape(plot.title)}</text>',
    ]
    x = s.x0
    for i, series in enumerate(plot.series):
        colour = COLOURS[i % len(COLOURS)]
        out.append(
            f'<rect x="{x:.1f}" y="26" width="14" height="4" fill="{colour}"/>'
            f'<text x="{x + 18:.1f}" y="32">{escape(series.name)}</text>'
        )
        x += 30 + 7 * len(series.name)
    if plot.spans:
        out.append(
            f'<rect x="{x:.1f}" y="23" width="14" height="10" fill="#ff7f0e" '
            'fill-opacity="0.3"/>'
            f'<text x="{x + 18:.1f}" y="32">excursion</text>'
        )
    out.append("</g>")
    return out
