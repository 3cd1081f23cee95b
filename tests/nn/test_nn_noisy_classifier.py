"""The noisy latent classifier: shapes, time conditioning, release round trip, one-line errors."""
from __future__ import annotations

import pytest
import torch

from ldmkit.config import ConfigError
from ldmkit.nn import NoisyClassifier, NoisyClassifierConfig, load_noisy_classifier, save_noisy_classifier
from ldmkit.weights import save_release


def tiny(**kw) -> NoisyClassifier:
    torch.manual_seed(0)
    return NoisyClassifier(NoisyClassifierConfig(in_channels=3, num_classes=5, model_channels=16, **kw)).eval()


def test_logits_shape_for_any_latent_size_and_fractional_t():
    clf = tiny(channel_mult=(1, 2, 2))
    for hw in ((8, 8), (7, 9)):
        assert clf(torch.randn(2, 3, *hw), torch.tensor([0, 999])).shape == (2, 5)
    out = clf(torch.randn(2, 3, 8, 8), torch.tensor([10.5, 20.25]))
    assert out.shape == (2, 5) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match=r"expected x of shape \(B, 3, h, w\)"):
        clf(torch.randn(2, 4, 8, 8), torch.tensor([0, 1]))


def test_the_timestep_changes_the_prediction():
    clf = tiny()
    with torch.no_grad():
        for p in clf.parameters():  # ResBlock output layers start at zero: make the time path matter
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.1)
    x = torch.randn(1, 3, 8, 8).expand(2, -1, -1, -1)
    logits = clf(x, torch.tensor([0, 900]))
    assert (logits[0] - logits[1]).abs().max() > 1e-3


def test_release_round_trip(tmp_path):
    clf = tiny()
    save_noisy_classifier(tmp_path / "c.safetensors", clf, {"scale_factor": 0.5, "diffusion": {"timesteps": 10}})
    back = load_noisy_classifier(tmp_path / "c.safetensors")
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([3, 7])
    torch.testing.assert_close(back(x, t), clf(x, t), rtol=0, atol=0)
    assert back.cfg == clf.cfg and back.trained_on == {"scale_factor": 0.5, "diffusion": {"timesteps": 10}}
    assert not any(p.requires_grad for p in back.parameters())


def test_bad_files_are_one_line_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.safetensors: file not found") as err:
        load_noisy_classifier(tmp_path / "nope.safetensors")
    assert "\n" not in str(err.value)
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ConfigError, match="not a readable safetensors file"):
        load_noisy_classifier(tmp_path / "junk.safetensors")
    save_release(tmp_path / "ae.safetensors", {"w": torch.zeros(1)}, {"kind": "autoencoder"})
    with pytest.raises(ConfigError, match="not an ldmkit noisy classifier \\(kind='autoencoder'\\)"):
        load_noisy_classifier(tmp_path / "ae.safetensors")


def test_config_is_checked():
    with pytest.raises(ConfigError, match="num_classes: must be >= 2"):
        NoisyClassifierConfig(num_classes=1)
