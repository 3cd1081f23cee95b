import numpy as np
import pytest
import torch

from ldmkit.config import ConfigError
from ldmkit.data import DataConfig
from ldmkit.evaluation import classifier as clf
from ldmkit.evaluation.features import (FashionExtractor, FeatureExtractor, InceptionExtractor, build_extractor,
                                        extract, iter_batches, state_dict_sha256)
from ldmkit.evaluation.inception import FID_WEIGHTS_URL, InceptionV3
from ldmkit.evaluation.metrics import feature_statistics
from ldmkit.evaluation.reference import reference_statistics
from ldmkit.weights import file_digest, save_release


def fashion(seed: int = 0) -> clf.FashionClassifier:
    torch.manual_seed(seed)
    return clf.FashionClassifier().eval()


def images(n: int, seed: int = 0, size: int = 28) -> torch.Tensor:
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


class Toy:
    """A cheap extractor: 3 pixel values per image; counts the images it sees."""

    def __init__(self, weights_sha256: str = "a" * 64, resize: str = "bilinear", exact32: bool = True):
        self.name, self.weights_sha256, self.resolution, self.resize = "toy", weights_sha256, 8, resize
        self.exact32, self.seen = exact32, 0

    def features(self, x: torch.Tensor) -> np.ndarray:
        self.seen += len(x)
        f = x.flatten(1)[:, :3].double().numpy()
        return f if self.exact32 else f / 3.0  # thirds are not exact in float32


def test_fashion_adapter_follows_the_interface():
    model = fashion()
    ext = FashionExtractor(model)
    assert isinstance(ext, FeatureExtractor) and isinstance(Toy(), FeatureExtractor)
    assert (ext.name, ext.resolution, ext.resize) == ("fmnist-classifier", 32, "bilinear")
    x = images(3)
    with torch.no_grad():
        torch.testing.assert_close(ext.features(x), model.features(x))
        torch.testing.assert_close(ext.logits(x), model(x))
    # the hash identifies the weights: equal for a copy, different after any change
    assert ext.weights_sha256 == FashionExtractor(fashion()).weights_sha256
    changed = fashion()
    with torch.no_grad():
        changed.head.bias[0] += 1e-3
    assert FashionExtractor(changed).weights_sha256 != ext.weights_sha256
    assert len(ext.weights_sha256) == 64


def test_extract_batches_inputs_of_every_form_to_float64():
    ext = FashionExtractor(fashion())
    x = images(7)
    with torch.no_grad():
        whole = ext.features(x).double().numpy()
    f = extract(ext, x, batch_size=3)
    assert f.dtype == np.float64 and f.shape == (7, 256)
    np.testing.assert_allclose(f, whole, rtol=1e-5, atol=1e-6)
    items = [{"image": img, "label": 0} for img in x[:4]] + [x[4:]]  # data-set items and a batch, mixed
    np.testing.assert_allclose(extract(ext, items, batch_size=2), whole, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(extract(ext, x, batch_size=4, limit=5), whole[:5], rtol=1e-5, atol=1e-6)
    assert extract(ext, x, what="logits").shape == (7, 10)
    pulled = []

    def generated():  # e.g. a sampler: no batch beyond the limit may be generated
        for i in range(0, 7, 2):
            pulled.append(i)
            yield x[i:i + 2]

    assert extract(ext, generated(), batch_size=2, limit=4).shape == (4, 256) and pulled == [0, 2]
    assert [len(b) for b in iter_batches([x[:2], x[2:3], x[3:]], 3)] == [3, 3, 1]
    with pytest.raises(ConfigError, match="extractor toy has no logits"):
        extract(Toy(), x, what="logits")
    with pytest.raises(ValueError, match="float images"):
        extract(ext, (x * 127).to(torch.uint8))


def test_build_extractor_resolves_names_and_weights(tmp_path, monkeypatch):
    model = fashion(seed=5)
    path = tmp_path / "fmnist.safetensors"
    save_release(path, model.state_dict(), {"kind": "classifier"})
    ext = build_extractor("fmnist", weights=str(path))
    assert isinstance(ext, FashionExtractor) and ext.weights_sha256 == state_dict_sha256(model.state_dict())
    # without weights: the cached in-project classifier
    monkeypatch.setattr(clf, "load_or_train_fashion_classifier", lambda **kw: (model, {}))
    assert build_extractor("fmnist-classifier").weights_sha256 == ext.weights_sha256
    with pytest.raises(ConfigError, match="extractor: expected one of"):
        build_extractor("clip")
    with pytest.raises(ConfigError, match="inception weights: required"):
        build_extractor("inception")
    with pytest.raises(ConfigError, match=FID_WEIGHTS_URL.replace(".", r"\.")):
        build_extractor("inception", weights=tmp_path / "pt_inception-2015-12-05-6726825d.pth")
    save_release(tmp_path / "bad.safetensors", {"w": torch.zeros(1)}, {})
    with pytest.raises(ConfigError, match="missing keys body"):
        build_extractor("fmnist", weights=tmp_path / "bad.safetensors")


def test_inception_adapter_records_resize_and_hash():
    torch.manual_seed(0)
    ext = InceptionExtractor(InceptionV3(resize="bicubic-antialias"))
    assert (ext.name, ext.resolution, ext.resize) == ("inception-v3-fid", 299, "bicubic-antialias")
    assert ext.weights_sha256 == state_dict_sha256(ext.model.state_dict())  # no file: hash of the tensors
    assert isinstance(ext, FeatureExtractor)


def test_reference_statistics_cache_hit_miss_and_key(tmp_path):
    toy = Toy()
    calls = []

    def fn():
        calls.append(1)
        return images(12, size=8)

    ref = reference_statistics("toyset", "test", toy, fn, resolution=8, cache_dir=tmp_path, batch_size=5, log=str)
    assert not ref["cached"] and toy.seen == 12 and ref["n"] == 12
    mu, sigma = feature_statistics(images(12, size=8).flatten(1)[:, :3])
    np.testing.assert_array_equal(ref["mu"], mu)
    np.testing.assert_array_equal(ref["sigma"], sigma)
    assert ref["mu"].dtype == ref["sigma"].dtype == ref["features"].dtype == np.float64
    assert ref["sha256"] == file_digest(ref["path"])
    assert ref["key_fields"]["weights_sha256"] == "a" * 64 and ref["key_fields"]["resize"] == "bilinear"

    again = reference_statistics("toyset", "test", toy, fn, resolution=8, cache_dir=tmp_path, log=str)
    assert again["cached"] and toy.seen == 12 and len(calls) == 1  # nothing recomputed, images never built
    assert (again["key"], again["sha256"]) == (ref["key"], ref["sha256"])
    for k in ("mu", "sigma", "features"):
        np.testing.assert_array_equal(again[k], ref[k])

    keys = {ref["key"]}
    for variant in (dict(extractor=Toy(weights_sha256="b" * 64)), dict(extractor=Toy(resize="bicubic")),
                    dict(split="train"), dict(resolution=16), dict(num_images=10)):
        kw = dict(dataset="toyset", split="test", extractor=Toy(), images_fn=fn, resolution=8) | variant
        out = reference_statistics(**kw, cache_dir=tmp_path, log=str)
        assert not out["cached"] and out["key"] not in keys
        keys.add(out["key"])
    assert out["n"] == 10
    assert len(list(tmp_path.glob("*.safetensors"))) == 6


def test_reference_statistics_keeps_float64_features_exact_and_recovers_a_broken_file(tmp_path):
    toy = Toy(exact32=False)
    ref = reference_statistics("toyset", "test", toy, lambda: images(5, size=8), resolution=8, cache_dir=tmp_path,
                               log=str)
    hit = reference_statistics("toyset", "test", toy, lambda: images(5, size=8), resolution=8, cache_dir=tmp_path,
                               log=str)
    assert hit["cached"]
    np.testing.assert_array_equal(hit["features"], ref["features"])  # thirds survive: stored as float64
    open(ref["path"], "wb").write(b"truncated")
    again = reference_statistics("toyset", "test", toy, lambda: images(5, size=8), resolution=8, cache_dir=tmp_path,
                                 log=str)
    assert not again["cached"] and again["sha256"] == ref["sha256"]  # recomputed, byte-identical file
    with pytest.raises(ConfigError, match="resolution: required"):
        reference_statistics("toyset", "test", toy, lambda: images(5), cache_dir=tmp_path, log=str)
    with pytest.raises(ConfigError, match="images_fn: required"):  # on a miss; a hit needs no images
        reference_statistics("toyset", "train", toy, resolution=8, cache_dir=tmp_path, log=str)


def test_reference_statistics_reads_a_data_config(tmp_path):
    cfg = DataConfig(name="shapes", image_size=8, shapes_size=40)  # 4 test images
    ref = reference_statistics(cfg, "test", Toy(), cache_dir=tmp_path, log=str)
    assert ref["n"] == 4 and ref["key_fields"]["resolution"] == 8
    assert ref["key_fields"]["dataset"]["name"] == "shapes" and "flip" not in ref["key_fields"]["dataset"]
    # a train-time flip does not change the reference images, so it does not change the key
    flipped = reference_statistics(DataConfig(name="shapes", image_size=8, shapes_size=40, flip=True), "test", Toy(),
                                   cache_dir=tmp_path, log=str)
    assert flipped["cached"] and flipped["key"] == ref["key"]
