"""Procedural shapes: determinism, order independence, boxes/segmentation/caption consistency."""
import numpy as np
import pytest
import torch

from ldmkit.data import PALETTE, SHAPES, DataConfig, ShapeObject, Shapes, build_dataset, describe


def items_equal(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k] for k in a)


def test_same_seed_identical_different_seed_differs():
    a = Shapes(DataConfig(seed=3, shapes_size=20))
    b = Shapes(DataConfig(seed=3, shapes_size=20))
    c = Shapes(DataConfig(seed=4, shapes_size=20))
    assert all(items_equal(a[i], b[i]) for i in range(10))
    assert not all(torch.equal(a[i]["image"], c[i]["image"]) for i in range(10))


def test_items_independent_of_access_order_and_splits_differ():
    cfg = DataConfig(shapes_size=30, max_objects=3)
    forward = [Shapes(cfg)[i] for i in range(8)]
    ds = Shapes(cfg)
    backward = [ds[i] for i in reversed(range(8))][::-1]
    assert all(items_equal(f, b) for f, b in zip(forward, backward))
    test = Shapes(cfg, "test")
    assert len(ds) == 30 and len(test) == 3
    assert not torch.equal(ds[0]["image"], test[0]["image"])
    with pytest.raises(IndexError):
        ds[30]


@pytest.mark.parametrize("size,max_objects", [(32, 2), (24, 3), (64, 1)])
def test_boxes_segmentation_label_caption_consistent(size, max_objects):
    ds = Shapes(DataConfig(image_size=size, max_objects=max_objects, shapes_size=40, seed=1))
    counts = set()
    for i in range(40):
        item = ds[i]
        boxes, seg = item["boxes"], item["segmentation"]
        assert item["image"].shape == (3, size, size) and item["image"].dtype == torch.float32
        assert item["image"].min() >= -1 and item["image"].max() <= 1
        assert boxes.shape == (max_objects, 5) and seg.shape == (size, size) and seg.dtype == torch.int64
        valid = boxes[boxes[:, 0] >= 0]
        assert (boxes[boxes[:, 0] < 0] == -1).all()
        assert 1 <= len(valid) <= max_objects
        counts.add(len(valid))
        coords = valid[:, 1:]
        assert (coords >= 0).all() and (coords <= 1).all()
        assert ((coords[:, 2] - coords[:, 0]) >= 0.25 - 1e-6).all()
        assert item["label"].item() == int(valid[0, 0]) - 1
        assert set(seg.unique().tolist()) - {0} <= set(valid[:, 0].long().tolist())
        ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        claimed = torch.zeros(size, size, dtype=torch.bool)
        for cid, x0, y0, x1, y1 in valid.tolist():
            inside = ((xs + 0.5) / size > x0) & ((xs + 0.5) / size < x1) & \
                     ((ys + 0.5) / size > y0) & ((ys + 0.5) / size < y1)
            assert not (inside & claimed).any(), "boxes overlap"
            claimed |= inside
            pixels = seg == int(cid)
            assert pixels.any(), "every object is visible in the map"
        for cid in set(valid[:, 0].long().tolist()):  # a class may repeat: any of its boxes
            in_some = torch.zeros(size, size, dtype=torch.bool)
            for c, x0, y0, x1, y1 in valid.tolist():
                if int(c) == cid:
                    in_some |= ((xs + 0.5) / size > x0) & ((xs + 0.5) / size < x1) & \
                               ((ys + 0.5) / size > y0) & ((ys + 0.5) / size < y1)
            assert not ((seg == cid) & ~in_some).any()
        assert item["caption"] == describe(ds.objects(i))
    if max_objects > 1:
        assert len(counts) > 1


def test_square_centre_has_exact_palette_colour():
    ds = Shapes(DataConfig(image_size=32, shapes_size=50, max_objects=1))
    for i in range(50):
        obj = ds.objects(i)[0]
        if obj.shape == "square":
            x0, y0, x1, y1 = (int(round(v * 32)) for v in obj.box)
            rgb = ((ds[i]["image"][:, (y0 + y1) // 2, (x0 + x1) // 2] + 1) * 127.5).round()
            assert rgb.tolist() == list(PALETTE[obj.colour])
            return
    pytest.fail("no square in 50 images")


def test_class_space_and_grayscale():
    ds = build_dataset(DataConfig(channels=1, shapes_size=5), "train")
    assert ds.num_classes == 3 * len(PALETTE) == len(ds.class_names) and len(SHAPES) == 3
    assert ds[0]["image"].shape == (1, 32, 32)
    assert {"red", "green", "blue", "yellow", "purple", "orange"} <= set(PALETTE)
    assert len(set(PALETTE.values())) == len(PALETTE)


def test_describe_relations():
    def obj(colour, shape, cx, cy):
        return ShapeObject(shape, colour, (cx - 0.1, cy - 0.1, cx + 0.1, cy + 0.1))

    red, blue = obj("red", "circle", 0.2, 0.5), obj("blue", "square", 0.8, 0.45)
    assert describe([red]) == "a red circle"
    assert describe([red, blue]) == "a red circle left of a blue square"
    assert describe([blue, red]) == "a blue square right of a red circle"
    top, bottom = obj("orange", "triangle", 0.5, 0.1), obj("green", "circle", 0.45, 0.9)
    assert describe([top, bottom]) == "an orange triangle above a green circle"
    assert describe([bottom, top]) == "a green circle below an orange triangle"
    assert np.isclose(red.box[2] - red.box[0], 0.2)
