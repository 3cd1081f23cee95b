"""``ldmkit`` command line: argument parsing only; each subcommand calls one function."""
from __future__ import annotations

import argparse
import logging
import math
import os
import sys

from ..config import ConfigError, RunStopped
from ..diffusion.guidance import check_interval
from ..diffusion.timesteps import SPACINGS
from .argtypes import nonnegative_float, positive_int
from .convert import add_convert_parser, add_lora_arg, add_merge_lora_parser, convert_command, merge_lora_command
from .serve import add_serve_parser, serve_command


def _add_train(sub, name: str, help_text: str) -> None:
    p = sub.add_parser(name, help=help_text, description=help_text)
    p.add_argument("config", help="preset name (e.g. autoencoder/kl-f4-fmnist) or a YAML file")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. train.steps=100")
    p.add_argument("--no-resume", action="store_true", help="start fresh even if the run folder has a checkpoint")


def _add_classifier_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--classifier", default=None,
                   help="noisy latent classifier (`ldmkit train-classifier`) for classifier guidance")
    p.add_argument("--classifier-scale", type=float, default=1.0,
                   help="classifier guidance scale s: eps - s sqrt(1 - abar_t) grad log p(y | x_t) (0 = off)")


def _int_list(text: str, flag: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{flag} {text!r}: expected integers, e.g. 5,10,25") from None
    if not values or min(values) < 1:
        raise ValueError(f"{flag} {text!r}: expected integers >= 1")
    return values


class _Parser(argparse.ArgumentParser):
    """A usage mistake is one line (which flag, what was expected) and exit code 2, not argparse's usage dump."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ldmkit", description="Latent Diffusion Models: train, sample, evaluate.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_train(sub, "train-autoencoder", "train a first-stage autoencoder (KL or VQ)")
    _add_train(sub, "train-ldm", "train a latent diffusion model over a frozen autoencoder")
    p = sub.add_parser("fine-tune", help="adapt a released checkpoint to your images (LoRA or every weight)")
    p.add_argument("checkpoint", help="any checkpoint `ldmkit sample` reads (ldmkit, original single file, diffusers)")
    p.add_argument("data", help="image folder (captions: x.txt beside x.png, captions.jsonl or metadata.jsonl; or "
                                "class subfolders) or a folder of .tar shards")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--lora", type=_rank, default=4, metavar="RANK", help="LoRA rank (default 4)")
    mode.add_argument("--full", action="store_true", help="train every UNet weight instead of adapters")
    p.add_argument("overrides", nargs="*", help="train-ldm overrides, e.g. train.steps=500 train.lr=1e-4")
    p.add_argument("--no-resume", action="store_true", help="start fresh even if the run folder has a checkpoint")
    prior = p.add_argument_group("DreamBooth prior preservation")
    prior.add_argument("--class-prompt", default=None, metavar="TEXT",
                       help="caption of the class (e.g. 'a photo of a dog'): the checkpoint draws --class-images of it "
                            "first (OUT/class-images, resumable), trained beside your images so the class is kept")
    prior.add_argument("--class-images", type=int, default=100, metavar="N", help="how many (default 100)")
    prior.add_argument("--prior-weight", type=float, default=1.0, help="weight of the class images' loss (default 1)")

    p = sub.add_parser("cache-latents", help="encode an LDM preset's training set once (latent cache for train-ldm)",
                       description="Encode the training images (and their mirror images when data.flip) with the "
                                   "preset's first stage into sharded safetensors files beside it; train-ldm "
                                   "uses them when present. A changed autoencoder or data config gets a new cache.")
    p.add_argument("config", help="LDM preset name (e.g. ldm/fmnist-class) or a YAML file")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. first_stage=ae.safetensors")
    p.add_argument("--batch-size", type=positive_int, default=64, help="images per encoder call")
    p.add_argument("--shard-size", type=int, default=4096, help="items per shard file")
    p.add_argument("--embeddings", action="store_true",
                   help="also cache the frozen text encoder's output for every caption (conditioner.kind=text_frozen); "
                        "train-ldm then skips the encoder")

    p = sub.add_parser("make-shards", help="write an image folder as WebDataset-style tar shards (data.name=webdataset)",
                       description="Every image (+ its caption: x.txt, captions.jsonl or captions.json; + its class "
                                   "subfolder) becomes one sample of OUT_DIR/shard-NNNNN.tar; class names go to "
                                   "OUT_DIR/classes.json. Train on them with data.name=webdataset data.root=OUT_DIR.")
    p.add_argument("folder", help="a folder of images (as for data.name=image_folder)")
    p.add_argument("out_dir", help="folder for the shards")
    p.add_argument("--per-shard", type=int, default=1000, help="samples per shard (at least one shard per process)")
    p.add_argument("--prefix", default="shard", help="shard file name prefix")

    p = sub.add_parser("train-classifier", help="a noise-aware latent classifier for classifier guidance",
                       description="Train p(y | x_t, t) on the latents of a class-conditional pipeline's training "
                                   "data (encoded once with its autoencoder, cached beside the pipeline), noised "
                                   "with its schedule; prints the held-out accuracy at a few t. Use it with "
                                   "`ldmkit sample / eval --classifier PATH --classifier-scale S`.")
    p.add_argument("pipeline", help="an ldmkit pipeline.safetensors (its data config says what to train on)")
    p.add_argument("--steps", type=positive_int, default=3000)
    p.add_argument("--batch-size", type=positive_int, default=128)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--max-minutes", type=float, default=0.0,
                   help="training time budget (the one-off encoding of the data is not counted); 0 = none")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model-channels", type=int, default=64)
    p.add_argument("--encode-precision", default="fp32", choices=("fp32", "bf16"),
                   help="precision of the one-off encoding (bf16: ~2x faster on AMX CPUs)")
    p.add_argument("--eval-n", type=int, default=1000, help="held-out test items for the accuracy report")
    p.add_argument("--out", default=None, help="weights path (default: classifier.safetensors beside the pipeline)")
    p.add_argument("--data-root", default=None, help="override the data folder stored with the pipeline")
    p.add_argument("--device", default="auto")

    p = sub.add_parser("report", help="one PNG of a run's loss / lr / metric curves and its latest samples")
    p.add_argument("run_dir", help="a training run folder (holds events.jsonl)")
    p.add_argument("--out", default=None, help="PNG path (default: RUN_DIR/report.png)")

    p = sub.add_parser("eval-autoencoder", help="PSNR / SSIM of an autoencoder on the held-out split")
    p.add_argument("weights", help="autoencoder.safetensors")
    p.add_argument("--n", type=int, default=0, help="number of test images (0 = all)")
    p.add_argument("--batch-size", type=positive_int, default=250)
    p.add_argument("--out", default=None, help="folder for report.json and the reconstruction grid")
    p.add_argument("--data-root", default=None, help="override the data folder stored with the weights")

    p = sub.add_parser("sample", help="sample images from a trained pipeline")
    p.add_argument("checkpoint", help="pipeline.safetensors, an original .ckpt (YAML beside it) or a diffusers folder")
    p.add_argument("--class", dest="classes", action="append", default=None,
                   help="class index or name (repeatable, or comma-separated)")
    p.add_argument("--n", type=positive_int, default=8, help="images per class or per condition (or in all, when unconditional)")
    p.add_argument("--prompt", action="append", default=None, help="caption (repeatable), text-to-image models")
    p.add_argument("--negative-prompt", default=None, help="caption to guide away from (replaces the empty caption)")
    p.add_argument("--prompt-weighting", action="store_true",
                   help="read (word:1.3), (word), [word] in prompts as the web UIs do, and encode prompts longer "
                        "than the text encoder's window (77 tokens for CLIP) in chunks")
    p.add_argument("--boxes", default=None,
                   help='layout as JSON: [[class, x0, y0, x1, y1], ...] (class id or name, corners in [0, 1])')
    p.add_argument("--segmentation", default=None, help="semantic map PNG (pixel value = class id)")
    p.add_argument("--low-res", default=None, help="low-resolution image PNG to upscale (super-resolution)")
    p.add_argument("--image", default=None,
                   help="image PNG: img2img start (with --strength), or the image to inpaint (with --mask)")
    p.add_argument("--mask", default=None, help="mask PNG: white = region to fill (inpainting, any model)")
    p.add_argument("--strength", type=float, default=None,
                   help="img2img: share of the steps run from the noised --image, in [0, 1] "
                        "(default 0.8; 1 with --mask)")
    p.add_argument("--size", type=positive_int, default=None, help="output side in pixels (default: the training size)")
    p.add_argument("--decode-tile", type=int, default=None,
                   help="decode in overlapping tiles of this many latent pixels (large outputs, bounded memory)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"),
                   help="weights and compute precision; original files and diffusers folders are cast while they "
                        "load (bf16: ~2x faster on AMX CPUs and on GPUs)")
    p.add_argument("--config", default=None,
                   help="original YAML of a .ckpt / .safetensors (default: beside it; Stable Diffusion files need "
                        "none: the architecture is read off the weights)")
    p.add_argument("--prediction", default=None, choices=("eps", "v"),
                   help="what the UNet predicts, for an SD 2.x file whose name does not tell (768 models: v)")
    p.add_argument("--clip-skip", type=int, default=None,
                   help="CLIP text encoders: read the output this many layers before the last (web UIs' "
                        "'Clip skip 2' is 1)")
    add_lora_arg(p)
    p.add_argument("--tokenizer", default=None,
                   help="CLIP tokenizer folder or bpe_simple_vocab_16e6.txt.gz (default: the model's own, else "
                        "$LDMKIT_CLIP_VOCAB, else open-clip-torch's copy)")
    p.add_argument("--steps", type=positive_int, default=50)
    p.add_argument("--sampler", default="ddim",
                   help="ddim, plms, dpmpp_2m, dpmpp_2m_sde, dpmpp_3m_sde, dpmpp_2s_a, unipc, unipc_bh1, lcm, "
                        "euler, euler_a, heun, ddpm (+ _karras variants), a webui label ('DPM++ 2M SDE Karras') or "
                        "a diffusers scheduler class (UniPCMultistepScheduler, ...)")
    p.add_argument("--eta", type=float, default=None,
                   help="noise of ddim (default 0 = deterministic), euler_a, dpmpp_2s_a and the SDE samplers "
                        "(default 1; 0 = their ODE)")
    p.add_argument("--spacing", default=None, choices=SPACINGS,
                   help="timestep spacing (default: uniform for ddim / plms, linspace for the sigma-space samplers)")
    p.add_argument("--karras", action="store_true", help="Karras sigmas (the sigma-space samplers)")
    p.add_argument("--order", type=int, default=None, choices=(1, 2, 3, 4),
                   help="plms: highest multistep order (2-4, default 4, the original; 2 stays stable at high "
                        "guidance); unipc: 1-3 (default 2)")
    p.add_argument("--noise-type", dest="noise_type", default=None, choices=("gaussian", "brownian"),
                   help="dpmpp_2m_sde / dpmpp_3m_sde / dpmpp_2s_a: fresh noise per step (default, as diffusers) or "
                        "one Brownian motion per seed (k-diffusion's; a seed keeps its image across step counts)")
    p.add_argument("--guidance", type=nonnegative_float, default=3.0, help="classifier-free guidance scale (1 = off)")
    _add_guidance_args(p)
    _add_classifier_args(p)
    p.add_argument("--seed", type=int, default=0, help="image k gets seed + k")
    p.add_argument("--batch-size", type=positive_int, default=100)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="samples")

    p = sub.add_parser("eval", help="FD / KID / precision-recall / IS of samples (or images) against real data")
    p.add_argument("source", help="pipeline.safetensors (sampled), a folder of images, an .npz, or data:NAME:SPLIT")
    p.add_argument("--ref", default=None, help="reference data as NAME:SPLIT (default: the model's data, test split)")
    p.add_argument("--extractor", default="fmnist", help="fmnist (in-project classifier) or inception (FID)")
    p.add_argument("--weights", default=None,
                   help="extractor weights: pt_inception-2015-12-05-6726825d.pth for inception")
    p.add_argument("--resize", default="bilinear", help="resize method to the extractor's input size (inception)")
    p.add_argument("--metrics", default="fd,kid,pr", help="comma list of fd, kid, pr, is")
    p.add_argument("--n", type=int, default=10000, help="images to sample / read")
    p.add_argument("--sampler", default="ddim",
                   help="sampler, or a comma list for a sweep (e.g. ddim,dpmpp_2m,euler): every sampler x steps "
                        "combination is sampled into OUT/<sampler>-<steps>/, with OUT/sweep.json and sweep.md")
    p.add_argument("--steps", default="50", help="sampling steps, or a comma list for a sweep (e.g. 5,10,15)")
    p.add_argument("--nfe", default=None,
                   help="instead of --steps: network evaluations per image, comma list (e.g. 5,10,25,50); each "
                        "sampler gets the step count that makes them (heun: (NFE + 1) / 2 steps)")
    p.add_argument("--eta", type=float, default=None,
                   help="noise of samplers that take it (default: theirs, 0 for ddim, 1 for euler_a)")
    p.add_argument("--guidance", type=nonnegative_float, default=3.0)
    _add_guidance_args(p)
    _add_classifier_args(p)
    p.add_argument("--seed", type=int, default=0, help="image k gets seed + k")
    p.add_argument("--batch-size", type=positive_int, default=250)
    p.add_argument("--data-root", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="runs/eval", help="folder for samples (resumable) and report.json")

    p = sub.add_parser("eval-task", help="the task metric of a text / layout / semantic / SR / inpainting model")
    p.add_argument("checkpoint", help="pipeline.safetensors (conditions are taken from its data's test split)")
    p.add_argument("--n", type=positive_int, default=500)
    p.add_argument("--steps", type=positive_int, default=50)
    p.add_argument("--sampler", default="ddim")
    p.add_argument("--guidance", type=nonnegative_float, default=3.0)
    _add_guidance_args(p)
    p.add_argument("--seed", type=int, default=0, help="image k gets seed + k")
    p.add_argument("--batch-size", type=positive_int, default=100)
    p.add_argument("--classifier", default=None, help="Fashion-MNIST classifier weights (default: the cached one)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="runs/eval-task", help="folder for samples (resumable), grid.png, report.json")

    p = sub.add_parser("demo", help="Fashion-MNIST end to end: autoencoder, class-conditional LDM, scored grid")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--n-score", type=int, default=1000,
                   help="guided samples scored by the classifier (at least the 100 of the grid)")
    p.add_argument("--guidance", type=nonnegative_float, default=3.0,
                   help="classifier-free guidance scale (3: accurate and inside the real latent range; 5 over-exposes "
                        "a quarter of the samples, docs/results.md)")
    p.add_argument("overrides", nargs="*", help="ae.section.key=value or ldm.section.key=value overrides")

    add_convert_parser(sub)
    add_merge_lora_parser(sub)
    add_serve_parser(sub)
    return parser


def _add_guidance_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--guidance-rescale", type=float, default=None,
                   help="0-1: take back the over-exposure of large guidance scales (Lin et al. 2023; 0.7 is theirs); "
                        "default: the model's own (0 for released SD checkpoints)")
    p.add_argument("--guidance-interval", type=_interval, default=None, metavar="LO,HI",
                   help="guide only at model timesteps LO <= t <= HI, or 'all'; default: the model's own")


def _interval(text: str) -> tuple[float, float]:
    """``--guidance-interval``: "LO,HI" in model timesteps, or "all" (every step)."""
    if text.strip().lower() == "all":
        return 0.0, math.inf
    try:
        return check_interval(tuple(float(v) for v in text.split(",")))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected LO,HI (0 <= LO <= HI) or 'all', got {text!r}: {e}") from None


def _rank(text: str) -> int:
    """``--lora RANK``: an integer >= 1 (0 would silently train every weight: that is ``--full``)."""
    try:
        rank = int(text)
    except ValueError:
        rank = 0
    if rank < 1 or str(rank) != text.strip():
        raise argparse.ArgumentTypeError(f"expected an integer >= 1 (the adapters' rank; --full trains every "
                                         f"weight), got {text!r}")
    return rank


def _print_weights(path) -> None:
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun every rank returns the path; one line is enough
        print(f"weights: {path}")


def _run(args: argparse.Namespace) -> None:
    if args.command in ("train-autoencoder", "train-ldm"):
        from ..config import load_config

        if args.command == "train-autoencoder":
            from ..training.autoencoder_loop import AutoencoderRunConfig, train_autoencoder

            path = train_autoencoder(load_config(AutoencoderRunConfig, args.config, args.overrides),
                                     resume=not args.no_resume)
        else:
            from ..training.ldm_loop import LDMRunConfig, train_ldm

            path = train_ldm(load_config(LDMRunConfig, args.config, args.overrides), resume=not args.no_resume)
        _print_weights(path)
    elif args.command == "fine-tune":
        from ..training.ldm_loop import fine_tune

        prior = None if args.class_prompt is None else (args.class_prompt, args.class_images, args.prior_weight)
        _print_weights(fine_tune(args.checkpoint, args.data, 0 if args.full else args.lora, args.overrides,
                                 resume=not args.no_resume, prior=prior))
    elif args.command == "cache-latents":
        from ..config import load_config
        from ..training.ldm_loop import LDMRunConfig, cache_latents

        cache_latents(load_config(LDMRunConfig, args.config, args.overrides), batch_size=args.batch_size,
                      shard_size=args.shard_size, embeddings=args.embeddings)
    elif args.command == "train-classifier":
        from ..training.classifier_loop import ClassifierTrainConfig, accuracy_table, train_noisy_classifier

        cfg = ClassifierTrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                                    max_minutes=args.max_minutes, seed=args.seed, model_channels=args.model_channels,
                                    encode_precision=args.encode_precision, eval_n=args.eval_n)
        path, report = train_noisy_classifier(args.pipeline, cfg, out=args.out, data_root=args.data_root,
                                              device=args.device)
        print(accuracy_table(report))
        print(f"weights: {path}")
    elif args.command == "make-shards":
        from ..data.shard_writer import write_shards

        shards = write_shards(args.folder, args.out_dir, args.per_shard, args.prefix)
        last = len(shards) - 1
        print(f"{len(shards)} shard(s): {args.out_dir}/{args.prefix}-{{{0:05d}..{last:05d}}}.tar "
              f"(train with data.name=webdataset data.root={args.out_dir})")
    elif args.command == "report":
        from ..training.report import render_report

        print(f"report: {render_report(args.run_dir, args.out)}")
    elif args.command == "eval-autoencoder":
        from ..evaluation.autoencoder_report import evaluate_autoencoder

        report = evaluate_autoencoder(args.weights, n=args.n, batch_size=args.batch_size, out=args.out,
                                      data_root=args.data_root)
        print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in report.items()
                       if not isinstance(v, dict)))
    elif args.command == "sample":
        from .sample import sample_command

        sample_command(args)
    elif args.command == "eval":
        from ..evaluation.report import evaluate, metrics_table
        from ..evaluation.sweep import evaluate_sweep, sweep_table

        common = dict(extractor=args.extractor, weights=args.weights, resize=args.resize, ref=args.ref,
                      metrics=tuple(m.strip() for m in args.metrics.split(",") if m.strip()), n=args.n,
                      seed=args.seed, guidance=args.guidance, eta=args.eta, batch_size=args.batch_size,
                      device=args.device, data_root=args.data_root, classifier=args.classifier,
                      classifier_scale=args.classifier_scale, guidance_rescale=args.guidance_rescale,
                      guidance_interval=args.guidance_interval)
        samplers = [v.strip() for v in args.sampler.split(",") if v.strip()]
        steps = _int_list(args.steps, "--steps")
        if args.nfe is not None or len(samplers) > 1 or len(steps) > 1:
            nfe = _int_list(args.nfe, "--nfe") if args.nfe is not None else None
            sweep = evaluate_sweep(args.source, samplers, steps=None if nfe else steps, nfe=nfe, out=args.out,
                                   **common)
            print(sweep_table(sweep))
            print(f"sweep: {args.out}/sweep.json, {args.out}/sweep.md")
        else:
            report = evaluate(args.source, steps=steps[0], sampler=samplers[0], out=args.out, **common)
            print(metrics_table(report))
            print(f"report: {args.out}/report.json")
    elif args.command == "eval-task":
        from ..evaluation.task_report import evaluate_task

        report = evaluate_task(args.checkpoint, n=args.n, seed=args.seed, steps=args.steps, sampler=args.sampler,
                               guidance=args.guidance, batch_size=args.batch_size, out=args.out, device=args.device,
                               data_root=args.data_root, classifier=args.classifier,
                               guidance_rescale=args.guidance_rescale, guidance_interval=args.guidance_interval)
        print(f"{report['task']}: " + " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                                              for k, v in report["metrics"].items()))
        print(f"report: {args.out}/report.json")
    elif args.command == "demo":
        from .demo import run_demo

        run_demo(args)
    elif args.command == "convert":
        convert_command(args)
    elif args.command == "merge-lora":
        merge_lora_command(args)
    elif args.command == "serve":
        serve_command(args)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may follow options (`fine-tune CKPT DATA --lora 4 train.steps=500`)
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = list(args.overrides) + extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command is None:
        parser.print_help()
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        _run(args)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        # user mistakes: one line, no traceback (LDMKIT_DEBUG=1 shows it)
        if os.environ.get("LDMKIT_DEBUG"):
            raise
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"ldmkit: error: {msg}", file=sys.stderr)
        return 2
    except RunStopped as e:  # the run could not go on; what is kept is named in the message
        if os.environ.get("LDMKIT_DEBUG"):
            raise
        print(f"ldmkit: stopped: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("ldmkit: interrupted (the last checkpoint is kept; run the same command to resume)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
