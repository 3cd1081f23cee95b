"""The demo's scorer answers "none of these" for noise, and conditional accuracy counts that as wrong."""
import pytest
import torch
import torch.nn.functional as F

from ldmkit.data import DataConfig, build_dataset
from ldmkit.data.fashion_mnist import find_split
from ldmkit.evaluation import scorer as sc
from ldmkit.evaluation.class_accuracy import conditional_accuracy, per_class_fd
from ldmkit.evaluation.classifier import RECIPE, train_classifier

needs_fmnist = pytest.mark.skipif(find_split("train") is None, reason="Fashion-MNIST not installed (make data)")


def test_junk_images_are_seeded_bounded_and_varied():
    a = sc.junk_images(20, torch.Generator().manual_seed(3))
    b = sc.junk_images(20, torch.Generator().manual_seed(3))
    assert a.shape == (20, 1, 32, 32) and torch.equal(a, b)
    assert a.min() >= -1 and a.max() <= 1
    # five kinds, hardly any near-constant frame, none alike
    assert sum(float(x.std()) > 0.02 for x in a) >= 16
    assert len({round(float(x.mean()), 3) for x in a}) == 20


def test_extended_classifier_keeps_the_ten_logits():
    base = sc.FashionClassifier().eval()
    wide = sc._extend(base).eval()
    x = torch.rand(4, 1, 32, 32) * 2 - 1
    torch.testing.assert_close(wide(x)[:, :10], base(x))
    torch.testing.assert_close(wide(x)[:, 10], torch.zeros(4))


@needs_fmnist
def test_scorer_rejects_pure_noise_and_keeps_real_images(one_thread):
    cfg = DataConfig(name="fashion_mnist", channels=1, image_size=32)
    train, test = build_dataset(cfg, "train"), build_dataset(cfg, "test")
    x, y = train.images_tensor()[:6000], train.labels_tensor()[:6000]
    base = train_classifier(x, y, RECIPE | {"epochs": 1}, log=lambda *_: None)
    model = sc.train_scorer(base, x, y, sc.SCORER_RECIPE | {"steps": 120}, log=lambda *_: None)
    g = torch.Generator().manual_seed(99)
    noise = torch.cat([(torch.randn(50, 1, 32, 32, generator=g) * 0.7).clamp(-1, 1),   # Gaussian pixel noise
                       torch.rand(50, 1, 32, 32, generator=g) * 2 - 1,                  # uniform pixel noise
                       F.interpolate(torch.randn(50, 1, 6, 6, generator=g), size=32, mode="bicubic").clamp(-1, 1)])
    with torch.no_grad():
        assert (model(noise).argmax(1) == 10).float().mean() >= 0.95
    figures = sc.scorer_figures(model, test.images_tensor()[:2000], test.labels_tensor()[:2000], n_junk=200)
    assert figures["test_rejected"] < 0.05 and figures["test_accuracy"] > 0.7 and figures["junk_rejected"] > 0.95


class _FixedPipe:
    """A stand-in pipeline whose samples are given: class c's samples are images[c]."""

    def __init__(self, images):
        self.images = images
        self.cfg = type("C", (), {"conditioner": type("K", (), {"num_classes": 2})()})()
        self.device = torch.device("cpu")

    def __call__(self, class_labels, output_type="pt", **kw):
        x = torch.stack([self.images[c] for c in class_labels])
        return (x, x) if output_type == "pt+latent" else x  # its "latents" are the images


def test_conditional_accuracy_counts_rejections_as_wrong():
    images = torch.zeros(2, 1, 2, 2)
    images[1] = 1.0

    class Scorer(torch.nn.Module):  # class 0 right; class 1's sample is rejected ("none" = index 2)
        def forward(self, x):
            return F.one_hot(torch.where(x.flatten(1).mean(1) > 0.5, 2, 0), 3).float()

    out = conditional_accuracy(_FixedPipe(images), Scorer(), n=6, batch_size=4)
    assert out["accuracy"] == 0.5 and out["rejected"] == 0.5
    assert out["per_class"] == [1.0, 0.0] and out["per_class_rejected"] == [0.0, 1.0]


def test_per_class_fd_is_zero_for_identical_features_and_grows_with_a_shift():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(400, 4, generator=g, dtype=torch.float64).numpy()
    labels = (torch.arange(400) % 2).numpy()
    fake = real.copy()
    fake[labels == 1] += 3.0
    fd = per_class_fd(fake, labels, real, labels, 2)
    assert fd[0] == pytest.approx(0.0, abs=1e-6) and fd[1] == pytest.approx(4 * 9.0, rel=1e-6)
