"""Image folder: classes, captions, split, transforms, corrupt files, empty folder."""
import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ldmkit.data import DataConfig, DataError, ImageFolder, build_dataset, collate


def save(path: Path, size=(40, 30), mode="RGB", colour=None, seed=0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if colour is None:
        rng = np.random.default_rng(seed)
        img = Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], len(mode)), dtype=np.uint8).squeeze(),
                              mode=mode)
    else:
        img = Image.new(mode, size, colour)
    img.save(path)
    return path


def cfg(root: Path, **kw) -> DataConfig:
    return DataConfig(name="image_folder", root=str(root), image_size=16, **kw)


def test_class_subfolders_captions_and_split(tmp_path):
    for i in range(6):
        save(tmp_path / "dog" / f"d{i}.png", seed=i)
        save(tmp_path / "cat" / f"c{i}.JPG", seed=10 + i)
    (tmp_path / "cat" / "c1.txt").write_text("a sidecar cat\n")
    rows = [{"file": "cat/c1.JPG", "caption": "loses to the sidecar"},
            {"file": "dog/d2.png", "caption": "a jsonl dog"}]
    (tmp_path / "captions.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    train, test = ImageFolder(cfg(tmp_path), "train"), ImageFolder(cfg(tmp_path), "test")
    assert train.class_names == ["cat", "dog"] and train.num_classes == 2
    assert len(train) == 10 and len(test) == 2 and not set(train.files) & set(test.files)
    assert [p.name for p in test.files] == ["c0.JPG", "d4.png"]  # sorted order, indices 0 and 10
    by_name = {p.name: train[i] for i, p in enumerate(train.files)}
    assert by_name["c1.JPG"]["caption"] == "a sidecar cat"
    assert by_name["d2.png"]["caption"] == "a jsonl dog" and by_name["d3.png"]["caption"] == ""
    assert by_name["c1.JPG"]["label"].item() == 0 and by_name["d3.png"]["label"].item() == 1
    x = by_name["d3.png"]["image"]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and x.min() >= -1 and x.max() <= 1
    batch = collate([train[i] for i in range(4)])
    assert batch["image"].shape == (4, 3, 16, 16) and len(batch["caption"]) == 4
    # test_every: another stride, or none held out (fine-tune's default: every image trains)
    assert [p.name for p in ImageFolder(cfg(tmp_path, test_every=4), "test").files] == ["c0.JPG", "c4.JPG", "d2.png"]
    assert len(ImageFolder(cfg(tmp_path, test_every=0), "train")) == 12
    with pytest.raises(DataError, match="test_every=0 holds none out"):
        ImageFolder(cfg(tmp_path, test_every=0), "test")


def test_flat_folder_modes_and_transparency(tmp_path):
    save(tmp_path / "a.png", size=(20, 60), mode="RGBA", colour=(255, 0, 0, 0))
    save(tmp_path / "sub" / "b.bmp", size=(64, 32), colour=(0, 0, 255))
    save(tmp_path / "c.webp", size=(16, 16), mode="L", colour=128)
    (tmp_path / "notes.txt").write_text("not an image")
    ds = build_dataset(cfg(tmp_path), "test")
    assert ds.num_classes == 0 and ds.class_names == [] and set(ds[0]) == {"image"}
    assert torch.allclose(ds[0]["image"], torch.ones(3, 16, 16))  # transparent -> white
    train = ImageFolder(cfg(tmp_path, channels=1), "train")
    assert [p.name for p in train.files] == ["c.webp", "b.bmp"]
    assert train[0]["image"].shape == (1, 16, 16)


def test_random_flip_uses_generator(tmp_path):
    for i in range(3):
        save(tmp_path / f"{i}.png", seed=i)
    flips = []
    for _ in range(2):
        ds = ImageFolder(cfg(tmp_path, flip=True), "train", generator=torch.Generator().manual_seed(0))
        flips.append(torch.stack([ds[0]["image"] for _ in range(8)]))
    assert torch.equal(flips[0], flips[1])
    plain = ImageFolder(cfg(tmp_path), "train")[0]["image"]
    assert any(torch.equal(f, plain.flip(-1)) for f in flips[0]) and any(torch.equal(f, plain) for f in flips[0])


def corrupt_folder(root: Path) -> None:
    """Sorted: a0_good (test), a1_random, a2_truncated, then good images."""
    save(root / "a0_good.png")
    (root / "a1_random.png").write_bytes(np.random.default_rng(0).bytes(500))
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    (root / "a2_truncated.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    for i in range(4):
        save(root / f"b{i}.png", seed=i)


def test_corrupt_files_skipped_lazily(tmp_path, caplog):
    corrupt_folder(tmp_path)
    ds = ImageFolder(cfg(tmp_path), "train")
    assert len(ds) == 6
    with caplog.at_level(logging.WARNING, logger="ldmkit.data"):
        items = [ds[i] for i in range(len(ds))] + [ds[i] for i in range(len(ds))]
    assert all(it["image"].shape == (3, 16, 16) for it in items)
    assert ds.skipped == 2 and [Path(p).name for p in ds.bad_files] == ["a1_random.png", "a2_truncated.png"]
    assert torch.equal(items[0]["image"], ds[2]["image"])  # replaced by the next readable item
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "a1_random.png" in warnings[0].getMessage()


def test_verify_drops_bad_files_with_one_warning(tmp_path, caplog):
    corrupt_folder(tmp_path)
    ds = ImageFolder(cfg(tmp_path), "train")
    with caplog.at_level(logging.WARNING, logger="ldmkit.data"):
        assert ds.verify() == 2
    assert len(ds) == 4 and ds.skipped == 2
    msgs = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert msgs == [f"skipped 2 unreadable image(s) in {tmp_path} (first: {tmp_path / 'a1_random.png'})"]


def test_all_unreadable_and_empty_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match=f"no images .* found under {empty}$"):
        ImageFolder(cfg(empty))
    bad = tmp_path / "bad"
    bad.mkdir()
    for i in range(3):
        (bad / f"{i}.png").write_bytes(b"not a png")
    ds = ImageFolder(cfg(bad), "train")
    with pytest.raises(DataError, match=f"no readable images in {bad}"):
        ds[0]
    with pytest.raises(DataError, match=f"no readable images in {bad}"):
        ImageFolder(cfg(bad), "train").verify()
    with pytest.raises(DataError, match="not a folder"):
        ImageFolder(cfg(tmp_path / "missing"))
    (tmp_path / "bad_jsonl").mkdir()
    save(tmp_path / "bad_jsonl" / "x.png")
    (tmp_path / "bad_jsonl" / "captions.jsonl").write_text('{"file": "x.png"}\n')
    with pytest.raises(DataError, match="captions.jsonl:1"):
        ImageFolder(cfg(tmp_path / "bad_jsonl"), "test")
