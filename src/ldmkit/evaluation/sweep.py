"""Sampler x step-count sweeps of ``ldmkit eval``: quality against the number of network evaluations (NFE).

Every combination is one ordinary ``ldmkit eval`` run in ``OUT/<sampler>-<steps>/`` (its own resumable
samples and report.json), so an interrupted sweep resumes where it stopped and a finished one samples
nothing new. Asked for NFE instead of steps, each sampler gets the step count that makes that many
evaluations (:func:`~ldmkit.diffusion.nfe.steps_for_nfe`: PLMS N + 1, Heun 2N - 1, DDIM's uniform
spacing); the rows record the NFE actually made. ``OUT/sweep.json`` and ``OUT/sweep.md`` gather the rows.
"""
from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any, Callable

from ..config import ConfigError, from_dict
from ..diffusion import Schedule, ScheduleConfig, count_nfe, sampler_name, steps_for_nfe
from ..weights import atomic_write, read_release_metadata
from .generation import protocol_eta
from .report import evaluate

NFE_CONVENTION = ("NFE = denoiser evaluations per image; classifier-free guidance batches the unconditional and "
                  "conditional halves into one evaluation, counted once; classifier guidance adds one classifier "
                  "forward + backward per evaluation, not counted")


def pipeline_schedule(path: Path) -> Schedule:
    """The noise schedule stored with an ldmkit pipeline file (read from its metadata, no weights loaded)."""
    if not (path.is_file() and path.suffix == ".safetensors"):
        raise FileNotFoundError(f"{path}: a sweep samples a pipeline: expected an ldmkit pipeline.safetensors")
    meta = read_release_metadata(path)
    if meta.get("kind") != "pipeline":
        raise ConfigError(f"{path}: not an ldmkit pipeline file (kind={meta.get('kind')!r})")
    return Schedule(from_dict(ScheduleConfig, meta["config"].get("diffusion", {})))


def sweep_plan(samplers: list[str], schedule: Schedule, steps: list[int] | None = None,
               nfe: list[int] | None = None) -> list[dict[str, Any]]:
    """Rows {sampler (canonical name), steps, nfe}: every sampler x ``steps``, or x the step counts giving
    ``nfe`` (one row per distinct step count)."""
    if (steps is None) == (nfe is None):
        raise ValueError("a sweep takes either step counts or NFE targets")
    rows: list[dict[str, Any]] = []
    for name in samplers:
        canonical = sampler_name(name)
        if nfe is not None:
            pairs = [steps_for_nfe(canonical, n, schedule) for n in nfe]
        else:
            pairs = [(s, count_nfe(canonical, s, schedule)) for s in steps]
        for s, n in dict.fromkeys(pairs):  # two targets may land on one step count: sample it once
            rows.append({"sampler": canonical, "steps": s, "nfe": n})
    return rows


def evaluate_sweep(source: str, samplers: list[str], *, steps: list[int] | None = None, nfe: list[int] | None = None,
                   out: str | Path = "runs/eval-sweep", eta: float | None = None, log: Callable[[str], None] = print,
                   **common) -> dict[str, Any]:
    """Run :func:`~ldmkit.evaluation.report.evaluate` for every row of the plan; write sweep.json / sweep.md."""
    out = Path(out)
    schedule = pipeline_schedule(Path(source))
    for name in samplers:
        protocol_eta(name, eta)  # an unknown sampler or an eta it does not take fails before any sampling
    rows = sweep_plan(samplers, schedule, steps, nfe)
    for k, row in enumerate(rows):
        folder = out / f"{row['sampler']}-{row['steps']}"
        log(f"[{k + 1}/{len(rows)}] {row['sampler']}, {row['steps']} steps (NFE {row['nfe']}) -> {folder}")
        report = evaluate(source, sampler=row["sampler"], steps=row["steps"], eta=eta, out=folder, log=log, **common)
        row |= {"eta": report["images"]["eta"], "metrics": report["metrics"], "report": str(folder / "report.json")}
        last = report
    sweep = {"source": source, "nfe_convention": NFE_CONVENTION,
             "protocol": {k: last["images"][k] for k in ("checkpoint_sha256", "n", "seed", "guidance_scale",
                                                          "batch_size", "conditions", "classifier_sha256",
                                                          "classifier_scale")},
             "extractor": last["extractor"], "reference": last["reference"], "rows": rows,
             "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "sweep.json", lambda tmp: Path(tmp).write_text(json.dumps(sweep, indent=1)))
    atomic_write(out / "sweep.md", lambda tmp: Path(tmp).write_text(sweep_table(sweep) + "\n"))
    return sweep


def fd_key(metrics: dict[str, float]) -> str | None:
    """The Frechet distance's name among a row's metrics (FID or FD-<extractor>)."""
    return next((k for k in metrics if k == "FID" or k.startswith("FD-")), None)


def sweep_table(sweep: dict[str, Any]) -> str:
    """The sweep as a markdown table, one row per (sampler, steps), sorted by sampler then NFE."""
    rows = sorted(sweep["rows"], key=lambda r: (r["sampler"], r["nfe"]))
    names = [k for k in rows[0]["metrics"] if not k.endswith("_std")] if rows else []
    proto = sweep["protocol"]
    guide = f", classifier scale {proto['classifier_scale']}" if proto.get("classifier_sha256") else ""
    lines = [f"{proto['n']} samples per row, guidance {proto['guidance_scale']}{guide}; {sweep['nfe_convention']}.",
             "", "| sampler | steps | NFE | " + " | ".join(names) + " |", "|---|---:|---:|" + "---:|" * len(names)]
    for r in rows:
        lines.append(f"| {r['sampler']} | {r['steps']} | {r['nfe']} | "
                     + " | ".join(f"{r['metrics'][k]:.4g}" for k in names) + " |")
    return "\n".join(lines)
