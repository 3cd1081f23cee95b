"""Batching of dict items: tensors are stacked, strings (captions) stay Python lists."""
from __future__ import annotations

from typing import Any, Sequence

import torch


def collate(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``[{"image": t, "caption": s}, ...]`` -> ``{"image": stacked, "caption": [s, ...]}``.

    Text stays a list because the text encoder tokenises whole batches itself; Python
    numbers become tensors. Every item must have the same keys, or the batch would
    silently lose conditioning.
    """
    if not items:
        raise ValueError("collate: empty batch")
    keys = list(items[0])
    batch: dict[str, Any] = {}
    for key in keys:
        try:
            values = [item[key] for item in items]
        except KeyError:
            raise ValueError(f"collate: key {key!r} missing from some items") from None
        first = values[0]
        if isinstance(first, torch.Tensor):
            batch[key] = torch.stack(values)
        elif isinstance(first, (bool, int, float)):
            batch[key] = torch.tensor(values)
        else:
            batch[key] = list(values)
    extra = {k for item in items for k in item} - set(keys)
    if extra:
        raise ValueError(f"collate: keys {sorted(extra)} present in only some items")
    return batch
