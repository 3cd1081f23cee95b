"""A small Fashion-MNIST classifier, trained in-project once and cached.

It scores generated samples (share classified as their conditioning class) and its
penultimate features serve as the domain feature extractor (``FD-fmnist``, never "FID").
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..weights import load_release, save_release

# Short training favours no translation augmentation (flips only); bf16 autocast is ~1.5x faster
# on CPUs with AMX / AVX512-BF16 and costs no accuracy here. Changing the recipe changes the cache key.
RECIPE = {"arch": "cnn3-32-64-128-fc256-crop28", "epochs": 5, "batch_size": 128, "lr": 3e-3, "seed": 0, "shift": 0,
          "label_smoothing": 0.0, "precision": "bf16"}


def cache_dir() -> Path:
    root = os.environ.get("LDMKIT_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"), "ldmkit")
    return Path(root) / "classifiers"


class FashionClassifier(nn.Module):
    """(B, 1 or 3, H, W) in [-1, 1], resized to 32x32 -> logits (B, 10); ``features`` is the 256-d penultimate layer."""

    def __init__(self, num_classes: int = 10):
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                                 nn.ReLU(inplace=True), nn.MaxPool2d(2))

        self.body = nn.Sequential(block(1, 32), block(32, 64), block(64, 128))  # 28 -> 14 -> 7 -> 3
        self.fc = nn.Sequential(nn.Flatten(), nn.Dropout(0.3), nn.Linear(128 * 9, 256), nn.ReLU(inplace=True))
        self.head = nn.Linear(256, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 3:  # samples decoded as RGB: the classifier sees grayscale
            x = x.mean(dim=1, keepdim=True)
        if x.shape[-1] != 32:
            x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
        # the 2-pixel border is padding (Fashion-MNIST is 28x28): cropping it saves a quarter of the compute
        return self.fc(self.body(x[..., 2:30, 2:30]))  # (B, 256)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # (B, 10)


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 500) -> float:
    model.eval()
    correct = sum(int((model(images[i:i + batch_size]).argmax(1) == labels[i:i + batch_size]).sum())
                  for i in range(0, len(images), batch_size))
    return correct / len(images)


def _augment(x: torch.Tensor, gen: torch.Generator, max_shift: int) -> torch.Tensor:
    """Random translation by up to ``max_shift`` pixels (background -1) and random horizontal flip."""
    b = x.shape[0]
    if max_shift:
        pad = F.pad(x, (max_shift,) * 4, value=-1.0)
        dx, dy = torch.randint(0, 2 * max_shift + 1, (2,), generator=gen).tolist()
        x = pad[..., dy:dy + x.shape[-2], dx:dx + x.shape[-1]]
    flip = torch.rand(b, generator=gen) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def train_step(model: nn.Module, opt, sched, x: torch.Tensor, y: torch.Tensor, bf16: bool,
               label_smoothing: float = 0.0) -> torch.Tensor:
    """One cross-entropy step (forward in bf16 autocast when asked, loss in float32); returns the loss."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = model(x)
    loss = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()
    return loss


def train_classifier(train_x: torch.Tensor, train_y: torch.Tensor, recipe: dict | None = None,
                     log=print) -> FashionClassifier:
    recipe = recipe or RECIPE
    torch.manual_seed(recipe["seed"])
    gen = torch.Generator().manual_seed(recipe["seed"])
    model = FashionClassifier()
    steps_per_epoch = len(train_x) // recipe["batch_size"]
    total = recipe["epochs"] * steps_per_epoch
    opt = torch.optim.AdamW(model.parameters(), lr=recipe["lr"], weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe["lr"], total_steps=total)
    t0 = time.perf_counter()
    for epoch in range(recipe["epochs"]):
        model.train()
        order = torch.randperm(len(train_x), generator=gen)
        for i in range(steps_per_epoch):
            idx = order[i * recipe["batch_size"]:(i + 1) * recipe["batch_size"]]
            loss = train_step(model, opt, sched, _augment(train_x[idx], gen, recipe["shift"]), train_y[idx],
                              recipe["precision"] == "bf16", recipe["label_smoothing"])
        log(f"classifier epoch {epoch + 1}/{recipe['epochs']}: loss {float(loss.detach()):.3f} ({time.perf_counter() - t0:.0f} s)")
    return model.eval()


def load_or_train_fashion_classifier(train_x: torch.Tensor | None = None, train_y: torch.Tensor | None = None,
                                     test_x: torch.Tensor | None = None, test_y: torch.Tensor | None = None,
                                     log=print) -> tuple[FashionClassifier, dict]:
    """The cached classifier (keyed by its recipe), training it first when absent.

    Returns the model and its metadata (``test_accuracy`` on the real test set: the ceiling
    against which sample accuracy is read).
    """
    key = hashlib.sha256(json.dumps(RECIPE, sort_keys=True).encode()).hexdigest()[:12]
    path = cache_dir() / f"fashion-mnist-{key}.safetensors"
    model = FashionClassifier()
    if path.is_file():
        tensors, meta = load_release(path)
        model.load_state_dict(tensors)
        return model.eval(), meta
    if train_x is None or test_x is None:
        from ..data import DataConfig, build_dataset

        cfg = DataConfig(name="fashion_mnist", channels=1, image_size=32)
        tr, te = build_dataset(cfg, "train"), build_dataset(cfg, "test")
        train_x, train_y, test_x, test_y = tr.images_tensor(), tr.labels_tensor(), te.images_tensor(), te.labels_tensor()
    log(f"training the Fashion-MNIST classifier once (cached at {path})")
    model = train_classifier(train_x, train_y, log=log)
    meta = {"kind": "classifier", "recipe": RECIPE, "test_accuracy": accuracy(model, test_x, test_y)}
    save_release(path, model.state_dict(), meta)
    return model, meta
