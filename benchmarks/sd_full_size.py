"""Stable Diffusion 1.x at its real size, random weights: write the single file, load it, sample one image, beside
diffusers in the same run.

    PYTHONPATH=src python benchmarks/sd_full_size.py --out runs/bench/sd_full    # fp32 and bf16 (~1 h on 2 cores)
    ... --precisions bf16 --steps 5                                              # a shorter run
    ... --tiny                                                                   # smoke test, tiny sizes (~1 min)

1. A full-size SD 1.x pipeline (860M UNet, 84M KL-f8 VAE, 123M CLIP ViT-L/14 text tower) with random weights is
   written as one original-layout fp16 ``.safetensors`` (what a user downloads), and converted to a diffusers
   folder (fp16 too) for diffusers' ``from_pretrained``: diffusers' own single-file loader needs configs from the
   Hub, which this machine cannot reach.
2. Memory: every (side, precision) loads in a fresh process: ldmkit ``load_pipeline_any(file, precision=...)``
   (cast while loading), diffusers ``StableDiffusionPipeline.from_pretrained(folder, torch_dtype=...)``, then
   samples one image (``--mem-steps`` steps; the resident set is steady from the first step on). Figures: load
   time, the process's peak resident set (VmHWM: imports, weights, activations, everything) and the weights' size
   in the run dtype.
3. Speed: one process per precision holds both pipelines and times one 512x512 image each, DPM++ 2M (trailing),
   20 steps, guidance 7.5, decoded, in the order ldmkit, diffusers, diffusers, ldmkit (the machine's drift
   cancels); the figure is each side's mean. Same threads on both sides.
4. Ratios: time diffusers / ldmkit (> 1: ldmkit faster) and peak RSS ldmkit / diffusers (< 1: ldmkit smaller).

Writes <out>.json and <out>.md and prints the table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from perf_measure import peak_rss_mib, reset_peak_rss  # noqa: E402

PROMPT = "a photograph of an astronaut riding a horse"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def sd_config(tiny: bool):
    """SD 1.x's v1-inference.yaml, or the same structure at tiny widths (--tiny)."""
    from ldmkit.autoencoder import AutoencoderConfig
    from ldmkit.diffusion import ScheduleConfig
    from ldmkit.nn import ConditionerConfig, UNetConfig
    from ldmkit.pipeline import PipelineConfig

    w = 1 if not tiny else 0
    return PipelineConfig(
        autoencoder=AutoencoderConfig(kind="kl", resolution=512, ch=128 if w else 32, ch_mult=(1, 2, 4, 4),
                                      num_res_blocks=2 if w else 1, attn_resolutions=(), z_channels=4, embed_dim=4),
        unet=UNetConfig(in_channels=4, out_channels=4, model_channels=320 if w else 32, channel_mult=(1, 2, 4, 4),
                        num_res_blocks=2 if w else 1, attention_resolutions=(1, 2, 4), num_heads=8,
                        use_spatial_transformer=True, transformer_depth=1, context_dim=768 if w else 64, legacy=False),
        conditioner=ConditionerConfig(kind="clip", embed_dim=768 if w else 64, n_layer=12 if w else 2,
                                      n_head=12 if w else 1, intermediate_size=3072 if w else 128, max_length=77),
        diffusion=ScheduleConfig(timesteps=1000, linear_start=0.00085, linear_end=0.012), scale_factor=0.18215)


def make_files(work: Path, tiny: bool) -> tuple[Path, Path, int]:
    """The fp16 single file and the diffusers folder; returns (file, folder, parameter count)."""
    from safetensors.torch import save_file

    from ldmkit.convert import export_diffusers
    from ldmkit.convert.loader import load_pipeline_any
    from ldmkit.convert.original import pipeline_to_original_state_dict
    from ldmkit.pipeline import Pipeline

    single, folder = work / "sd-v1-random-fp16.safetensors", work / "sd-v1-random-diffusers"
    torch.manual_seed(0)
    pipe = Pipeline(sd_config(tiny)).eval()
    n_params = sum(p.numel() for p in pipe.parameters())
    with torch.no_grad():  # zero-initialised output layers would make the UNet a constant
        for p in pipe.parameters():
            if not p.abs().sum():
                p.normal_(0, 0.01)
    sd = {k: (v.half() if v.is_floating_point() else v).contiguous()
          for k, v in pipeline_to_original_state_dict(pipe).items()}
    del pipe
    save_file(sd, str(single))
    del sd
    export_diffusers(load_pipeline_any(single, precision="fp16"), folder)
    return single, folder, n_params


def load(side: str, precision: str, single: Path, folder: Path):
    """(pipeline, its three networks)."""
    if side == "ldmkit":
        from ldmkit.convert.loader import load_pipeline_any

        pipe = load_pipeline_any(single, precision=precision)
        return pipe, [pipe.unet, pipe.autoencoder, pipe.conditioner]
    import diffusers

    pipe = diffusers.StableDiffusionPipeline.from_pretrained(str(folder), torch_dtype=DTYPES[precision],
                                                             safety_checker=None, requires_safety_checker=False)
    pipe.scheduler = diffusers.DPMSolverMultistepScheduler.from_config(pipe.scheduler.config,
                                                                      timestep_spacing="trailing")
    pipe.set_progress_bar_config(disable=True)
    return pipe, [pipe.unet, pipe.vae, pipe.text_encoder]


@torch.no_grad()
def sample(side: str, pipe, precision: str, steps: int, side_px: int) -> torch.Tensor:
    noise = torch.randn(1, 4, side_px // 8, side_px // 8, generator=torch.Generator().manual_seed(0))
    if side == "ldmkit":
        return pipe(prompt=[PROMPT], latents=noise, num_inference_steps=steps, guidance_scale=7.5,
                    sampler="dpmpp_2m", spacing="trailing", height=side_px, output_type="pt")
    return pipe(PROMPT, latents=noise.to(DTYPES[precision]), num_inference_steps=steps, guidance_scale=7.5,
                height=side_px, width=side_px, output_type="pt").images


def memory_child(side: str, precision: str, single: Path, folder: Path, steps: int, side_px: int) -> dict:
    method = reset_peak_rss()
    t0 = time.perf_counter()
    pipe, modules = load(side, precision, single, folder)
    load_s = time.perf_counter() - t0
    weights_mib = sum(p.numel() * p.element_size() for m in modules for p in m.parameters()) / 2**20
    after_load = peak_rss_mib(method)
    img = sample(side, pipe, precision, steps, side_px)
    return {"side": side, "precision": precision, "load_s": load_s, "peak_rss_mib": peak_rss_mib(method),
            "peak_rss_after_load_mib": after_load, "weights_mib": weights_mib,
            "finite": bool(torch.isfinite(img.float()).all()), "rss_method": method}


def speed_child(precision: str, single: Path, folder: Path, steps: int, side_px: int) -> dict:
    pipes = {side: load(side, precision, single, folder)[0] for side in ("ldmkit", "diffusers")}
    for side, pipe in pipes.items():  # warm-up: tokenizer, kernels' first-call set-up, page faults
        sample(side, pipe, precision, 1, side_px)
    times: dict[str, list[float]] = {"ldmkit": [], "diffusers": []}
    for side in ("ldmkit", "diffusers", "diffusers", "ldmkit"):
        t0 = time.perf_counter()
        sample(side, pipes[side], precision, steps, side_px)
        times[side].append(time.perf_counter() - t0)
        print(side, precision, f"{times[side][-1]:.1f} s", file=sys.stderr, flush=True)
    return {"precision": precision, "times": times}


def table(mem: list[dict], speed: list[dict]) -> str:
    sample_s = {(sp["precision"], side): sum(ts) / len(ts) for sp in speed for side, ts in sp["times"].items()}
    by = {(r["side"], r["precision"]): r for r in mem}
    lines = ["| precision | side | load (s) | sample (s, mean of 2) | peak RSS (MiB) | weights (MiB) | RSS / weights |",
             "|---|---|---|---|---|---|---|"]
    for r in mem:
        t = sample_s.get((r["precision"], r["side"]), float("nan"))
        lines.append(f"| {r['precision']} | {r['side']} | {r['load_s']:.1f} | {t:.1f} | {r['peak_rss_mib']:.0f} | "
                     f"{r['weights_mib']:.0f} | {r['peak_rss_mib'] / r['weights_mib']:.2f} |")
    lines += ["", "| precision | time diffusers / ldmkit | load time diffusers / ldmkit | peak RSS ldmkit / diffusers |",
              "|---|---|---|---|"]
    for p in dict.fromkeys(r["precision"] for r in mem):
        a, b = by.get(("ldmkit", p)), by.get(("diffusers", p))
        if a and b and (p, "ldmkit") in sample_s:
            lines.append(f"| {p} | {sample_s[(p, 'diffusers')] / sample_s[(p, 'ldmkit')]:.2f} | "
                         f"{b['load_s'] / a['load_s']:.2f} | {a['peak_rss_mib'] / b['peak_rss_mib']:.2f} |")
    return "\n".join(lines)


def _run_child(spec: str, args, work: Path, out: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", spec, "--work", str(work), "--out", str(out), "--steps", str(args.steps),
           "--mem-steps", str(args.mem_steps), "--size", str(args.size), "--threads", str(args.threads)]
    res = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=os.environ | {"TQDM_DISABLE": "1"})
    line = next((x for x in res.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"{spec} failed (exit {res.returncode})")
    print(line, flush=True)
    return json.loads(line[len("RESULT "):])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/bench/sd_full")
    ap.add_argument("--work", default=None, help="folder for the written checkpoint (default: beside --out)")
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--steps", type=int, default=20, help="sampling steps of the timed images")
    ap.add_argument("--mem-steps", type=int, default=3, help="sampling steps of the memory runs")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    out = Path(args.out)
    work = Path(args.work) if args.work else out.parent / "sd_full_files"
    single, folder = work / "sd-v1-random-fp16.safetensors", work / "sd-v1-random-diffusers"
    if args.child:
        torch.set_num_threads(args.threads)
        kind, *rest = args.child.split(":")
        res = speed_child(rest[0], single, folder, args.steps, args.size) if kind == "speed" else \
            memory_child(kind, rest[0], single, folder, args.mem_steps, args.size)
        print("RESULT " + json.dumps(res))
        return
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    _, _, n_params = make_files(work, args.tiny)
    print(f"wrote {single} ({single.stat().st_size / 2**30:.2f} GiB, {n_params / 1e6:.0f}M parameters) and {folder} "
          f"in {time.perf_counter() - t0:.0f} s", flush=True)
    precisions = args.precisions.split(",")
    mem = [_run_child(f"{side}:{p}", args, work, out) for p in precisions for side in ("ldmkit", "diffusers")]
    speed = [_run_child(f"speed:{p}", args, work, out) for p in precisions]
    meta = {"parameters": n_params, "file_gib": single.stat().st_size / 2**30, "steps": args.steps,
            "mem_steps": args.mem_steps,
            "size": args.size, "threads": args.threads, "machine": platform.processor() or platform.machine(),
            "torch": torch.__version__, "tiny": args.tiny}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "memory": mem, "speed": speed}, indent=2))
    text = table(mem, speed)
    out.with_suffix(".md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
