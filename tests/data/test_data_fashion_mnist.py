"""Fashion-MNIST: IDX parsing, lookup order, padding, errors, checksummed download."""
import functools
import gzip
import hashlib
import http.server
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from ldmkit.config import ConfigError
from ldmkit.data import DataConfig, DataError, DataNotFoundError, FashionMNIST, build_dataset
from ldmkit.data import fashion_mnist as fm


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No test sees the real system folder, user cache or environment."""
    monkeypatch.setattr(fm, "SYSTEM_DIR", str(tmp_path / "no-system"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("LDMKIT_FASHION_MNIST", raising=False)
    monkeypatch.delenv("LDMKIT_FASHION_MNIST_URL", raising=False)


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_split(folder: Path, prefix: str, n: int, seed: int, gz: bool) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    images[0] = 255
    labels = np.arange(n) % 10
    folder.mkdir(parents=True, exist_ok=True)
    for kind, arr in (("images-idx3", images), ("labels-idx1", labels)):
        name = folder / f"{prefix}-{kind}-ubyte"
        data = idx_bytes(arr)
        if gz:
            (name.parent / (name.name + ".gz")).write_bytes(gzip.compress(data))
        else:
            name.write_bytes(data)
    return images, labels


@pytest.mark.parametrize("gz", [False, True])
def test_reads_padded_split(tmp_path, gz):
    images, labels = write_split(tmp_path, "train", 12, 0, gz)
    ds = FashionMNIST(DataConfig(name="fashion_mnist", root=str(tmp_path), channels=1), "train")
    assert len(ds) == 12 and ds.num_classes == 10 and ds.class_names[9] == "Ankle boot"
    item = ds[3]
    x = item["image"]
    assert x.shape == (1, 32, 32) and x.dtype == torch.float32 and item["label"].dtype == torch.int64
    assert item["label"].item() == 3
    assert (x[:, :2] == -1).all() and (x[:, -2:] == -1).all() and (x[:, :, :2] == -1).all()
    assert torch.allclose(x[0, 2:30, 2:30], torch.from_numpy(images[3]).float() / 127.5 - 1)
    assert ds[0]["image"].max() == 1.0 and x.min() >= -1


def test_channels_resize_and_fast_path(tmp_path):
    write_split(tmp_path, "train", 7, 0, False)
    ds = FashionMNIST(DataConfig(name="fashion_mnist", root=str(tmp_path), channels=3, image_size=16))
    assert ds[1]["image"].shape == (3, 16, 16)
    assert torch.equal(ds[1]["image"][0], ds[1]["image"][2])
    images, labels = ds.images_tensor(batch=3), ds.labels_tensor()
    assert images.shape == (7, 3, 16, 16) and labels.shape == (7,) and labels.dtype == torch.int64
    assert torch.allclose(images, torch.stack([ds[i]["image"] for i in range(7)]))
    assert images.min() >= -1 and images.max() <= 1


def test_train_and_test_never_mixed(tmp_path):
    train_images, _ = write_split(tmp_path, "train", 20, 1, True)
    test_images, _ = write_split(tmp_path, "t10k", 5, 2, False)
    cfg = DataConfig(name="fashion_mnist", root=str(tmp_path), channels=1, image_size=28)
    train, test = build_dataset(cfg, "train"), build_dataset(cfg, "test")
    assert len(train) == 20 and len(test) == 5
    assert torch.equal(train.images, torch.from_numpy(train_images))
    assert torch.equal(test.images, torch.from_numpy(test_images))


def test_lookup_order_env_then_system(tmp_path, monkeypatch):
    write_split(tmp_path / "env", "t10k", 3, 0, False)
    write_split(tmp_path / "system", "t10k", 4, 0, False)
    monkeypatch.setattr(fm, "SYSTEM_DIR", str(tmp_path / "system"))
    assert len(FashionMNIST(DataConfig(name="fashion_mnist"), "test")) == 4
    monkeypatch.setenv("LDMKIT_FASHION_MNIST", str(tmp_path / "env"))
    assert len(FashionMNIST(DataConfig(name="fashion_mnist"), "test")) == 3


def test_not_found_message(tmp_path):
    with pytest.raises(DataNotFoundError) as info:
        FashionMNIST(DataConfig(name="fashion_mnist", root=str(tmp_path / "mine")), "train")
    msg = str(info.value)
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, ConfigError)
    assert "\n" not in msg and str(tmp_path / "mine") in msg and str(tmp_path / "cache") in msg
    for hint in ("apt-get install dataset-fashion-mnist", "data.root=DIR", "data.download=true"):
        assert hint in msg


def test_bad_idx_files_named(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x00\x00\x0d\x03" + b"\x00" * 20)
    with pytest.raises(DataError, match="bad.*magic"):
        fm.read_idx(bad)
    trunc = tmp_path / "trunc-images-idx3-ubyte"
    trunc.write_bytes(idx_bytes(np.zeros((4, 28, 28), np.uint8))[:-100])
    with pytest.raises(DataError, match="trunc-images.*truncated"):
        fm.read_idx(trunc)
    broken_gz = tmp_path / "x.gz"
    broken_gz.write_bytes(gzip.compress(idx_bytes(np.zeros((2, 3), np.uint8)))[:-8])
    with pytest.raises(DataError, match="x.gz"):
        fm.read_idx(broken_gz)


@pytest.fixture
def server(tmp_path):
    """A loopback HTTP server serving tiny gzipped IDX files; yields (url, checksums)."""
    served = tmp_path / "served"
    write_split(served, "train", 10, 0, True)
    write_split(served, "t10k", 4, 1, True)
    checksums = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in served.iterdir()}
    assert set(checksums) == set(fm.MD5)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/", checksums
    httpd.shutdown()
    httpd.server_close()


def test_download_with_checksums(server, tmp_path, monkeypatch):
    url, checksums = server
    monkeypatch.setenv("LDMKIT_FASHION_MNIST_URL", url)
    ds = FashionMNIST(DataConfig(name="fashion_mnist", download=True), "test", checksums=checksums)
    assert len(ds) == 4
    cache = tmp_path / "cache" / "ldmkit" / "fashion-mnist"
    assert sorted(os.listdir(cache)) == sorted(checksums)
    assert len(FashionMNIST(DataConfig(name="fashion_mnist"), "train")) == 10  # now cached


def test_download_checksum_mismatch_deletes(server, tmp_path):
    url, checksums = server
    wrong = dict(checksums, **{"train-images-idx3-ubyte.gz": "0" * 32})
    with pytest.raises(DataError, match="checksum mismatch.*train-images"):
        FashionMNIST(DataConfig(name="fashion_mnist", download=True), "train", base_url=url, checksums=wrong)
    cache = tmp_path / "cache" / "ldmkit" / "fashion-mnist"
    assert "train-images-idx3-ubyte.gz" not in os.listdir(cache)
    assert not [n for n in os.listdir(cache) if n.startswith(".")], "temporary file left behind"


def test_download_unreachable(tmp_path):
    with pytest.raises(DataError, match="could not download"):
        fm.download(tmp_path / "dl", base_url="http://127.0.0.1:9/", timeout=2)


REAL = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not (REAL / "train-images-idx3-ubyte.gz").is_file(), reason="dataset-fashion-mnist not installed")
def test_real_debian_files(monkeypatch):
    monkeypatch.setattr(fm, "SYSTEM_DIR", str(REAL))
    train = FashionMNIST(DataConfig(name="fashion_mnist", channels=1), "train")
    test = FashionMNIST(DataConfig(name="fashion_mnist", channels=1), "test")
    assert train.labels_tensor().shape == (60000,) and test.labels_tensor().shape == (10000,)
    assert train.images.shape == (60000, 28, 28)
    assert (torch.bincount(train.labels_tensor(), minlength=10) == 6000).all()
    assert (torch.bincount(test.labels_tensor(), minlength=10) == 1000).all()
    assert train[0]["image"].shape == (1, 32, 32)
