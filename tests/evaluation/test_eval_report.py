"""``ldmkit eval``: samples in resumable batches, metrics against cached reference statistics, a protocol report."""
import json

import numpy as np
import pytest
import torch

from ldmkit.cli.main import main
from ldmkit.config import load_config
from ldmkit.evaluation.classifier import FashionClassifier
from ldmkit.evaluation.generation import load_latents
from ldmkit.evaluation.report import evaluate
from ldmkit.pipeline import Pipeline
from ldmkit.training.autoencoder_loop import AutoencoderRunConfig, train_autoencoder
from ldmkit.training.ldm_loop import LDMRunConfig, train_ldm


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    ae = train_autoencoder(load_config(AutoencoderRunConfig, "tiny/autoencoder", [f"train.out_dir={root / 'ae'}", "train.steps=2"]))
    pipe = train_ldm(load_config(LDMRunConfig, "tiny/ldm", [f"train.out_dir={root / 'ldm'}", f"first_stage={ae}", "train.steps=2"]))
    weights = root / "clf.pt"
    torch.manual_seed(0)
    torch.save(FashionClassifier().eval().state_dict(), weights)  # random features: the protocol is under test
    return pipe, weights, root


def pipe_latent_shape(setup):
    return tuple(Pipeline.load(setup[0]).cfg.latent_shape)


def run(setup, out, **kw):
    pipe, weights, root = setup
    args = dict(extractor="fmnist", weights=str(weights), n=6, batch_size=4, steps=2, guidance=2.0, out=out,
                device="cpu", log=lambda *_: None)
    return evaluate(str(pipe), **(args | kw))


def test_report_records_the_protocol_and_is_re_read(setup, tmp_path, monkeypatch):
    monkeypatch.setenv("LDMKIT_CACHE", str(tmp_path / "cache"))
    report = run(setup, tmp_path / "a", metrics=("fd", "kid", "pr", "is"))
    again = json.loads((tmp_path / "a" / "report.json").read_text())
    assert again["metrics"] == pytest.approx(report["metrics"])
    assert set(again["metrics"]) >= {"FD-fmnist", "KID", "precision", "recall", "IS"}
    assert all(np.isfinite(v) for v in again["metrics"].values())
    img = again["images"]
    assert (img["n"], img["seed"], img["steps"], img["sampler"], img["guidance_scale"]) == (6, 0, 2, "ddim", 2.0)
    assert img["conditions"] == "class-balanced" and len(img["checkpoint_sha256"]) == 64
    assert again["extractor"]["extractor"] == "fmnist-classifier" and len(again["extractor"]["weights_sha256"]) == 64
    assert again["reference"]["data"] == "shapes" and again["reference"]["split"] == "test"
    assert again["versions"]["ldmkit"] and again["n_fake"] == 6
    # sample health: the sampler's own latents (kept in the batch files) against the training latents' range
    health = again["health"]
    assert again["metrics"]["off_manifold"] == health["off_manifold_share"] and 0 <= health["off_manifold_share"] <= 1
    assert health["n"] == 6 and health["reference_n"] == 64 and "roughness" in health["rule"]
    assert health["measured_on"] == "the sampler's latents" and 0 <= health["heldout_off_share"] <= 1
    latents = load_latents(tmp_path / "a" / "samples", 6, 4)
    assert latents.shape == (6, *pipe_latent_shape(setup))
    images = np.concatenate([np.load(b)["images"] for b in sorted((tmp_path / "a" / "samples").glob("batch_*.npz"))])
    assert images.shape[0] == 6  # one latent per stored image, in the same order


def test_interrupted_eval_resumes_without_recomputing(setup, tmp_path, monkeypatch):
    monkeypatch.setenv("LDMKIT_CACHE", str(tmp_path / "cache"))
    first = run(setup, tmp_path / "a")
    batches = sorted((tmp_path / "a" / "samples").glob("batch_*.npz"))
    assert [b.name for b in batches] == ["batch_0000000.npz", "batch_0000004.npz"]
    batches[1].unlink()  # as if killed during the second batch
    stamp = batches[0].stat().st_mtime_ns
    calls = []
    import ldmkit.pipeline as pl
    orig = pl.Pipeline.__call__
    monkeypatch.setattr(pl.Pipeline, "__call__", lambda self, *a, **k: calls.append(k["seeds"]) or orig(self, *a, **k))
    second = run(setup, tmp_path / "a")
    assert calls == [[4, 5]]  # only the missing batch, with its own seeds
    assert batches[0].stat().st_mtime_ns == stamp
    assert second["metrics"] == pytest.approx(first["metrics"], rel=1e-9)


def test_other_settings_cannot_reuse_a_sample_folder(setup, tmp_path, monkeypatch):
    monkeypatch.setenv("LDMKIT_CACHE", str(tmp_path / "cache"))
    run(setup, tmp_path / "a")
    with pytest.raises(ValueError, match="made with other settings"):
        run(setup, tmp_path / "a", guidance=1.0)


def test_cli_eval_on_data_and_missing_source(setup, tmp_path, monkeypatch, capsys):
    _, weights, _ = setup
    monkeypatch.setenv("LDMKIT_CACHE", str(tmp_path / "cache"))
    code = main(["eval", "data:shapes:train", "--ref", "shapes:test", "--weights", str(weights), "--n", "8",
                 "--out", str(tmp_path / "d"), "--device", "cpu"])
    assert code == 0 and "FD-fmnist" in capsys.readouterr().out
    assert main(["eval", str(tmp_path / "nope.safetensors"), "--weights", str(weights)]) == 2
    assert "not found" in capsys.readouterr().err


def test_periodic_eval_is_logged_and_keeps_resume_exact(setup, tmp_path, monkeypatch):
    pipe, weights, root = setup
    monkeypatch.setenv("LDMKIT_CACHE", str(tmp_path / "cache"))
    ae = root / "ae" / "autoencoder.safetensors"

    def train(out, steps, *extra):
        return train_ldm(load_config(LDMRunConfig, "tiny/ldm", [f"train.out_dir={out}", f"first_stage={ae}",
                                                                f"train.steps={steps}", *extra]))
    evals = ["train.eval_every=2", "train.eval_n=4", "train.eval_steps=2", f"train.eval_weights={weights}"]
    with_eval = train(tmp_path / "a", 4, *evals)
    events = [json.loads(l) for l in (tmp_path / "a" / "events.jsonl").read_text().splitlines()]
    fds = [e for e in events if "eval/FD-fmnist" in e]
    assert [e["step"] for e in fds] == [2, 4] and all(np.isfinite(e["eval/FD-fmnist"]) for e in fds)
    without = train(tmp_path / "b", 4)
    from safetensors.torch import load_file
    a, b = load_file(str(with_eval)), load_file(str(without))
    assert all(torch.equal(a[k], b[k]) for k in a)  # evaluating draws nothing from the training RNG
