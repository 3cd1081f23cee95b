"""Why deterministic samplers turn some seeds of a model into full-frame noise (issue 23): the experiment.

For a class-conditional pipeline it measures, on one CPU run:

1. the denoiser's error along the forward process: for real latents x_0 and fixed noise, at each
   timestep t, the RMS error of the predicted eps and of the implied x_0 = (x_t - sqrt(1 - abar) eps) /
   sqrt(abar); with eps prediction the x_0 error is the eps error times sqrt(1 / abar - 1)
   (70x at t = 981, the first DDIM-50 step of the demo schedule);
2. guided DDIM trajectories from ``--n`` seeds the training never used: which samples end off the real
   latents' range (the sample-health rule of ``ldmkit.evaluation.health``), and what the x_0 estimate
   of those seeds looked like at the first steps, against the healthy ones.

    PYTHONPATH=src python benchmarks/ode_blob_diagnosis.py runs/demo/ldm/pipeline.safetensors --n 500
"""
from __future__ import annotations

import argparse
import json

import torch

from ldmkit.data import DataConfig, build_dataset
from ldmkit.diffusion.parameterization import model_output_to_eps_x0, q_sample
from ldmkit.evaluation.health import encode_all, fit_range, real_images
from ldmkit.pipeline import Pipeline


@torch.no_grad()
def forward_process_errors(pipe: Pipeline, z0: torch.Tensor, labels: torch.Tensor,
                           ts: list[int]) -> list[dict]:
    """RMS error of the eps and x_0 estimates at each t (conditional model, no guidance)."""
    gen = torch.Generator().manual_seed(1234)
    noise = torch.randn(z0.shape, generator=gen)
    cond = pipe.condition(labels)
    rows = []
    for t in ts:
        tt = torch.full((len(z0),), t, dtype=torch.long)
        x_t = q_sample(pipe.schedule, z0, tt, noise)
        eps, x0 = model_output_to_eps_x0(pipe.schedule, pipe.model_fn(x_t, tt, cond), x_t, tt)
        abar = float(pipe.schedule.alphas_cumprod[t])
        rows.append({"t": t, "sqrt_abar": abar ** 0.5, "amplification": (1 / abar - 1) ** 0.5,
                     "eps_rms_error": float((eps - noise).square().mean().sqrt()),
                     "x0_rms_error": float((x0 - z0).square().mean().sqrt()),
                     "x0_rms_error_of_mean": float((z0 - z0.mean(0, keepdim=True)).square().mean().sqrt())})
    return rows


@torch.no_grad()
def trajectories(pipe: Pipeline, n: int, seed: int, guidance: float, steps: int, sampler: str):
    """Guided samples with seeds seed..seed+n-1 (classes cycling); the x_0 estimate's RMS at each step."""
    labels = torch.arange(n) % pipe.cfg.conditioner.num_classes
    gens = [torch.Generator().manual_seed(seed + k) for k in range(n)]
    noise = torch.stack([torch.randn(pipe.cfg.latent_shape, generator=g) for g in gens])
    cond = pipe.condition(labels)
    uncond = pipe.uncondition(n, cond)
    x0_rms, ts = [], []

    def callback(i, t, x, x0):
        x0_rms.append(x0.flatten(1).square().mean(1).sqrt())
        ts.append(t)

    z = pipe.sample_latents(cond, uncond, noise, steps=steps, guidance_scale=guidance, sampler=sampler,
                            generator=gens, callback=callback)
    return z, labels, torch.stack(x0_rms, 1), ts  # (n, c, h, w), (n,), (n, steps), steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("pipeline")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--seed", type=int, default=10_000_000, help="first sampling seed (training never used these)")
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--sampler", default="ddim")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    pipe = Pipeline.load(args.pipeline)
    print(f"parameterization: {pipe.cfg.diffusion.parameterization}")

    data = build_dataset(DataConfig(name="fashion_mnist", channels=1, image_size=32), "test")
    idx = torch.arange(512)
    images = torch.stack([data[int(i)]["image"] for i in idx])
    labels = torch.tensor([int(data[int(i)]["label"]) for i in idx])
    z0 = pipe.encode_latents(images, generator=torch.Generator().manual_seed(0))
    rows = forward_process_errors(pipe, z0, labels, [981, 941, 901, 801, 601, 401, 201, 41])
    print("\n| t | sqrt(abar) | sqrt(1/abar - 1) | eps RMS error | x0 RMS error | x0 RMS of the data |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['t']} | {r['sqrt_abar']:.4f} | {r['amplification']:.1f} | {r['eps_rms_error']:.4f} | "
              f"{r['x0_rms_error']:.3f} | {r['x0_rms_error_of_mean']:.3f} |")

    train = build_dataset(DataConfig(name="fashion_mnist", channels=1, image_size=32), "train")
    rng, rng_mode = fit_range(pipe, train, sample=True), fit_range(pipe, train)
    print(f"held-out real latents off the range: {100 * rng.off_share(encode_all(pipe, real_images(data, 10000), True)):.2f} %"
          f" (posterior samples), {100 * rng_mode.off_share(encode_all(pipe, real_images(data, 10000))):.2f} % (modes)")
    z, labels, x0_rms, ts = trajectories(pipe, args.n, args.seed, args.guidance, args.steps, args.sampler)
    off = ~rng.healthy(z)
    # the same rule on the decoded images encoded again (what `ldmkit eval` applies to stored samples)
    off_pixels = ~rng_mode.healthy(encode_all(pipe, pipe.decode_latents(z).clamp(-1, 1)))
    print(f"\n{args.sampler} {args.steps}, guidance {args.guidance}, {args.n} seeds from {args.seed}: "
          f"{int(off.sum())} off the real latents' range ({100 * off.float().mean():.1f} %); "
          f"re-encoded images: {int(off_pixels.sum())}, both: {int((off & off_pixels).sum())}")
    std = z.flatten(1).std(1)
    print(f"final latent std: healthy {std[~off].min():.2f}-{std[~off].max():.2f}"
          + (f", off-range {std[off].min():.2f}-{std[off].max():.2f}" if off.any() else ""))
    print("x0-estimate RMS by step (median [min, max]); healthy vs off-range seeds:")
    for k in (0, 1, 2, 4, 9, 19, len(ts) - 1):
        h, o = x0_rms[~off, k], x0_rms[off, k]
        line = f"  step {k + 1:2d} (t={ts[k]:3d}): healthy {h.median():.2f} [{h.min():.2f}, {h.max():.2f}]"
        if len(o):
            line += f"   off-range {o.median():.2f} [{o.min():.2f}, {o.max():.2f}]"
        print(line)
    per_class = [int(off[labels == c].sum()) for c in range(pipe.cfg.conditioner.num_classes)]
    torch.save({"z": z, "labels": labels, "x0_rms": x0_rms}, (args.out or "diagnosis") + ".latents.pt")
    print(f"off-range per class: {per_class}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"forward": rows, "off_share": float(off.float().mean()), "per_class": per_class,
                       "x0_rms_step1_healthy": x0_rms[~off, 0].tolist(), "x0_rms_step1_off": x0_rms[off, 0].tolist()},
                      f, indent=1)


if __name__ == "__main__":
    main()
