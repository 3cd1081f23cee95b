"""Photo crops: range, determinism, split by source photo, and the missing-scikit-image message."""
import importlib.util
import sys

import numpy as np
import pytest
import torch

from ldmkit.data import DataConfig, DataError, Photos, build_dataset
from ldmkit.data import photos as photos_mod


@pytest.fixture
def no_skimage(monkeypatch):
    photos_mod.load_source.cache_clear()
    photos_mod.source_image.cache_clear()
    monkeypatch.setitem(sys.modules, "skimage", None)  # makes `import skimage.data` raise ImportError
    monkeypatch.setitem(sys.modules, "skimage.data", None)
    yield
    photos_mod.load_source.cache_clear()
    photos_mod.source_image.cache_clear()


def test_missing_skimage_names_the_fix(no_skimage):
    with pytest.raises(DataError, match="pip install scikit-image"):
        Photos(DataConfig(name="photos"))


# Module-level importorskip would also skip the test above, which needs no scikit-image.
needs_skimage = pytest.mark.skipif(importlib.util.find_spec("skimage") is None,
                                   reason="scikit-image not installed")


@needs_skimage
@pytest.mark.parametrize("channels", [1, 3])
def test_crops_in_range_and_lengths(channels):
    cfg = DataConfig(name="photos", image_size=16, channels=channels, shapes_size=30)
    train, test = build_dataset(cfg, "train"), build_dataset(cfg, "test")
    assert isinstance(train, Photos) and len(train) == 30 and len(test) == 3
    for i in range(12):
        x = train[i]["image"]
        assert x.shape == (channels, 16, 16) and x.dtype == torch.float32
        assert x.min() >= -1 and x.max() <= 1 and x.std() > 0  # a real patch, not a constant
        _, (left, top, right, bottom), _ = train._params(i)
        w, h = photos_mod.source_image(train.source(i), channels).size
        assert 0 <= left and 0 <= top and right <= w and bottom <= h
        assert right - left == bottom - top and 16 <= right - left <= 64
    with pytest.raises(IndexError):
        train[30]


@needs_skimage
def test_deterministic_per_seed_split_index():
    cfg = DataConfig(name="photos", image_size=16, shapes_size=20, seed=5)
    a, b = Photos(cfg), Photos(cfg)
    backward = [b[i]["image"] for i in reversed(range(6))][::-1]
    assert all(torch.equal(a[i]["image"], x) for i, x in enumerate(backward))
    other = Photos(DataConfig(name="photos", image_size=16, shapes_size=20, seed=6))
    assert not all(torch.equal(a[i]["image"], other[i]["image"]) for i in range(6))


@needs_skimage
def test_split_by_source_photo():
    assert not set(photos_mod.TRAIN_SOURCES) & set(photos_mod.TEST_SOURCES)
    cfg = DataConfig(name="photos", image_size=16, shapes_size=400)
    train, test = Photos(cfg), Photos(cfg, "test")
    train_used = {train.source(i) for i in range(len(train))}
    test_used = {test.source(i) for i in range(len(test))}
    assert train_used <= set(photos_mod.TRAIN_SOURCES) and len(train_used) >= 10
    assert test_used == set(photos_mod.TEST_SOURCES)


@needs_skimage
def test_flip_mirrors_some_train_items_only():
    plain = Photos(DataConfig(name="photos", image_size=16, shapes_size=16))
    flipped = Photos(DataConfig(name="photos", image_size=16, shapes_size=16, flip=True))
    same = [torch.equal(plain[i]["image"], flipped[i]["image"]) for i in range(16)]
    assert any(same) and not all(same)
    for i in np.flatnonzero(~np.array(same)):
        assert torch.equal(plain[int(i)]["image"].flip(-1), flipped[int(i)]["image"])
    test = Photos(DataConfig(name="photos", image_size=16, shapes_size=40, flip=True), "test")
    ref = Photos(DataConfig(name="photos", image_size=16, shapes_size=40), "test")
    assert all(torch.equal(test[i]["image"], ref[i]["image"]) for i in range(4))
