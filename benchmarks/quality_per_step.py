"""Sample quality against network evaluations (NFE), one line per sampler: docs/quality-per-step.png.

Reads the sweep.json of `ldmkit eval --sampler A,B,... --nfe ...` (or runs that sweep first with --run),
draws FD (log NFE axis) and prints the sweep's markdown table.

    # from a finished (or resumable) sweep
    python benchmarks/quality_per_step.py runs/eval-sweep/sweep.json docs/quality-per-step.png
    # run the sweep, then plot (every `ldmkit eval` option after --)
    python benchmarks/quality_per_step.py runs/eval-sweep/sweep.json docs/quality-per-step.png \\
        --run runs/demo/ldm/pipeline.safetensors -- --sampler ddim,plms,dpmpp_2m,euler,euler_a,heun \\
        --nfe 5,10,15,25,50,100 --n 500 --guidance 3
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ldmkit.cli.main import main as ldmkit_main
from ldmkit.evaluation.sweep import fd_key, sweep_table
from ldmkit.training.plot import series_plot


def plot_sweep(sweep: dict, out: Path) -> Path:
    """FD against NFE (log axis), one series per sampler, as a PNG at ``out``."""
    key = fd_key(sweep["rows"][0]["metrics"])
    if key is None:
        raise SystemExit("the sweep has no Frechet distance (run it with --metrics fd,...)")
    series: dict[str, tuple[list[float], list[float]]] = {}
    for row in sweep["rows"]:  # the sweep's sampler order; series_plot sorts each line by x
        xs, ys = series.setdefault(row["sampler"], ([], []))
        xs.append(row["nfe"])
        ys.append(row["metrics"][key])
    proto = sweep["protocol"]
    title = f"{key} vs NFE ({proto['n']} samples, guidance {proto['guidance_scale']}; lower is better)"
    out.parent.mkdir(parents=True, exist_ok=True)
    series_plot(title, series, x_label="NFE (network evaluations per image; log scale)", y_label=key,
                log_x=True).save(out)
    return out


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweep_json", help="OUT/sweep.json of an `ldmkit eval` sweep")
    ap.add_argument("png", nargs="?", default="docs/quality-per-step.png")
    ap.add_argument("--run", default=None, help="a pipeline: run the sweep into the sweep_json's folder first")
    args = ap.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    path = Path(args.sweep_json)
    if args.run:
        code = ldmkit_main(["eval", args.run, "--out", str(path.parent), *extra])
        if code:
            raise SystemExit(code)
    if not path.is_file():
        raise SystemExit(f"{path}: not found (run the sweep, or pass --run PIPELINE)")
    sweep = json.loads(path.read_text())
    print(sweep_table(sweep))
    print(f"plot: {plot_sweep(sweep, Path(args.png))}")


if __name__ == "__main__":
    main()
