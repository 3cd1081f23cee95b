"""Issue 19: one LoRA training step of Stable Diffusion 1.x at its real size (random weights), ldmkit beside
diffusers + peft on the same configuration, each side in a fresh process.

    PYTHONPATH=src python benchmarks/lora_step_full_size.py --out runs/bench/lora_full     # 512 px (~15 min, 2 cores)
    ... --tiny                                                                              # smoke test (~1 min)

Configuration (both sides): the SD 1.x file written by ``sd_full_size.py`` (fp16 original layout; diffusers reads
the converted folder), LoRA rank 4 (alpha 4) on the UNet's attention projections (to_q / to_k / to_v / to_out.0),
frozen weights in bf16 and adapters in float32 (diffusers' ``train_text_to_image_lora.py``: ``weight_dtype`` +
``cast_training_params``), bf16 autocast, activation checkpointing, AdamW, batch 1, a 512x512 image's latent
(64x64x4, as read from a latent cache: no VAE encode on either side), the prompt through the frozen CLIP text
tower in every step.

- ldmkit: what ``ldmkit fine-tune CKPT DIR --lora 4 train.precision=bf16 unet.use_checkpoint=true`` builds
  (``load_release_for``, ``add_adapters``, ``DenoiserLoss``, the project's AdamW); the VAE stays float32 there.
- diffusers: ``UNet2DConditionModel`` / ``CLIPTextModel`` / ``AutoencoderKL.from_pretrained(..., torch_dtype=bf16)``,
  ``unet.add_adapter(LoraConfig(...))``, ``enable_gradient_checkpointing``, ``torch.optim.AdamW``.

Figures: seconds per step (median of the steps after the first), the process's peak resident set (VmHWM: imports,
weights, activations, gradients, optimizer state), trainable parameters and optimizer-state bytes. Ratios:
time diffusers / ldmkit (>= 1: ldmkit as fast or faster) and peak RSS ldmkit / diffusers (<= 1: ldmkit no larger).
Writes <out>.json and <out>.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from perf_measure import peak_rss_mib, reset_peak_rss  # noqa: E402
from sd_full_size import PROMPT, make_files  # noqa: E402

RANK = 4
TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def ldmkit_side(single: Path, side_px: int):
    """(step function, trainable parameters) built as `ldmkit fine-tune --lora 4 train.precision=bf16` builds it."""
    from torch import nn

    from ldmkit.pipeline_inputs import gather_inputs
    from ldmkit.training.adapters import add_adapters, load_release_for
    from ldmkit.training.ldm_loop import DENOISER_PARTS, DenoiserLoss, LDMTrainConfig
    from ldmkit.training.optim import adam
    from dataclasses import replace

    tc = LDMTrainConfig(lora_rank=RANK, precision="bf16", lr=1e-4)
    pipe = load_release_for(str(single), RANK, ["train.precision=bf16"])
    pipe.unet.cfg = replace(pipe.unet.cfg, use_checkpoint=True)
    add_adapters(pipe, tc, DENOISER_PARTS)
    denoiser = nn.ModuleDict({k: getattr(pipe, k) for k in DENOISER_PARTS if getattr(pipe, k) is not None}).train()
    loss_fn = DenoiserLoss(pipe, denoiser, tc, torch.device("cpu"))
    opt = adam(denoiser.parameters(), lr=tc.lr)
    values = gather_inputs(pipe.cfg, torch.device("cpu"), prompt=[PROMPT]).values
    z0 = torch.randn(1, 4, side_px // 8, side_px // 8, generator=torch.Generator().manual_seed(0))

    def step(k: int) -> float:
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(z0, values, None, [torch.Generator().manual_seed(k)]).mean()
        loss.backward()
        opt.step()
        return float(loss)

    return step, [p for p in denoiser.parameters() if p.requires_grad]


def diffusers_side(folder: Path, side_px: int):
    import diffusers
    import transformers
    from diffusers.training_utils import cast_training_params
    from peft import LoraConfig

    bf16 = torch.bfloat16
    unet = diffusers.UNet2DConditionModel.from_pretrained(str(folder), subfolder="unet", torch_dtype=bf16)
    text = transformers.CLIPTextModel.from_pretrained(str(folder), subfolder="text_encoder", torch_dtype=bf16)
    vae = diffusers.AutoencoderKL.from_pretrained(str(folder), subfolder="vae", torch_dtype=bf16)  # held, as in training
    sched = diffusers.DDPMScheduler.from_pretrained(str(folder), subfolder="scheduler")
    tok = transformers.CLIPTokenizer.from_pretrained(str(folder), subfolder="tokenizer")
    for m in (unet, text, vae):
        m.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=RANK, lora_alpha=RANK, init_lora_weights="gaussian", target_modules=TARGETS))
    cast_training_params(unet, dtype=torch.float32)
    unet.enable_gradient_checkpointing()
    unet.train()
    params = [p for p in unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    ids = tok([PROMPT], padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_tensors="pt").input_ids
    z0 = torch.randn(1, 4, side_px // 8, side_px // 8, generator=torch.Generator().manual_seed(0))

    def step(k: int) -> float:
        g = torch.Generator().manual_seed(k)
        noise = torch.randn(z0.shape, generator=g)
        t = torch.randint(0, sched.config.num_train_timesteps, (1,), generator=g)
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            ctx = text(ids)[0]
        with torch.autocast("cpu", dtype=bf16):
            pred = unet(sched.add_noise(z0, noise, t).to(bf16), t, ctx).sample
        loss = torch.nn.functional.mse_loss(pred.float(), noise)
        loss.backward()
        opt.step()
        return float(loss)

    return step, params


def child(side: str, single: Path, folder: Path, steps: int, side_px: int) -> dict:
    method = reset_peak_rss()
    t0 = time.perf_counter()
    step, params = ldmkit_side(single, side_px) if side == "ldmkit" else diffusers_side(folder, side_px)
    build_s = time.perf_counter() - t0
    times, losses = [], []
    for k in range(steps):
        t0 = time.perf_counter()
        losses.append(step(k))
        times.append(time.perf_counter() - t0)
        print(side, f"step {k}: {times[-1]:.1f} s", file=sys.stderr, flush=True)
    n = sum(p.numel() for p in params)
    return {"side": side, "build_s": build_s, "step_s": times, "loss": losses, "trainable": n,
            "optimizer_state_mib": 2 * 4 * n / 2**20, "peak_rss_mib": peak_rss_mib(method), "rss_method": method}


def table(rows: list[dict]) -> str:
    lines = ["| side | build (s) | step (s, median after the first) | peak RSS (MiB) | trainable | optimizer state (MiB) |",
             "|---|---|---|---|---|---|"]
    mean = {}
    for r in rows:
        later = r["step_s"][1:] or r["step_s"]
        mean[r["side"]] = statistics.median(later)  # the median: one slow step of a noisy machine moves it least
        lines.append(f"| {r['side']} | {r['build_s']:.1f} | {mean[r['side']]:.1f} | {r['peak_rss_mib']:.0f} | "
                     f"{r['trainable']:,} | {r['optimizer_state_mib']:.1f} |")
    by = {r["side"]: r for r in rows}
    if {"ldmkit", "diffusers"} <= set(by):
        lines += ["", f"time diffusers / ldmkit: **{mean['diffusers'] / mean['ldmkit']:.2f}**; peak RSS ldmkit / "
                      f"diffusers: **{by['ldmkit']['peak_rss_mib'] / by['diffusers']['peak_rss_mib']:.2f}**"]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/bench/lora_full")
    ap.add_argument("--work", default=None, help="folder of the written checkpoint (default: runs/bench/sd_full_files)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    out = Path(args.out)
    work = Path(args.work) if args.work else out.parent / ("sd_full_files" + ("_tiny" if args.tiny else ""))
    single, folder = work / "sd-v1-random-fp16.safetensors", work / "sd-v1-random-diffusers"
    if args.child:
        torch.set_num_threads(args.threads)
        print("RESULT " + json.dumps(child(args.child, single, folder, args.steps, args.size)))
        return
    if not single.is_file() or not folder.is_dir():
        work.mkdir(parents=True, exist_ok=True)
        make_files(work, args.tiny)
    rows = []
    for side in ("ldmkit", "diffusers"):
        cmd = [sys.executable, __file__, "--child", side, "--work", str(work), "--out", str(out),
               "--steps", str(args.steps), "--size", str(args.size), "--threads", str(args.threads)]
        res = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=os.environ | {"TQDM_DISABLE": "1"})
        line = next((x for x in res.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            raise SystemExit(f"{side} failed (exit {res.returncode})")
        rows.append(json.loads(line[len("RESULT "):]))
    meta = {"size": args.size, "steps": args.steps, "threads": args.threads, "rank": RANK, "tiny": args.tiny,
            "machine": platform.processor() or platform.machine(), "torch": torch.__version__}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    text = table(rows)
    out.with_suffix(".md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
