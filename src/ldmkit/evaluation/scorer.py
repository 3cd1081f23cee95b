"""The demo's scorer: the Fashion-MNIST classifier with an eleventh class, "none of these".

A 10-way classifier must name a class for anything, so full-frame noise from a failed sampler is scored
as a sandal or a bag (issue 23). The scorer is the cached 10-way classifier (its features stay the
FD-fmnist extractor, untouched) copied into an 11-way model and fine-tuned for a fraction of an epoch
on the training images with generated junk mixed in as class 10: Gaussian and uniform pixel noise,
smooth random blobs at several scales (what a sampler gives when it leaves the data manifold),
salt-and-pepper, bright random rectangles over the whole frame. The junk never contains a garment.
Its figures (real test accuracy, real images rejected, held-out junk rejected) come with it.
"""
from __future__ import annotations

import hashlib
import json
import time

import torch
import torch.nn.functional as F

from ..weights import load_release, save_release
from .classifier import RECIPE, FashionClassifier, cache_dir, load_or_train_fashion_classifier, train_step

NONE_LABEL = "none of these"
SCORER_RECIPE = {"base": RECIPE, "steps": 250, "batch_size": 128, "junk_share": 0.25, "lr": 1e-3, "seed": 1,
                 "junk": "gauss-uniform-blobs-saltpepper-rects-v1"}
JUNK_KINDS = 5


def junk_images(n: int, generator: torch.Generator, size: int = 32) -> torch.Tensor:
    """``n`` images (n, 1, size, size) in [-1, 1] that show no garment, kinds cycling."""
    out = torch.empty(n, 1, size, size)
    for i in range(n):
        kind = i % JUNK_KINDS
        u = torch.rand(4, generator=generator)
        if kind == 0:    # Gaussian pixel noise around a random level
            x = (u[0] * 2 - 1) + (0.2 + u[1]) * torch.randn(1, size, size, generator=generator)
        elif kind == 1:  # uniform pixel noise in a random sub-interval
            lo = u[0] * 2 - 1
            x = lo + (1 - lo) * u[1] * torch.rand(1, size, size, generator=generator)
        elif kind == 2:  # smooth random blobs: low-resolution noise upsampled, brightened, clipped
            r = int(2 + u[0] * 14)
            low = torch.randn(1, 1, r, r, generator=generator)
            x = F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)[0]
            x = (0.5 + 2.5 * u[1]) * x + (u[2] * 1.5 - 1)
        elif kind == 3:  # salt and pepper on a random background
            x = torch.full((1, size, size), float(u[0] * 2 - 1))
            hit = torch.rand(1, size, size, generator=generator) < 0.1 + 0.4 * u[1]
            x[hit] = torch.where(torch.rand(int(hit.sum()), generator=generator) < 0.5, -1.0, 1.0)
        else:            # bright random rectangles covering the frame
            x = torch.full((1, size, size), -1.0)
            for _ in range(3 + int(u[0] * 8)):
                y0, x0 = torch.randint(0, size - 4, (2,), generator=generator).tolist()
                h, w = torch.randint(4, size, (2,), generator=generator).tolist()
                x[:, y0:y0 + h, x0:x0 + w] = float(torch.rand((), generator=generator) * 2 - 1)
        out[i] = x.clamp(-1, 1)
    return out


def _extend(base: FashionClassifier) -> FashionClassifier:
    """An 11-way copy of ``base``: same body and features, the new logit starts at zero."""
    model = FashionClassifier(num_classes=11)
    state = base.state_dict()
    state["head.weight"] = torch.cat([state["head.weight"], torch.zeros(1, state["head.weight"].shape[1])])
    state["head.bias"] = torch.cat([state["head.bias"], torch.zeros(1)])
    model.load_state_dict(state)
    return model


def train_scorer(base: FashionClassifier, train_x: torch.Tensor, train_y: torch.Tensor, recipe: dict | None = None,
                 log=print) -> FashionClassifier:
    recipe = recipe or SCORER_RECIPE
    torch.manual_seed(recipe["seed"])
    gen = torch.Generator().manual_seed(recipe["seed"])
    model = _extend(base).train()
    opt = torch.optim.AdamW(model.parameters(), lr=recipe["lr"], weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe["lr"], total_steps=recipe["steps"])
    n_junk = int(recipe["batch_size"] * recipe["junk_share"])
    n_real = recipe["batch_size"] - n_junk
    t0 = time.perf_counter()
    for _ in range(recipe["steps"]):
        idx = torch.randint(0, len(train_x), (n_real,), generator=gen)
        flip = torch.rand(n_real, generator=gen) < 0.5
        real = torch.where(flip[:, None, None, None], train_x[idx].flip(-1), train_x[idx])
        x = torch.cat([real, junk_images(n_junk, gen, train_x.shape[-1])])
        y = torch.cat([train_y[idx], torch.full((n_junk,), 10, dtype=torch.long)])
        loss = train_step(model, opt, sched, x, y, RECIPE["precision"] == "bf16")
    log(f"scorer: {recipe['steps']} steps, loss {float(loss.detach()):.3f} ({time.perf_counter() - t0:.0f} s)")
    return model.eval()


@torch.no_grad()
def scorer_figures(model: FashionClassifier, test_x: torch.Tensor, test_y: torch.Tensor, n_junk: int = 2000) -> dict:
    """Real test accuracy (a "none" answer counts as wrong), real test images rejected, fresh junk rejected."""
    pred = torch.cat([model(test_x[i:i + 1000]).argmax(1) for i in range(0, len(test_x), 1000)])
    junk = junk_images(n_junk, torch.Generator().manual_seed(10_000))  # seeds the training never drew
    return {"test_accuracy": float((pred == test_y).float().mean()),
            "test_rejected": float((pred == 10).float().mean()),
            "junk_rejected": float((model(junk).argmax(1) == 10).float().mean())}


def load_or_train_scorer(log=print) -> tuple[FashionClassifier, dict]:
    """The cached 11-way scorer (keyed by its recipe), training it (and the 10-way base) first when absent."""
    key = hashlib.sha256(json.dumps(SCORER_RECIPE, sort_keys=True).encode()).hexdigest()[:12]
    path = cache_dir() / f"fashion-mnist-scorer-{key}.safetensors"
    model = FashionClassifier(num_classes=11)
    if path.is_file():
        tensors, meta = load_release(path)
        model.load_state_dict(tensors)
        return model.eval(), meta
    from ..data import DataConfig, build_dataset

    cfg = DataConfig(name="fashion_mnist", channels=1, image_size=32)
    tr, te = build_dataset(cfg, "train"), build_dataset(cfg, "test")
    train_x, train_y = tr.images_tensor(), tr.labels_tensor()
    base, _ = load_or_train_fashion_classifier(train_x, train_y, te.images_tensor(), te.labels_tensor(), log=log)
    log(f"training the scorer (11 classes: 10 + {NONE_LABEL!r}) once (cached at {path})")
    model = train_scorer(base, train_x, train_y, log=log)
    meta = {"kind": "classifier", "recipe": SCORER_RECIPE, "none_label": NONE_LABEL,
            **scorer_figures(model, te.images_tensor(), te.labels_tensor())}
    save_release(path, model.state_dict(), meta)
    return model, meta
