"""Line plots drawn with Pillow (matplotlib is not a dependency): axes, ticks, a polyline, a title."""
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
