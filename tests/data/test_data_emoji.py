"""Emoji: exact compositing on white, captions for skin tones, name-hash split, root lookup."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from ldmkit.data import DataConfig, DataError, DataNotFoundError, Emoji, build_dataset, collate
from ldmkit.data.emoji import is_test_name, tone_caption


def _name(prefix: str, test: bool) -> str:
    """An upper-case emoji name whose lower-case form falls in the wanted split."""
    return next(f"{prefix} {i}".upper() for i in range(10000) if is_test_name(f"{prefix} {i}") == test)


TRAIN_NAME, TEST_NAME = _name("train emoji", False), _name("test emoji", True)


def make_package(root, rows, images):
    """Write ``root/package`` with emoji.json = rows and 64x64 RGBA PNGs {file: array}."""
    pkg = root / "package"
    (pkg / "img" / "google" / "64").mkdir(parents=True)
    (pkg / "emoji.json").write_text(json.dumps(rows))
    for name, arr in images.items():
        Image.fromarray(arr, "RGBA").save(pkg / "img" / "google" / "64" / name)
    return pkg


def rgba(colour, alpha=255):
    arr = np.zeros((64, 64, 4), dtype=np.uint8)
    arr[...] = (*colour, alpha)
    return arr


@pytest.fixture
def package(tmp_path, monkeypatch):
    """3 PNGs: a train emoji with one light-skin variant, and a test emoji; plus an entry without image."""
    monkeypatch.delenv("LDMKIT_EMOJI", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))
    first = rgba((10, 20, 30))
    first[0, 0] = (0, 0, 0, 128)  # half-transparent black
    first[0, 1] = (255, 0, 0, 0)  # fully transparent, colour must not leak
    rows = [
        {"name": TRAIN_NAME, "category": "Smileys & Emotion", "image": "a.png", "has_img_google": True,
         "skin_variations": {"1F3FB": {"image": "a-1f3fb.png", "has_img_google": True},
                             "1F3FF": {"image": "gone.png", "has_img_google": False}}},
        {"name": TEST_NAME, "category": "Animals & Nature", "image": "b.png"},
        {"name": "NO GOOGLE IMAGE", "category": "Flags", "image": "c.png", "has_img_google": False},
    ]
    images = {"a.png": first, "a-1f3fb.png": rgba((200, 150, 100)), "b.png": rgba((0, 255, 0), 0)}
    return make_package(tmp_path, rows, images)


def test_compositing_on_white_is_exact(package):
    ds = Emoji(DataConfig(name="emoji", root=str(package), image_size=64))
    x = ds[0]["image"]
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32
    # out = c * a + 255 * (1 - a), a = 128 / 255, then [0, 255] -> [-1, 1]
    expected = 255.0 * (1 - 128 / 255) / 127.5 - 1.0
    assert torch.allclose(x[:, 0, 0], torch.full((3,), expected), atol=1e-6)
    assert torch.equal(x[:, 0, 1], torch.ones(3))  # transparent -> white, not red
    assert torch.allclose(x[:, 5, 5], torch.tensor([10.0, 20.0, 30.0]) / 127.5 - 1, atol=1e-6)
    grey = Emoji(DataConfig(name="emoji", root=str(package), image_size=64, channels=1))[0]["image"]
    luma = (0.299 * 10 + 0.587 * 20 + 0.114 * 30) / 127.5 - 1
    assert grey.shape == (1, 64, 64) and abs(grey[0, 5, 5].item() - luma) < 1e-5


def test_downsizing_averages_blocks(package):
    x = Emoji(DataConfig(name="emoji", root=str(package), image_size=32))[0]["image"]
    assert x.shape == (3, 32, 32)
    # top-left 2x2 block: half-transparent black, transparent (white), two opaque (10, 20, 30)
    half = 255.0 * (1 - 128 / 255)
    expected = (torch.tensor([half, half, half]) + 255 + 2 * torch.tensor([10.0, 20.0, 30.0])) / 4
    assert torch.allclose(x[:, 0, 0], expected / 127.5 - 1, atol=1e-5)


def test_captions_labels_and_missing_images(package):
    train = Emoji(DataConfig(name="emoji", root=str(package)))
    assert train.captions == [TRAIN_NAME.lower(), f"{TRAIN_NAME.lower()}, light skin tone"]
    assert train.class_names == ["Animals & Nature", "Flags", "Smileys & Emotion"]  # all categories, sorted
    assert train.labels_tensor().tolist() == [2, 2]
    assert train[1]["caption"] == train.captions[1] and train[1]["label"].item() == 2
    assert tone_caption("handshake", "1F3FB-1F3FF") == "handshake, light skin tone, dark skin tone"
    assert tone_caption("kiss", "1F3FD-1F3FD") == "kiss, medium skin tone"
    batch = collate([train[0], train[1]])
    assert batch["image"].shape == (2, 3, 32, 32) and batch["caption"] == train.captions


def test_split_by_base_name(package, tmp_path):
    train = build_dataset(DataConfig(name="emoji", root=str(package)), "train")
    test = build_dataset(DataConfig(name="emoji", root=str(package)), "test")
    assert isinstance(train, Emoji) and len(train) == 2 and len(test) == 1
    assert test.captions == [TEST_NAME.lower()] and test.labels_tensor().tolist() == [0]
    assert test[0]["image"].eq(1.0).all()  # fully transparent green -> white
    # variants of a held-out emoji are held out with it
    rows = [{"name": TEST_NAME, "category": "People", "image": "t.png",
             "skin_variations": {"1F3FC": {"image": "t2.png"}}},
            {"name": TRAIN_NAME, "category": "People", "image": "u.png"}]
    pkg = make_package(tmp_path / "two", rows, {n: rgba((1, 2, 3)) for n in ("t.png", "t2.png", "u.png")})
    assert Emoji(DataConfig(name="emoji", root=str(pkg)), "test").captions == \
        [TEST_NAME.lower(), f"{TEST_NAME.lower()}, medium-light skin tone"]
    # the hash split holds out about 5% of names
    share = np.mean([is_test_name(f"name {i}") for i in range(4000)])
    assert 0.035 < share < 0.065


def test_images_tensor_is_memoised_and_matches_items(package):
    ds = Emoji(DataConfig(name="emoji", root=str(package), image_size=16))
    items = torch.stack([ds[i]["image"] for i in range(len(ds))])
    x = ds.images_tensor()
    assert x.shape == (2, 3, 16, 16) and x is ds.images_tensor()
    assert torch.equal(x, items) and torch.equal(ds[1]["image"], items[1])
    with pytest.raises(IndexError):
        ds[2]


def test_root_lookup_order_and_missing_message(package, tmp_path, monkeypatch):
    # the folder holding package/ works as a root, and so does $LDMKIT_EMOJI
    assert len(Emoji(DataConfig(name="emoji", root=str(package.parent)))) == 2
    monkeypatch.setenv("LDMKIT_EMOJI", str(package))
    assert len(Emoji(DataConfig(name="emoji"))) == 2
    monkeypatch.delenv("LDMKIT_EMOJI")
    with pytest.raises(DataNotFoundError) as err:
        Emoji(DataConfig(name="emoji", root=str(tmp_path / "nowhere")))
    msg = str(err.value)
    assert "\n" not in msg and "make data-emoji" in msg and "nowhere" in msg and "empty-cache" in msg
    assert isinstance(err.value, FileNotFoundError)


def test_bad_table_is_a_data_error(tmp_path, monkeypatch):
    monkeypatch.delenv("LDMKIT_EMOJI", raising=False)
    pkg = make_package(tmp_path, [{"category": "x"}], {})
    with pytest.raises(DataError, match="emoji.json: entry without name"):
        Emoji(DataConfig(name="emoji", root=str(pkg)))
