"""``ldmkit report RUN_DIR``: the run's curves (losses, eval metrics, lr, img/s) and its latest sample grid
in one PNG, for a person to glance at."""
from __future__ import annotations

import json
import re
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from .plot import BACKGROUND, TEXT, line_plot

SKIP = {"step", "time", "eta_s", "it_per_s", "disc_factor"}   # bookkeeping, not curves
PANEL = (420, 240)
MAX_PANELS = 12


def read_events(path: Path) -> list[dict]:
    """Events in step order. Lines of one step are merged, later values winning: evaluations are logged as
    their own line at a step, and a resumed run logs its steps again. A torn line (a killed run) is skipped."""
    by_step: dict[int, dict] = {}
    for line in Path(path).read_text().splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(event, dict) and "step" in event:
            by_step[int(event["step"])] = by_step.get(int(event["step"]), {}) | event
    return [by_step[s] for s in sorted(by_step)]


def curves(events: list[dict]) -> dict[str, tuple[list[int], list[float]]]:
    """Every numeric field as (steps, values), ordered losses, eval metrics, lr, img/s, then the rest."""
    out: dict[str, tuple[list[int], list[float]]] = {}
    for e in events:
        for k, v in e.items():
            if k in SKIP or isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            xs, ys = out.setdefault(k, ([], []))
            xs.append(int(e["step"]))
            ys.append(float(v))

    def rank(k: str) -> tuple[int, str]:
        group = 0 if "loss" in k else 1 if k.startswith("eval/") else 2 if k == "lr" else 3 if k == "img_per_s" else 4
        return group, k

    return {k: out[k] for k in sorted(out, key=rank)}


def latest_samples(run: Path) -> Path | None:
    """The final grid if there is one, else the one of the highest step (samples_0001000.png, recon_...)."""
    files = sorted((run / "samples").glob("*.png")) if (run / "samples").is_dir() else []
    if not files:
        return None
    final = [f for f in files if "final" in f.stem]
    if final:
        return final[-1]
    return max(files, key=lambda f: int(m.group()) if (m := re.search(r"\d+", f.stem)) else -1)


def render_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the report PNG (default ``RUN_DIR/report.png``) and return its path."""
    run = Path(run_dir)
    events_path = run / "events.jsonl"
    if not events_path.is_file():
        raise FileNotFoundError(f"{events_path}: no events (is {run} a training run folder?)")
    events = read_events(events_path)
    series = list(curves(events).items())[:MAX_PANELS]
    cols = 2 if len(series) > 1 else 1
    rows = max(1, -(-len(series) // cols))
    header = 28
    plots_w, plots_h = cols * PANEL[0], rows * PANEL[1]
    sample_path = latest_samples(run)
    sample = None
    if sample_path is not None:
        with Image.open(sample_path) as im:
            sample = im.convert("RGB")
        # small grids (16 px images) are enlarged by a whole factor so pixels stay sharp
        factor = max(1, min(plots_h // max(1, sample.height), 512 // max(1, sample.width)))
        if factor > 1:
            sample = sample.resize((sample.width * factor, sample.height * factor), Image.NEAREST)
        if sample.height > max(plots_h, 512):
            scale = max(plots_h, 512) / sample.height
            sample = sample.resize((max(1, round(sample.width * scale)), max(plots_h, 512)), Image.BICUBIC)
    side_w = sample.width + 20 if sample is not None else 0
    height = header + max(plots_h, (sample.height + 20) if sample is not None else 0)
    canvas = Image.new("RGB", (plots_w + side_w, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    last = events[-1] if events else {}
    title = f"{run.resolve().name}: step {last.get('step', 0)}"
    if "time" in last:
        title += f", {last['time'] / 60:.1f} min since (re)start"
    draw.text((8, 8), title, fill=TEXT, font=font)
    for i, (name, (xs, ys)) in enumerate(series):
        canvas.paste(line_plot(name, xs, ys, PANEL), ((i % cols) * PANEL[0], header + (i // cols) * PANEL[1]))
    if not series:
        draw.text((8, header + 8), "no numeric events logged yet", fill=TEXT, font=font)
    if sample is not None:
        x = plots_w + 10
        draw.text((x, header - 14), f"samples: {sample_path.name}", fill=TEXT, font=font)
        canvas.paste(sample, (x, header + 4))
    path = Path(out) if out else run / "report.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path
