"""Line plots drawn with Pillow (matplotlib is not a dependency): axes, ticks, polylines, a title, a legend."""
from __future__ import annotations

import math
from typing import Sequence

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
    img = Image.new("RGB", size, BACKGROUND)
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    pts = [(float(x), float(y)) for x, y in zip(xs, ys) if math.isfinite(float(y))]
    last = f"  last {pts[-1][1]:.4g}" if pts else "  (no data)"
    draw.text((MARGIN_LEFT, 5), title + last, fill=TEXT, font=font)
    x0, y0, x1, y1 = MARGIN_LEFT, MARGIN_TOP, size[0] - MARGIN_RIGHT, size[1] - MARGIN_BOTTOM  # plot area
    draw.rectangle((x0, y0, x1, y1), outline=AXIS)
    if not pts:
        return img
    xlo, xhi = min(p[0] for p in pts), max(p[0] for p in pts)
    ylo, yhi = min(p[1] for p in pts), max(p[1] for p in pts)
    if xhi == xlo:
        xlo, xhi = xlo - 1, xhi + 1
    if yhi == ylo:
        pad = abs(ylo) * 0.1 or 1.0
        ylo, yhi = ylo - pad, yhi + pad
    else:
        pad = (yhi - ylo) * 0.05
        ylo, yhi = ylo - pad, yhi + pad

    def px(x: float) -> float:
        return x0 + (x - xlo) / (xhi - xlo) * (x1 - x0)

    def py(y: float) -> float:
        return y1 - (y - ylo) / (yhi - ylo) * (y1 - y0)

    for t in nice_ticks(ylo, yhi):
        y = py(t)
        draw.line((x0 + 1, y, x1 - 1, y), fill=GRID)
        draw.line((x0 - 4, y, x0, y), fill=AXIS)
        label = _label(t)
        draw.text((x0 - 6 - draw.textlength(label, font=font), y - 5), label, fill=TEXT, font=font)
    for t in (t for t in nice_ticks(xlo, xhi) if float(t).is_integer()):  # x is a step count
        x = px(t)
        draw.line((x, y1, x, y1 + 4), fill=AXIS)
        label = _label(t)
        draw.text((x - draw.textlength(label, font=font) / 2, y1 + 6), label, fill=TEXT, font=font)
    line = [(px(x), py(y)) for x, y in pts]
    if len(line) > 1:
        draw.line(line, fill=color, width=2)
    if len(line) <= 50:  # sparse series (evaluations) get markers
        for x, y in line:
            draw.ellipse((x - 2.5, y - 2.5, x + 2.5, y + 2.5), fill=color)
    return img


# tab10's first colours: one per series of a multi-line plot
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def log_ticks(lo: float, hi: float) -> list[float]:
    """Ticks of a log axis over [lo, hi] (lo > 0): 1, 2, 5 x 10^k."""
    out = []
    for k in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
        out += [m * 10.0**k for m in (1, 2, 5) if lo * (1 - 1e-9) <= m * 10.0**k <= hi * (1 + 1e-9)]
    return out


def series_plot(title: str, series: dict[str, tuple[Sequence[float], Sequence[float]]], x_label: str = "",
                y_label: str = "", log_x: bool = False, size: tuple[int, int] = (640, 400)) -> Image.Image:
    """Several named series (name -> (xs, ys)) on shared axes, markers on every point, a legend at the right;
    ``log_x`` spaces x logarithmically (all x must be > 0). Non-finite points are skipped."""
    img = Image.new("RGB", size, BACKGROUND)
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    data = {name: [(float(x), float(y)) for x, y in zip(xs, ys) if math.isfinite(float(y))]
            for name, (xs, ys) in series.items()}
    pts = [p for ps in data.values() for p in ps]
    legend_w = 12 + max((int(draw.textlength(n, font=font)) for n in data), default=0) + 24
    x0, y0, x1, y1 = MARGIN_LEFT, MARGIN_TOP, size[0] - MARGIN_RIGHT - legend_w, size[1] - MARGIN_BOTTOM - 14
    draw.text((MARGIN_LEFT, 5), title, fill=TEXT, font=font)
    draw.rectangle((x0, y0, x1, y1), outline=AXIS)
    if x_label:
        draw.text(((x0 + x1 - draw.textlength(x_label, font=font)) / 2, size[1] - 14), x_label, fill=TEXT, font=font)
    if y_label:
        draw.text((4, y0 - 14 if y0 >= 14 else 0), y_label, fill=TEXT, font=font)
    if not pts:
        return img
    fx = (lambda v: math.log10(v)) if log_x else (lambda v: v)
    xlo, xhi = min(fx(p[0]) for p in pts), max(fx(p[0]) for p in pts)
    ylo, yhi = min(p[1] for p in pts), max(p[1] for p in pts)
    xpad = (xhi - xlo) * 0.04 or 1.0
    ypad = (yhi - ylo) * 0.05 or (abs(ylo) * 0.1 or 1.0)
    xlo, xhi, ylo, yhi = xlo - xpad, xhi + xpad, ylo - ypad, yhi + ypad

    def px(x: float) -> float:
        return x0 + (fx(x) - xlo) / (xhi - xlo) * (x1 - x0)

    def py(y: float) -> float:
        return y1 - (y - ylo) / (yhi - ylo) * (y1 - y0)

    for t in nice_ticks(ylo, yhi):
        y = py(t)
        draw.line((x0 + 1, y, x1 - 1, y), fill=GRID)
        label = _label(t)
        draw.text((x0 - 6 - draw.textlength(label, font=font), y - 5), label, fill=TEXT, font=font)
    xticks = log_ticks(10**xlo, 10**xhi) if log_x else nice_ticks(xlo, xhi)
    for t in xticks:
        x = px(t)
        draw.line((x, y0 + 1, x, y1 - 1), fill=GRID)
        label = _label(t)
        draw.text((x - draw.textlength(label, font=font) / 2, y1 + 6), label, fill=TEXT, font=font)
    for k, (name, ps) in enumerate(data.items()):
        color = PALETTE[k % len(PALETTE)]
        line = [(px(x), py(y)) for x, y in sorted(ps)]
        if len(line) > 1:
            draw.line(line, fill=color, width=2)
        for x, y in line:
            draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=color)
        ly = y0 + 6 + 16 * k  # legend entry
        draw.line((x1 + 10, ly + 6, x1 + 28, ly + 6), fill=color, width=3)
        draw.text((x1 + 32, ly), name, fill=TEXT, font=font)
    return img
