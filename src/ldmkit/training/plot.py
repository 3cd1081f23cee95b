"""Line plots drawn with Pillow (matplotlib is not a dependency): axes, ticks, polylines, a title, a legend."""
from __future__ import annotations

import math
from typing import Mapping, Sequence

from PIL import Image, ImageDraw, ImageFont

BACKGROUND, AXIS, GRID, TEXT = (255, 255, 255), (60, 60, 60), (225, 225, 225), (20, 20, 20)
LINE = (31, 119, 180)
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 64, 14, 24, 30


def nice_ticks(lo: float, hi: float, target: int = 5) -> list[float]:
    """Round tick values covering [lo, hi]: steps of 1, 2 or 5 x 10^k, about ``target`` of them."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / target
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 5, 10)), key=lambda st: abs((hi - lo) / st - target))
    first = math.ceil(lo / step - 1e-9) * step
    ticks, k = [], 0
    while first + k * step <= hi + 1e-9 * step:
        ticks.append(round(first + k * step, 12))
        k += 1
    return ticks


def _label(v: float) -> str:
    return f"{v:.3g}" if v != 0 else "0"


def line_plot(title: str, xs: Sequence[float], ys: Sequence[float], size: tuple[int, int] = (420, 240),
              color: tuple[int, int, int] = LINE) -> Image.Image:
    """One series: x (steps) against y, with ticks on both axes; non-finite points are skipped."""
    finite = [float(y) for y in ys if math.isfinite(float(y))]
    last = f"  last {finite[-1]:.4g}" if finite else "  (no data)"
    return series_plot(title + last, [("", xs, ys, color)], size)


# tab10's first colours: one per series of a multi-line plot
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]
DASH = (150, 150, 150)
Series = Sequence[tuple[str, Sequence[float], Sequence[float], tuple[int, int, int]]]


def log_ticks(lo: float, hi: float) -> list[float]:
    """Ticks of a log axis over [lo, hi] (lo > 0): 1, 2, 5 x 10^k."""
    out = []
    for k in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
        out += [m * 10.0**k for m in (1, 2, 5) if lo * (1 - 1e-9) <= m * 10.0**k <= hi * (1 + 1e-9)]
    return out


def _dashed(draw: ImageDraw.ImageDraw, a: tuple[float, float], b: tuple[float, float], dash: float = 5) -> None:
    length = math.dist(a, b)
    for k in range(0, int(length // dash), 2):
        t0, t1 = k * dash / length, min(1.0, (k + 1) * dash / length)
        draw.line((a[0] + (b[0] - a[0]) * t0, a[1] + (b[1] - a[1]) * t0,
                   a[0] + (b[0] - a[0]) * t1, a[1] + (b[1] - a[1]) * t1), fill=DASH)


def series_plot(title: str, series: Series | Mapping[str, tuple[Sequence[float], Sequence[float]]],
                size: tuple[int, int] = (420, 240), *, x_label: str = "", y_label: str = "", log_x: bool = False,
                log_y: bool = False, integer_x: bool = True, hline: float | None = None,
                vline: float | None = None) -> Image.Image:
    """Series on shared axes, a legend when labelled; non-finite points (and <= 0 on a log axis) are skipped.

    ``series``: (label, xs, ys, colour) tuples, or a mapping label -> (xs, ys) coloured from PALETTE in order.
    ``log_x`` / ``log_y`` put that axis on a log scale; ``integer_x`` keeps only whole x ticks (step counts);
    ``hline`` / ``vline`` draw a dashed reference line at that y / x. Each line is drawn in x order.
    """
    if isinstance(series, Mapping):
        series = [(name, xs, ys, PALETTE[k % len(PALETTE)]) for k, (name, (xs, ys)) in enumerate(series.items())]
    img = Image.new("RGB", size, BACKGROUND)
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    ty = (lambda y: math.log10(y)) if log_y else (lambda y: y)
    tx = (lambda x: math.log10(x)) if log_x else (lambda x: x)
    data = [(label, sorted((float(x), float(y)) for x, y in zip(xs, ys)
                           if math.isfinite(float(y)) and (not log_y or float(y) > 0) and (not log_x or float(x) > 0)),
             color) for label, xs, ys, color in series]
    draw.text((MARGIN_LEFT, 5), title, fill=TEXT, font=font)
    x0, y0, x1, y1 = MARGIN_LEFT, MARGIN_TOP, size[0] - MARGIN_RIGHT, size[1] - MARGIN_BOTTOM  # plot area
    draw.rectangle((x0, y0, x1, y1), outline=AXIS)
    pts = [p for _, ps, _ in data for p in ps]
    if not pts:
        return img
    xs_all = [tx(p[0]) for p in pts] + ([tx(vline)] if vline is not None else [])
    ys_all = [ty(p[1]) for p in pts] + ([ty(hline)] if hline is not None and (not log_y or hline > 0) else [])
    xlo, xhi, ylo, yhi = min(xs_all), max(xs_all), min(ys_all), max(ys_all)
    if xhi == xlo:
        xlo, xhi = xlo - 1, xhi + 1
    if yhi == ylo:
        pad = abs(ylo) * 0.1 or 1.0
        ylo, yhi = ylo - pad, yhi + pad
    else:
        pad = (yhi - ylo) * 0.05
        ylo, yhi = ylo - pad, yhi + pad

    def px(x: float) -> float:  # x in data units
        return x0 + (tx(x) - xlo) / (xhi - xlo) * (x1 - x0)

    def py(y: float) -> float:  # y in plotted units (log10 when log_y)
        return y1 - (y - ylo) / (yhi - ylo) * (y1 - y0)

    yticks = [(ty(t), t) for t in log_ticks(10 ** ylo, 10 ** yhi)] if log_y else [(t, t) for t in nice_ticks(ylo, yhi)]
    for y_plot, t in yticks:
        y = py(y_plot)
        draw.line((x0 + 1, y, x1 - 1, y), fill=GRID)
        draw.line((x0 - 4, y, x0, y), fill=AXIS)
        label = _label(t)
        draw.text((x0 - 6 - draw.textlength(label, font=font), y - 5), label, fill=TEXT, font=font)
    xticks = log_ticks(10 ** xlo, 10 ** xhi) if log_x else nice_ticks(xlo, xhi)
    for t in (t for t in xticks if not integer_x or float(t).is_integer()):
        x = px(t)
        draw.line((x, y1, x, y1 + 4), fill=AXIS)
        label = _label(t)
        draw.text((x - draw.textlength(label, font=font) / 2, y1 + 6), label, fill=TEXT, font=font)
    if x_label:
        draw.text((x1 - draw.textlength(x_label, font=font), y1 + 17), x_label, fill=TEXT, font=font)
    if y_label:
        draw.text((4, y1 + 17), f"y: {y_label}", fill=TEXT, font=font)
    if hline is not None and (not log_y or hline > 0):
        _dashed(draw, (x0, py(ty(hline))), (x1, py(ty(hline))))
    if vline is not None:
        _dashed(draw, (px(vline), y0), (px(vline), y1))
    lx = x1 - 24 - max((draw.textlength(label, font=font) for label, _, _ in data if label), default=0)
    for k, (label, ps, color) in enumerate(data):
        line = [(px(x), py(ty(y))) for x, y in ps]
        if len(line) > 1:
            draw.line(line, fill=color, width=2)
        if len(line) <= 50:  # sparse series (evaluations) get markers
            for x, y in line:
                draw.ellipse((x - 2.5, y - 2.5, x + 2.5, y + 2.5), fill=color)
        if label:
            ly = y0 + 6 + 12 * k
            draw.line((lx - 18, ly + 5, lx - 4, ly + 5), fill=color, width=2)
            draw.text((lx, ly), label, fill=TEXT, font=font)
    return img
