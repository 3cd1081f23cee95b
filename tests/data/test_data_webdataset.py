"""Tar shards (data.name=webdataset): `ldmkit make-shards` round trip, shard lists, sample parts, errors."""
import io
import json
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from ldmkit.cli.main import main
from ldmkit.config import ConfigError
from ldmkit.data import DataConfig, DataError, build_dataset, first_items
from ldmkit.data.image_folder import scan
from ldmkit.data.shard_writer import write_shards
from ldmkit.data.transforms import ImageTransform, load_image
from ldmkit.data.webdataset import expand_braces, list_shards


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Two classes, 11 images of odd sizes (one BMP); captions from a sidecar, captions.jsonl, captions.json."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for c, n in (("cat", 5), ("dog", 6)):
        (root / c).mkdir()
        for i in range(n):
            img = Image.fromarray(rng.integers(0, 256, (20 + i, 24, 3), dtype=np.uint8))
            img.save(root / c / (f"{i}.bmp" if (c, i) == ("dog", 5) else f"{i}.{'jpg' if i == 2 else 'png'}"))
    (root / "cat" / "1.txt").write_text("a sidecar cat\n")
    (root / "captions.jsonl").write_text(json.dumps({"file": "dog/3.png", "caption": "a jsonl dog"}) + "\n")
    (root / "captions.json").write_text(json.dumps({"dog/4.png": "a json dog", "dog/3.png": "loses to jsonl"}))
    return root


def shard_cfg(root, **kw):
    return DataConfig(name="webdataset", root=str(root), image_size=16, **kw)


def test_make_shards_round_trip(folder, tmp_path):
    out = tmp_path / "shards"
    assert main(["make-shards", str(folder), str(out), "--per-shard", "3"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["classes.json"] + [f"shard-0000{k}.tar" for k in range(4)]
    assert json.loads((out / "classes.json").read_text()) == ["cat", "dog"]
    ds = build_dataset(shard_cfg(out), "train")
    items = list(ds)
    files = scan(folder)
    assert len(items) == len(files) == 11 and ds.class_names == ["cat", "dog"] and ds.num_classes == 2
    transform = ImageTransform(16, 3)
    captions = {"cat/1.png": "a sidecar cat", "dog/3.png": "a jsonl dog", "dog/4.png": "a json dog"}
    for i, (item, path) in enumerate(zip(items, files)):
        rel = path.relative_to(folder).as_posix()
        assert item["key"] == f"shard-0000{i // 3}.tar:{i:08d}"
        assert torch.equal(item["image"], transform(load_image(path))), rel  # the BMP went in as lossless PNG
        assert item["caption"] == captions.get(rel, "") and item["label"].item() == int(rel.startswith("dog"))
    assert list(ds.captions()) == [it["caption"] for it in items]  # text parts only
    assert [it["key"] for it in first_items(ds, 4)] == [it["key"] for it in items[:4]]
    # the same folder gives the same bytes (fixed member metadata): shards can be checksummed and re-made
    again = write_shards(folder, tmp_path / "again", per_shard=3)
    assert [p.read_bytes() for p in again] == [(out / p.name).read_bytes() for p in again]


def test_shard_lists_braces_and_globs(folder, tmp_path):
    assert expand_braces("s-{0000..0002}.tar") == ["s-0000.tar", "s-0001.tar", "s-0002.tar"]
    assert expand_braces("{a,b}/x-{8..10}.tar") == ["a/x-8.tar", "a/x-9.tar", "a/x-10.tar",
                                                   "b/x-8.tar", "b/x-9.tar", "b/x-10.tar"]
    assert expand_braces("plain.tar") == ["plain.tar"]
    out = tmp_path / "s"
    shards = write_shards(folder, out, per_shard=4)  # 3 shards
    assert list_shards(str(out), "") == shards
    assert list_shards(str(out), "shard-{00001..00002}.tar") == shards[1:]  # relative to root
    assert list_shards(None, str(out / "shard-0000[02].tar")) == [shards[0], shards[2]]
    with pytest.raises(DataError, match=r"data.shards: shard .*shard-00003.tar not found"):
        list_shards(str(out), "shard-{00000..00003}.tar")
    with pytest.raises(DataError, match="no file matches"):
        list_shards(str(out), "train-*.tar")
    with pytest.raises(DataError, match="no tar shards"):
        list_shards(str(folder), "")
    with pytest.raises(DataError, match="data.test_shards: a webdataset has no held-out split"):
        build_dataset(shard_cfg(out), "test")
    test = build_dataset(shard_cfg(out, test_shards="shard-00002.tar"), "test")
    assert [it["key"] for it in test] == ["shard-00002.tar:00000008", "shard-00002.tar:00000009",
                                          "shard-00002.tar:00000010"]
    with pytest.raises(ValueError, match="streamed and has no length"):
        len(test)


def write_tar(path, members):
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def png_bytes(value=0):
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (value, value, value)).save(buf, format="PNG")
    return buf.getvalue()


def test_sample_parts_json_captions_and_unlabelled_shards(tmp_path):
    write_tar(tmp_path / "a.tar", [("x/k1.png", png_bytes(10)), ("x/k1.json", b'{"caption": "from json"}'),
                                   ("x/k2.jpg.json", b"{}"), ("x/k2.png", png_bytes(20)), ("._x", b"mac"),
                                   ("x/k3.webp", png_bytes(30)), ("x/k3.seg.png", b"ignored part")])
    ds = build_dataset(DataConfig(name="webdataset", shards=str(tmp_path / "a.tar"), image_size=8), "train")
    items = list(ds)
    assert [it["key"] for it in items] == ["a.tar:x/k1", "a.tar:x/k2", "a.tar:x/k3"]
    assert [it["caption"] for it in items] == ["from json", "", ""]
    assert not ds.has_labels and "label" not in items[0] and ds.num_classes is None
    assert torch.allclose(items[1]["image"], torch.full((3, 8, 8), 20 / 127.5 - 1))


@pytest.mark.parametrize("members, needle", [
    ([("k.txt", b"no image")], "sample k has no image"),
    ([("k.png", b"not a png")], "k.png is not a readable image"),
    ([("k.png", png_bytes()), ("k.json", b"{oops")], "k.json is not valid JSON"),
    ([("k.png", png_bytes()), ("k.json", b'{"class": 0}'), ("m.png", png_bytes())], 'sample m has no "class"'),
    ([("k.png", png_bytes()), ("k.json", b'{"class": "dog"}')], '"class" must be an integer'),
])
def test_bad_samples_name_shard_and_key(tmp_path, members, needle):
    path = write_tar(tmp_path / "bad.tar", members)
    with pytest.raises(DataError, match=needle) as e:  # at construction (it reads the first sample) or later
        list(build_dataset(DataConfig(name="webdataset", root=str(tmp_path), image_size=8), "train"))
    assert str(path) in str(e.value) and len(str(e.value).splitlines()) == 1


def test_truncated_or_corrupt_shards_name_the_file(folder, tmp_path):
    out = tmp_path / "s"
    shards = write_shards(folder, out, per_shard=6)
    data = shards[1].read_bytes()
    shards[1].write_bytes(data[:1500])  # cut inside the first member
    ds = build_dataset(shard_cfg(out), "train")  # the first shard is fine: the error comes when shard 1 is read
    with pytest.raises(DataError, match=f"{shards[1]}: corrupt tar shard") as e:
        list(ds)
    assert len(str(e.value).splitlines()) == 1
    shards[0].write_bytes(b"\x00garbage" * 200)
    with pytest.raises(DataError, match=f"{shards[0]}: (not a readable|corrupt) tar shard"):
        build_dataset(shard_cfg(out), "train")
    shards[0].write_bytes(b"")
    with pytest.raises(DataError, match=f"{shards[0]}"):
        build_dataset(shard_cfg(out), "train")


def test_make_shards_user_errors_are_one_line(tmp_path, capsys):
    assert main(["make-shards", str(tmp_path / "nope"), str(tmp_path / "out")]) == 2
    assert main(["make-shards", str(tmp_path), str(tmp_path / "out"), "--per-shard", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"ldmkit: error: {tmp_path / 'nope'}: not a folder", "ldmkit: error: --per-shard: must be >= 1, got 0"]
    with pytest.raises(ConfigError, match="root: name=webdataset needs data.root"):
        DataConfig(name="webdataset")
