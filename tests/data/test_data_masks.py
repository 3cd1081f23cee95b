"""Inpainting masks: seeded, binary, coverage inside [min, max]; the MaskedDataset wrapper."""
import numpy as np
import pytest
import torch

from ldmkit.config import ConfigError
from ldmkit.data import DataConfig, MaskedDataset, Shapes, collate, generate_mask


@pytest.mark.parametrize("kind", ["large", "box", "stroke"])
def test_seeded_binary_and_shaped(kind):
    a = generate_mask(32, 7, kind)
    b = generate_mask(32, np.random.default_rng(7), kind)
    assert a.dtype == np.float32 and a.shape == (32, 32)
    assert np.array_equal(a, b)  # an int seed and a Generator with that seed agree
    assert set(np.unique(a)) <= {0.0, 1.0}
    assert not all(np.array_equal(a, generate_mask(32, s, kind)) for s in range(8, 12))
    assert generate_mask((20, 36), 1, kind).shape == (20, 36)


@pytest.mark.parametrize("kind", ["large", "box", "stroke"])
@pytest.mark.parametrize("lo,hi", [(0.1, 0.5), (0.3, 0.35), (0.0, 0.05)])
def test_coverage_within_bounds(kind, lo, hi):
    n = 24 * 32  # compare whole pixels: a float32 mean can round past the bound
    pixels = np.array([generate_mask((24, 32), s, kind, max_coverage=hi, min_coverage=lo).sum()
                       for s in range(25)])
    assert (pixels >= np.ceil(lo * n)).all() and (pixels <= np.floor(hi * n)).all()
    cover = pixels / n
    assert np.ptp(cover) > 0  # coverage varies with the seed


def test_box_masks_are_unions_of_boxes_and_strokes_are_not():
    # Boxes have vertical left edges, so their rows start at a few columns; slanted strokes at many.
    def distinct_row_starts(m):
        starts = {int(np.argmax(r)) for r in m if r.any()}
        return len(starts)
    box_starts = [distinct_row_starts(generate_mask(64, s, "box", 0.2, 0.1)) for s in range(10)]
    stroke_starts = [distinct_row_starts(generate_mask(64, s, "stroke", 0.5, 0.3)) for s in range(10)]
    assert np.mean(stroke_starts) > 2 * np.mean(box_starts)


def test_bad_arguments_are_config_errors():
    with pytest.raises(ConfigError, match="kind: expected one of large, box, stroke"):
        generate_mask(16, 0, "circle")
    with pytest.raises(ConfigError, match="max_coverage"):
        generate_mask(16, 0, max_coverage=0.2, min_coverage=0.4)
    with pytest.raises(ConfigError, match="mask_kind"):
        MaskedDataset([], "blob")


def test_masked_dataset_fields():
    base = Shapes(DataConfig(image_size=16, shapes_size=6))
    ds = MaskedDataset(base, "large", seed=3)
    assert len(ds) == 6 and ds.class_names == base.class_names
    item = ds[2]
    image, mask, masked = base[2]["image"], item["mask"], item["masked_image"]
    assert mask.shape == (1, 16, 16) and masked.shape == image.shape
    assert torch.equal(item["image"], image) and item["caption"] == base[2]["caption"]
    assert torch.equal(masked[:, mask[0] == 1], torch.zeros_like(masked[:, mask[0] == 1]))  # mid-grey
    assert torch.equal(masked[:, mask[0] == 0], image[:, mask[0] == 0])
    assert 0.1 <= mask.mean() <= 0.5
    # per-index deterministic: a fresh wrapper, another order, a negative index agree
    again = MaskedDataset(base, "large", seed=3)
    assert torch.equal(again[2]["mask"], mask) and torch.equal(ds[-4]["mask"], mask)
    assert not torch.equal(ds[3]["mask"], mask)
    assert not torch.equal(MaskedDataset(base, "large", seed=4)[2]["mask"], mask)
    batch = collate([ds[0], ds[1]])
    assert batch["mask"].shape == (2, 1, 16, 16) and batch["masked_image"].shape == (2, 3, 16, 16)
