import torch

from ldmkit.evaluation import classifier as clf


def test_classifier_trains_caches_and_reloads(tmp_path, monkeypatch):
    monkeypatch.setenv("LDMKIT_CACHE", str(tmp_path))
    monkeypatch.setattr(clf, "RECIPE", clf.RECIPE | {"epochs": 1, "batch_size": 16})
    # two separable "classes": bright top half vs bright bottom half
    x = -torch.ones(64, 1, 32, 32)
    y = torch.arange(64) % 2
    x[y == 0, :, :16] = 1
    x[y == 1, :, 16:] = 1
    model, meta = clf.load_or_train_fashion_classifier(x, y, x, y, log=lambda *_: None)
    assert 0.0 <= meta["test_accuracy"] <= 1.0
    assert model(x[:3]).shape == (3, 10) and model.features(x[:3]).shape == (3, 256)
    assert model(x[:2].repeat(1, 3, 1, 1)).shape == (2, 10)  # RGB samples are read as grayscale
    files = list((tmp_path / "classifiers").glob("*.safetensors"))
    assert len(files) == 1
    again, meta2 = clf.load_or_train_fashion_classifier(log=lambda *_: None)  # no data needed: cached
    assert meta2["test_accuracy"] == meta["test_accuracy"]
    torch.testing.assert_close(again(x[:4]), model(x[:4]))
