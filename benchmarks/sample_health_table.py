"""Sample health per sampler and guidance scale (issue 23): the share of samples off the data manifold.

For any ldmkit pipeline: every (sampler, steps) x guidance row samples ``--n`` images with seeds
``seed + k`` (default from 10,000,000: seeds no training run draws) and conditions fixed by k as in
``ldmkit eval`` (class k % K; the k-th test item for text / layout / semantic / SR / inpainting models),
then applies the rule of :mod:`ldmkit.evaluation.health` to the sampler's own latents (against posterior
samples of 4,096 training images). Class-conditional models are also scored by the demo's scorer
(10 classes + "none of these"). Rows are appended to ``OUT/health.json`` as they finish, so a run resumes.

    PYTHONPATH=src python benchmarks/sample_health_table.py runs/demo/ldm/pipeline.safetensors \\
        --samplers ddim:50,dpmpp_2m:20,plms:50,euler:50 --guidance 1,3,5 --n 1000 --out runs/health/demo
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from ldmkit.data import build_dataset
from ldmkit.evaluation.class_accuracy import conditional_accuracy
from ldmkit.evaluation.generation import EVERY_STEP, SampleProtocol, _call_inputs, condition_kind, model_data_config
from ldmkit.evaluation.health import RULE, encode_all, fit_range, real_images
from ldmkit.pipeline import Pipeline


OLD = {"guidance_rescale": 0.0, "guidance_interval": None}  # rows recorded before these settings existed


@torch.no_grad()
def data_conditioned_latents(pipe, dataset, kind: str, n: int, seed: int, sampler: str, steps: int,
                             guidance: float, batch_size: int, **guide) -> torch.Tensor:
    proto = SampleProtocol("", n, seed, steps, sampler, guidance, conditions=kind)
    parts = []
    for start in range(0, n, batch_size):
        idx = list(range(start, min(n, start + batch_size)))
        parts.append(pipe(**_call_inputs(pipe, proto, idx, dataset), num_inference_steps=steps,
                          guidance_scale=guidance, sampler=sampler, seeds=[seed + k for k in idx],
                          output_type="latent", **guide).cpu())
    return torch.cat(parts)


def parse_sampler(item: str) -> tuple[str, int, dict]:
    """``name:steps[:option=value...]`` -> (name, steps, options); integer values become ints."""
    sampler, steps, *opts = item.split(":")
    options = {k: int(v) if v.lstrip("-").isdigit() else v for k, v in (o.split("=") for o in opts)}
    return sampler, int(steps), options


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("pipeline")
    ap.add_argument("--samplers", default="ddim:50,dpmpp_2m:20,plms:50,euler:50",
                    help="name:steps[:option=value...], comma list (e.g. plms:50:order=2)")
    ap.add_argument("--guidance", default="1,3,5")
    ap.add_argument("--guidance-rescale", type=float, default=None, help="Lin et al. 2023; default: the model's own")
    ap.add_argument("--guidance-interval", default=None, metavar="LO-HI",
                    help="guide only at LO <= t <= HI; default: the model's own")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=10_000_000)
    ap.add_argument("--batch-size", type=int, default=250)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = out / "health.json"
    done = json.loads(record.read_text()) if record.is_file() else {"rule": RULE, "rows": []}
    pipe = Pipeline.load(args.pipeline)
    data_cfg = model_data_config(Path(args.pipeline))
    train, test = build_dataset(data_cfg, "train"), build_dataset(data_cfg, "test")
    rng = fit_range(pipe, train, sample=True)
    done["heldout_off_share"] = rng.off_share(encode_all(pipe, real_images(test, 4096), sample=True))
    done |= {"pipeline": args.pipeline, "reference_n": rng.n, "n": args.n, "seed": args.seed}
    kind = condition_kind(pipe)
    rescale, interval = pipe.guidance_settings(  # the model's own unless given
        args.guidance_rescale, None if args.guidance_interval is None
        else tuple(float(v) for v in args.guidance_interval.split("-")))
    guide = {"guidance_rescale": rescale, "guidance_interval": interval or EVERY_STEP}
    scorer = None
    if kind == "class-balanced" and data_cfg.name == "fashion_mnist":
        from ldmkit.evaluation.scorer import load_or_train_scorer

        scorer, _ = load_or_train_scorer()
    elif kind == "data":
        kind = f"data:{data_cfg.name}:test"
    print(f"held-out real latents off the range: {100 * done['heldout_off_share']:.2f} %")
    for item in args.samplers.split(","):
        sampler, steps, options = parse_sampler(item)
        for g in (float(v) for v in args.guidance.split(",")):
            key = {"sampler": sampler, "steps": steps, "guidance": g, "guidance_rescale": rescale,
                   "guidance_interval": None if interval is None else list(interval)}
            if options:
                key["options"] = options
            if any(all(r.get(k, OLD.get(k)) == v for k, v in key.items()) for r in done["rows"]):
                continue
            t0 = time.perf_counter()
            if scorer is not None:
                s = conditional_accuracy(pipe, scorer, n=args.n, guidance_scale=g, steps=steps, sampler=sampler,
                                         batch_size=args.batch_size, seed=args.seed, latent_range=rng,
                                         **guide, **options)
                row = key | {"off_manifold": s["off_manifold"], "accuracy": s["accuracy"], "rejected": s["rejected"],
                             "accuracy_healthy": s["accuracy_healthy"],
                             "off_per_class": [float((~s["healthy"][c::10]).float().mean()) for c in range(10)]}
            else:
                z = data_conditioned_latents(pipe, test, kind, args.n, args.seed, sampler, steps, g,
                                             args.batch_size, **guide, **options)
                row = key | {"off_manifold": rng.off_share(z)}
            row["seconds"] = round(time.perf_counter() - t0, 1)
            done["rows"].append(row)
            record.write_text(json.dumps(done, indent=1))
            print(json.dumps(row))
    lines = [f"| sampler | steps | guidance | rescale | interval | off-manifold | "
             + ("accuracy (scorer) | rejected |" if scorer else ""), "|---|---:|---:|---:|---|---:|" + ("---:|---:|" if scorer else "")]
    for r in done["rows"]:
        extra = f" {100 * r['accuracy']:.1f} % | {100 * r['rejected']:.1f} % |" if "accuracy" in r else ""
        interval = r.get("guidance_interval") or "all"
        name = r["sampler"] + "".join(f" {k}={v}" for k, v in r.get("options", {}).items())
        lines.append(f"| {name} | {r['steps']} | {r['guidance']:g} | {r.get('guidance_rescale', 0.0):g} | "
                     f"{interval if isinstance(interval, str) else '%g-%g' % tuple(interval)} | "
                     f"{100 * r['off_manifold']:.1f} % |{extra}")
    (out / "health.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
