"""Layout-to-image conditioning: bounding boxes -> token sequence -> transformer -> cross-attention context.

As the original layout2img model (taming's ObjectsBoundingBoxConditionalBuilder + a BERTEmbedder without
tokenizer), each object becomes three tokens: its class, its top-left corner and its bottom-right corner, with
corners quantised on a ``coord_bins`` x ``coord_bins`` grid. Unlike the original, where every token shares one
range, the token ids here are laid out in disjoint ranges so no class can be mistaken for a position:

    [0, bins^2)                         corner at grid cell (ix, iy) -> iy * bins + ix
    [bins^2, bins^2 + num_classes + 1)  class id c in 0..num_classes (0 = background, data ids are 1-based)
    bins^2 + num_classes + 1            start token, always first and never masked
    bins^2 + num_classes + 2            padding (objects absent from a layout), masked as attention keys

``tokens="object"`` (GLIGEN-style, not in the original) instead gives each object ONE token: its class embedding
plus a fixed code of its box (``sincos_2d`` of the centre and of the size). With three tokens the UNet must learn
two things at once before either pays (the encoder moving a class into its corner tokens, and queries matching
corner positions); on shapes it learned neither: moving every box left the loss unchanged (docs/results.md). One
token holds the class as its value and the box in its key, so matching a query's position to it pays at once.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ldmkit.nn.conditioner_base import Conditioner
from ldmkit.nn.embeddings import sincos_2d
from ldmkit.nn.text import TextTransformer


def corner_sincos(bins: int, dim: int) -> Tensor:
    """(bins^2, dim) fixed code of grid cell iy * bins + ix (grid lines spread over [0, 1]): ``sincos_2d``."""
    pos = torch.arange(bins, dtype=torch.float32) / max(1, bins - 1)  # grid line -> [0, 1]
    y, x = torch.meshgrid(pos, pos, indexing="ij")  # (bins, bins): row iy, column ix
    return sincos_2d(x.reshape(-1), y.reshape(-1), dim)


class LayoutConditioner(Conditioner):
    """Boxes (B, N, 5) rows [class_id, x0, y0, x1, y1] in [0, 1], rows with class_id < 0 = padding (the data's
    -1 rows), N <= max_objects -> context (B, 1 + 3 * max_objects, embed_dim).

    The start token keeps a fully padded layout (the null input) well defined: it is the one key every query
    can attend to, so the output stays finite.
    """

    input_key = "boxes"

    def __init__(self, num_classes: int, coord_bins: int = 16, max_objects: int = 2, embed_dim: int = 64,
                 n_layer: int = 2, n_head: int = 4, coord_embedding: str = "learned", tokens: str = "triple"):
        super().__init__()
        if tokens not in ("triple", "object"):
            raise ValueError(f"LayoutConditioner: tokens must be triple or object, got {tokens!r}")
        self.token_mode = tokens
        self.num_classes = num_classes
        self.coord_bins = coord_bins
        self.max_objects = max_objects
        self.embed_dim = embed_dim
        self.class_offset = coord_bins * coord_bins
        self.start_token = self.class_offset + num_classes + 1
        self.pad_token = self.start_token + 1
        self.seq_len = 1 + (3 if tokens == "triple" else 1) * max_objects
        # The same embedding + positions + encoder + final norm as text: one implementation of both.
        self.transformer = TextTransformer(self.pad_token + 1, self.seq_len, embed_dim, n_layer, n_head)
        # "sincos": each corner token also gets a fixed 2-D sinusoidal code of its (x, y), so neighbouring cells
        # start out similar instead of each of the bins^2 tokens being learned alone. On shapes (1,800 steps) it
        # did not change the layout IoU (0.118 vs 0.117): the small UNet's lack of position information limits it.
        if coord_embedding not in ("learned", "sincos"):
            raise ValueError(f"LayoutConditioner: coord_embedding must be learned or sincos, got {coord_embedding!r}")
        self.coord_embedding = coord_embedding
        self.register_buffer("corner_code", corner_sincos(coord_bins, embed_dim), persistent=False)

    def corner_token(self, x: Tensor, y: Tensor) -> Tensor:
        """Quantise normalised (x, y) to the nearest of coord_bins grid lines per axis: iy * bins + ix."""
        ix = torch.round(x.clamp(0, 1) * (self.coord_bins - 1)).long()
        iy = torch.round(y.clamp(0, 1) * (self.coord_bins - 1)).long()
        return iy * self.coord_bins + ix

    def pad(self, boxes: Tensor) -> Tensor:
        """(B, N, 5) with N <= max_objects -> (B, max_objects, 5), extra rows -1."""
        if boxes.dim() != 3 or boxes.shape[-1] != 5:
            raise ValueError(f"LayoutConditioner: boxes must be (B, N, 5), got {tuple(boxes.shape)}")
        b, n, _ = boxes.shape
        if n > self.max_objects:
            raise ValueError(f"LayoutConditioner: {n} objects per layout, more than max_objects {self.max_objects}")
        if n == self.max_objects:
            return boxes
        return torch.cat([boxes, boxes.new_full((b, self.max_objects - n, 5), -1.0)], dim=1)

    def tokens(self, boxes: Tensor) -> tuple[Tensor, Tensor]:
        """(ids (B, 1 + 3 * max_objects) long, mask (B, same) bool: True at the start token and real objects)."""
        boxes = self.pad(boxes)
        b = boxes.shape[0]
        cls = torch.round(boxes[..., 0]).long()  # (B, M)
        valid = cls >= 0
        if bool((cls[valid] > self.num_classes).any()):
            raise ValueError(f"LayoutConditioner: class ids must be <= num_classes {self.num_classes}, "
                             f"got {int(cls[valid].max())}")
        start = torch.full((b, 1), self.start_token, dtype=torch.long, device=boxes.device)
        start_mask = torch.ones_like(start, dtype=torch.bool)
        if self.token_mode == "object":
            ids = torch.where(valid, self.class_offset + cls, torch.full_like(cls, self.pad_token))  # (B, M)
            return torch.cat([start, ids], dim=1), torch.cat([start_mask, valid], dim=1)  # (B, 1 + M)
        tl = self.corner_token(boxes[..., 1], boxes[..., 2])  # (B, M)
        br = self.corner_token(boxes[..., 3], boxes[..., 4])
        triples = torch.stack([self.class_offset + cls, tl, br], dim=-1)  # (B, M, 3)
        triples = torch.where(valid[..., None], triples, torch.full_like(triples, self.pad_token))
        ids = torch.cat([start, triples.reshape(b, -1)], dim=1)  # (B, 1 + 3M)
        mask = torch.cat([start_mask, valid.repeat_interleave(3, dim=1)], dim=1)
        return ids, mask

    def box_code(self, boxes: Tensor) -> Tensor:
        """(B, M, 5) padded boxes -> (B, M, embed_dim): sincos_2d of the centre (first half) and size (second)."""
        x0, y0, x1, y1 = boxes[..., 1:].clamp(0, 1).unbind(-1)  # (B, M) each
        half = self.embed_dim // 2
        centre = sincos_2d((x0 + x1) / 2, (y0 + y1) / 2, half, self.BOX_FREQS)
        size = sincos_2d(x1 - x0, y1 - y0, self.embed_dim - half, self.BOX_FREQS)
        return torch.cat([centre, size], dim=-1)

    BOX_FREQS = 8  # as the UNet's attention positions (SpatialTransformer.POSITION_FREQS)

    def forward(self, boxes: Tensor) -> Tensor:
        ids, mask = self.tokens(boxes)
        extra = None
        if self.token_mode == "object":
            boxes = self.pad(boxes)
            valid = (torch.round(boxes[..., 0]) >= 0)[..., None]  # (B, M, 1)
            code = torch.where(valid, self.box_code(boxes), 0.0)  # (B, M, D)
            extra = torch.cat([code.new_zeros(code.shape[0], 1, code.shape[-1]), code], dim=1)  # (B, 1 + M, D)
        elif self.coord_embedding == "sincos":
            is_corner = ids < self.class_offset  # (B, T)
            extra = torch.where(is_corner[..., None], self.corner_code[ids.clamp(max=self.class_offset - 1)], 0.0)
        return self.transformer(ids, mask, extra)  # (B, seq_len, embed_dim)

    def null(self, n: int, device: torch.device | str | None = None) -> Tensor:
        """An empty layout: (n, max_objects, 5) rows of -1."""
        return torch.full((n, self.max_objects, 5), -1.0, device=device)

    def drop(self, boxes: Tensor, p: float, generator: torch.Generator | list[torch.Generator] | None = None) -> Tensor:
        """Conditioner.drop on the layout padded to max_objects (so it has the null layout's shape)."""
        return super().drop(self.pad(boxes), p, generator)
