"""Every case of the generated bad-input corpus (tests/data/bad/make_corpus.py) has the outcome it states:
images load or are skipped and counted, broken captions / configs / checkpoints are one-line errors naming the
file or key (exit code 2, no traceback), a truncated shard loses only its own samples, nothing executes."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ldmkit.cli.main import main
from ldmkit.data import DataConfig
from ldmkit.data.config import DataError
from ldmkit.data.image_folder import ImageFolder
from ldmkit.training import autoencoder_loop, ldm_loop
from ldmkit.training.ldm_loop import check_captions

_spec = importlib.util.spec_from_file_location("make_corpus", Path(__file__).parent / "bad" / "make_corpus.py")
make_corpus = importlib.util.module_from_spec(_spec)
sys.modules["make_corpus"] = make_corpus  # its dataclasses look their module up
_spec.loader.exec_module(make_corpus)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    cases = make_corpus.build(root)
    return root, cases


def _cases(corpus, kind):
    root, cases = corpus
    return root, [c for c in cases if c.kind == kind]


def _folder(root, **kw) -> ImageFolder:
    return ImageFolder(DataConfig(name="image_folder", root=str(root), image_size=16, channels=3, test_every=0,
                                  flip=False, **kw))


def test_images_load_or_are_skipped_and_counted(corpus):
    root, cases = _cases(corpus, "image")
    ds = _folder(root / "images")
    scanned = {Path(f).relative_to(root).as_posix() for f in ds.files}
    dropped = ds.verify()
    bad = {Path(f).relative_to(root).as_posix() for f in ds.bad_files}
    for c in cases:
        if c.expect == "loads":
            assert c.path in scanned and c.path not in bad, c
        else:
            assert c.path not in scanned or c.path in bad, c
    assert dropped == len(bad) == ds.skipped == sum(c.expect == "skipped" and c.path in scanned for c in cases)
    for i in range(len(ds)):
        x = ds[i]["image"]
        assert x.shape == (3, 16, 16) and torch.isfinite(x).all() and x.min() >= -1 and x.max() <= 1, ds.files[i]


def _load(root, name) -> torch.Tensor:
    ds = _folder(root / "images")
    (i,) = [k for k, f in enumerate(ds.files) if f.name == name]
    return ds[i]["image"]


@pytest.mark.parametrize("orientation, blue_at", [(3, "left"), (6, "bottom"), (8, "top")])
def test_exif_rotation_is_applied(corpus, orientation, blue_at):
    """Stored: red left half, blue right half; the EXIF tag says how the camera held it."""
    x = _load(corpus[0], f"exif_{orientation}.jpg")
    blue = (x[2] - x[0] > 1.0).float()  # (16, 16): where blue wins over red
    halves = {"left": blue[:, :8].mean(), "right": blue[:, 8:].mean(), "top": blue[:8].mean(),
              "bottom": blue[8:].mean()}
    opposite = {"left": "right", "right": "left", "top": "bottom", "bottom": "top"}[blue_at]
    assert halves[blue_at] > 0.8 and halves[opposite] < 0.2, halves


def test_16_bit_and_alpha_images_keep_their_values(corpus):
    grey = _load(corpus[0], "grey16.png")  # uniform 16-bit noise: mean grey, not clipped to white
    assert abs(float(grey.mean())) < 0.1 and float(grey.std()) > 0.3
    assert torch.equal(grey[0], grey[1])


def test_caption_cases(corpus):
    root, cases = _cases(corpus, "captions")
    for c in cases:
        folder = root / c.path
        if c.expect == "error":
            with pytest.raises(DataError) as e:
                _folder(folder)
            msg = str(e.value)
            assert c.match in msg and str(folder) in msg and "\n" not in msg, (c, msg)
        else:
            ds = _folder(folder)
            note = check_captions(SimpleNamespace(conditioner=SimpleNamespace(kind="text_frozen"),
                                                  data=SimpleNamespace(root=str(folder))), ds)
            assert (c.match in (note or "")) if c.match else note is None, (c, note)
            assert all(cap is not None and "\ufeff" not in cap for cap in ds.captions)


def test_config_cases_are_one_line_errors(corpus, tmp_path, monkeypatch, capsys):
    root, cases = _cases(corpus, "config")

    def must_not_train(cfg):
        raise AssertionError("the config was accepted")

    monkeypatch.setattr(autoencoder_loop, "train_autoencoder", must_not_train)
    monkeypatch.setattr(ldm_loop, "train_ldm", must_not_train)
    for c in cases:
        command = "train-ldm" if c.note == "train-ldm" else "train-autoencoder"
        code = main([command, str(root / c.path), f"train.out_dir={tmp_path / 'run'}"])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("ldmkit: error: ") and err.count("\n") == 1, (c, err)
        assert c.match in err, (c, err)


def test_weight_cases_are_one_line_errors_and_run_nothing(corpus, capsys):
    root, cases = _cases(corpus, "weights")
    pwned = Path("/tmp/ldmkit-corpus-pwned")
    pwned.unlink(missing_ok=True)
    for c in cases:
        path = root / c.path
        code = main(["sample", str(path), "--n", "1", "--steps", "1", "--out", str(root / "out")])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("ldmkit: error: ") and err.count("\n") == 1, (c, err)
        assert c.match.replace("{path}", str(path)) in err and str(path) in err, (c, err)
    assert not pwned.exists()


def test_truncated_shard_is_named_when_the_stream_reaches_it(corpus):
    from ldmkit.data.webdataset import WebDataset

    root, cases = _cases(corpus, "shard")
    for c in cases:
        cfg = DataConfig(name="webdataset", root=str(root / "shards"), shards=Path(c.path).name, image_size=16,
                         channels=3, flip=False)
        if c.expect == "loads":
            items = list(WebDataset(cfg, "train"))
            assert len(items) == 4 and all(torch.isfinite(i["image"]).all() for i in items)
        else:
            with pytest.raises(DataError) as e:
                list(WebDataset(cfg, "train"))
            assert c.match in str(e.value) and str(root / c.path) in str(e.value) and "\n" not in str(e.value)


def test_manifest_lists_every_generated_file(corpus):
    root, cases = corpus
    listed = {c.path for c in cases}
    manifest = json.loads((root / "manifest.json").read_text())
    assert {m["path"] for m in manifest} == listed
    for kind in ("images", "configs", "weights", "shards"):
        on_disk = {p.relative_to(root).as_posix() for p in (root / kind).iterdir()}
        assert on_disk <= listed, on_disk - listed
    assert np.mean([c.expect == "error" for c in cases]) > 0.2
