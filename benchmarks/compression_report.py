"""Tables, verdict and plot of the compression sweep (benchmarks/compression_sweep.py), from its JSON files.

Re-render without running anything:

    python benchmarks/compression_report.py runs/compression --plot docs/compression.png
"""
from __future__ import annotations

import argparse
import json
from fractions import Fraction
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from ldmkit.training.plot import PALETTE, series_plot
from ldmkit.training.report import read_events

FD = "FD-fmnist"


def segment_seconds(events_path: Path, start_step: int) -> tuple[int, float]:
    """(last step, training seconds) of the segment that resumed at ``start_step``.

    The sweep logs every step; a resumed run's logger restarts its clock and drops the events after
    ``start_step``, so the newest event's ``time`` is the segment's training time (evaluation and sample
    grids are left out of it by the loop).
    """
    events = [e for e in read_events(events_path) if e.get("step", 0) > start_step and "time" in e]
    if not events:
        return start_step, 0.0
    last = max(events, key=lambda e: e["step"])
    return int(last["step"]), float(last["time"])


def load_rows(out: Path) -> dict[int, dict]:
    rows = {}
    for path in sorted(Path(out).glob("f*/row.json")):
        row = json.loads(path.read_text())
        rows[int(row["f"])] = row
    return dict(sorted(rows.items()))


def load_guidance(out: Path) -> list[dict] | None:
    path = Path(out) / "guidance.json"
    return json.loads(path.read_text())["scales"] if path.is_file() else None


def reach_time(points: list[dict], target: float) -> float | None:
    """Training seconds at the first evaluated point whose FD is at or below ``target`` (None: never)."""
    for p in points:
        if p[FD] <= target:
            return p["train_s"]
    return None


def claims(rows: dict[int, dict]) -> list[dict]:
    """For every latent row: when it first matched the pixel row's final FD, as a share of the pixel row's time."""
    if 1 not in rows:
        return []
    pixel = rows[1]
    target, pixel_s = pixel["points"][-1][FD], pixel["train_s"]
    out = []
    for f, row in rows.items():
        if f == 1:
            continue
        t = reach_time(row["points"], target)
        out.append({"f": f, "target": target, "pixel_s": pixel_s, "reach_s": t,
                    "share": None if t is None else t / pixel_s, "met": t is not None and t <= pixel_s / 3 + 1e-9,
                    "best": min(p[FD] for p in row["points"])})
    return out


def _frac_label(frac: float) -> str:
    fr = Fraction(frac).limit_denominator(12)
    return "end" if fr == 1 else f"{fr.numerator}/{fr.denominator}"


def _fs_cell(row: dict) -> str:
    fs = row["first_stage"]
    if fs["kind"] == "identity":
        return "identity (pixels)"
    budget = f"{fs['budget_min']:g}-min budget, " if fs.get("budget_min") else ""
    return f"{fs['psnr']:.2f} dB ({budget}{fs['steps']:,} steps)"


def tables(rows: dict[int, dict], guidance: list[dict] | None) -> str:
    """Markdown for docs/results.md: one row per f, the verdict, and the guidance sweep."""
    if not rows:
        return "(no finished rows)"
    settings = next(iter(rows.values()))["settings"]
    fracs = sorted({p["frac"] for r in rows.values() for p in r["points"]})
    lines = [f"Training budget per row: {settings['budget_min']:g} min of training time (evaluation excluded); "
             f"{FD}: {settings['eval_n']} samples, DDIM {settings['eval_steps']}, "
             f"guidance {settings['eval_guidance']:g}, "
             "classes cycling, image k has seed k.", "",
             "| f | latent | first stage PSNR (training) | latent cache (s) | steps | train img/s | "
             + " | ".join(f"{FD} at {_frac_label(fr)} ({fr * settings['budget_min']:.3g} min)" for fr in fracs)
             + " | sampling s / image |",
             "|---" * (7 + len(fracs)) + "|"]
    for f, r in rows.items():
        by_frac = {p["frac"]: p for p in r["points"]}
        fds = [f"{by_frac[fr][FD]:.1f}" if fr in by_frac else "-" for fr in fracs]
        cache = f"{r['cache_s']:.0f}" if r.get("cache_s") else "-"
        sample = f"{r['sample_s_per_image']:.3f}" if r.get("sample_s_per_image") else "-"
        latent = "x".join(str(v) for v in (r["first_stage"]["latent_shape"][1], r["first_stage"]["latent_shape"][2],
                                           r["first_stage"]["latent_shape"][0]))
        lines.append(f"| {f} | {latent} | {_fs_cell(r)} | {cache} | {r['steps']:,} | {r['img_per_s']:.1f} | "
                     + " | ".join(fds) + f" | {sample} |")
    verdicts = claims(rows)
    if verdicts:
        lines.append("")
        for c in verdicts:
            if c["reach_s"] is None:
                lines.append(f"- f={c['f']}: does not reach the pixel model's final {FD} ({c['target']:.1f} after "
                             f"{c['pixel_s'] / 60:.2f} min) within its budget (best {c['best']:.1f}).")
            else:
                lines.append(f"- f={c['f']}: reaches the pixel model's final {FD} ({c['target']:.1f} after "
                             f"{c['pixel_s'] / 60:.2f} min) by {c['reach_s'] / 60:.2f} min = {c['share']:.2f} of its "
                             f"time (first evaluated point at or below it): <= 1/3 {'met' if c['met'] else 'NOT met'}.")
    if guidance:
        lines += ["", f"Guidance sweep on the f=4 model ({guidance[0]['n']} samples, DDIM {guidance[0]['steps']}):", "",
                  f"| guidance | {FD} | precision | recall | IS |", "|---|---|---|---|---|"]
        for g in guidance:
            lines.append(f"| {g['guidance']:g} | {g[FD]:.1f} | {g['precision']:.3f} | {g['recall']:.3f} "
                         f"| {g['IS']:.2f} |")
    return "\n".join(lines)


def render_plot(rows: dict[int, dict], guidance: list[dict] | None, path: Path) -> Path:
    """FD against training minutes, one curve per f (the paper's Fig. 6 / 7), then the guidance sweep."""
    series = [("pixel (f=1)" if f == 1 else f"f={f}", [p["train_s"] / 60 for p in r["points"]],
               [p[FD] for p in r["points"]], PALETTE[k % len(PALETTE)]) for k, (f, r) in enumerate(rows.items())]
    pixel = rows.get(1)
    panels = [series_plot(f"{FD} (log) vs training time", series, (560, 340), x_label="training minutes", log_y=True,
                          integer_x=False, hline=pixel["points"][-1][FD] if pixel else None,
                          vline=pixel["train_s"] / 60 / 3 if pixel else None)]
    if guidance:
        gs = [g["guidance"] for g in guidance]
        panels.append(series_plot(f"f=4: {FD} vs guidance", [("", gs, [g[FD] for g in guidance], PALETTE[2])],
                                  (320, 340), x_label="guidance scale"))
        panels.append(series_plot("f=4: precision / recall vs guidance",
                                  [("precision", gs, [g["precision"] for g in guidance], PALETTE[0]),
                                   ("recall", gs, [g["recall"] for g in guidance], PALETTE[3])],
                                  (320, 340), x_label="guidance scale"))
    settings = next(iter(rows.values()))["settings"] if rows else {}
    caption = (f"Fashion-MNIST 32x32, {settings.get('budget_min', 0):g} min of training per row; {FD} of "
               f"{settings.get('eval_n')} samples, DDIM {settings.get('eval_steps')}. Dashed: the pixel model's final "
               f"{FD} and 1/3 of its training time.")
    canvas = Image.new("RGB", (sum(p.width for p in panels), 340 + 22), "white")
    ImageDraw.Draw(canvas).text((8, 5), caption, fill=(20, 20, 20), font=ImageFont.load_default())
    x = 0
    for p in panels:
        canvas.paste(p, (x, 22))
        x += p.width
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="the sweep's --out folder")
    ap.add_argument("--plot", default=None, help="PNG path (default: OUT/compression.png)")
    args = ap.parse_args()
    rows, guidance = load_rows(Path(args.out)), load_guidance(Path(args.out))
    print(tables(rows, guidance))
    print(f"plot: {render_plot(rows, guidance, Path(args.plot or Path(args.out) / 'compression.png'))}")


if __name__ == "__main__":
    main()
