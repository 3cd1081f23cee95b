"""DreamBooth prior preservation (Ruiz et al. 2023): fine-tune on a few instance images while a second loss on the
model's own images of the class ("a photo of a dog") keeps it from forgetting what the class looks like.

The class images are generated once by the released model before training (``generate_class_images``, resumable);
training then draws instance and class items in equal shares (``PriorPairs``) and weighs their losses as the paper
and diffusers do: mean instance loss + ``prior_weight`` x mean class loss (``prior_loss``).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..imageio import save_png
from ..weights import atomic_write


class PriorPairs(Dataset):
    """Item 2k is instance item k (mod its length), item 2k + 1 class item k (mod its length), each with a
    ``prior`` flag; a shuffled stream over it draws the two halves in equal shares whatever their sizes."""

    def __init__(self, instance: Dataset, prior: Dataset):
        self.instance, self.prior = instance, prior
        self.class_names = getattr(instance, "class_names", [])

    def __len__(self) -> int:
        return 2 * max(len(self.instance), len(self.prior))

    def __getitem__(self, i: int) -> dict:
        k, is_prior = divmod(i, 2)
        source = self.prior if is_prior else self.instance
        return source[k % len(source)] | {"prior": bool(is_prior)}


def prior_loss(loss_per: Tensor, is_prior: Tensor, weight: float) -> Tensor:
    """Mean loss of the instance samples + ``weight`` x mean loss of the class samples (a half that is absent
    from this batch adds nothing). loss_per: (B,), is_prior: (B,) bool."""
    is_prior = is_prior.to(loss_per.device)
    total = loss_per.new_zeros(())
    if (~is_prior).any():
        total = total + loss_per[~is_prior].mean()
    if is_prior.any():
        total = total + weight * loss_per[is_prior].mean()
    return total


@torch.no_grad()
def generate_class_images(pipe, prompt: str, n: int, folder: Path, *, steps: int = 25, guidance: float = 7.5,
                          seed: int = 0, batch_size: int = 4, log=print) -> Path:
    """``n`` images of ``prompt`` from ``pipe`` in ``folder`` (class_NNNNN.png, seed ``seed + k``, captions in
    metadata.jsonl). Images already there are kept, so an interrupted run resumes where it stopped."""
    if not prompt.strip():
        raise ValueError("--class-prompt: expected the class's caption (e.g. 'a photo of a dog'), got nothing")
    if pipe.input_key != "caption":
        raise ValueError(f"--class-prompt: prior preservation needs a text-conditioned checkpoint (this one is "
                         f"conditioned on {pipe.input_key or 'nothing'})")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"class_{k:05d}.png" for k in range(n)]
    todo = [k for k, name in enumerate(names) if not (folder / name).is_file()]
    for start in range(0, len(todo), batch_size):
        chunk = todo[start:start + batch_size]
        images = pipe(prompt=[prompt] * len(chunk), seeds=[seed + k for k in chunk], num_inference_steps=steps,
                      guidance_scale=guidance, output_type="pt")
        for k, image in zip(chunk, images):
            save_png(image, folder / names[k], {"prompt": prompt, "seed": seed + k})
        log(f"class images: {n - len(todo) + start + len(chunk)}/{n} in {folder}")
    rows = "".join(json.dumps({"file_name": name, "text": prompt}) + "\n" for name in names)
    atomic_write(folder / "metadata.jsonl", lambda tmp: Path(tmp).write_text(rows))
    return folder
