"""``ldmkit eval`` sweeps (sampler x steps, or NFE targets), eta for every sampler that takes it, classifier
guidance in the protocol; a tiny random pipeline and a random feature extractor (the protocol is under test)."""
from __future__ import annotations

import json

import pytest
import torch

from ldmkit.autoencoder import AutoencoderConfig
from ldmkit.cli.main import main
from ldmkit.config import ConfigError, to_dict
from ldmkit.data import DataConfig
from ldmkit.diffusion import ScheduleConfig
from ldmkit.evaluation.classifier import FashionClassifier
from ldmkit.evaluation.report import evaluate
from ldmkit.evaluation.sweep import evaluate_sweep
from ldmkit.nn import ConditionerConfig, NoisyClassifier, NoisyClassifierConfig, UNetConfig, save_noisy_classifier
from ldmkit.pipeline import Pipeline, PipelineConfig

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one intra-op thread is faster


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    cfg = PipelineConfig(
        autoencoder=AutoencoderConfig(resolution=16, ch=8, ch_mult=(1, 2), num_res_blocks=1, z_channels=3,
                                      embed_dim=3),
        unet=UNetConfig(in_channels=3, out_channels=3, model_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                        attention_resolutions=(2,), num_head_channels=8, context_dim=16),
        conditioner=ConditionerConfig(kind="class", num_classes=18, embed_dim=16),
        diffusion=ScheduleConfig(timesteps=50), scale_factor=0.7)
    torch.manual_seed(0)
    pipe = Pipeline(cfg)
    pipe.save(root / "pipe.safetensors", {"data": to_dict(DataConfig(name="shapes", image_size=16, channels=3,
                                                                      shapes_size=64))})
    clf = NoisyClassifier(NoisyClassifierConfig(in_channels=3, num_classes=18, model_channels=8))
    save_noisy_classifier(root / "clf.safetensors", clf, {"diffusion": to_dict(cfg.diffusion), "scale_factor": 0.7})
    torch.save(FashionClassifier().eval().state_dict(), root / "features.pt")
    return root


@pytest.fixture
def env(setup, monkeypatch):
    monkeypatch.setenv("LDMKIT_CACHE", str(setup / "cache"))  # reference statistics, shared by the tests
    return setup


def common(root, **kw):
    return dict(extractor="fmnist", weights=str(root / "features.pt"), metrics=("fd", "kid"), n=6, batch_size=6,
                guidance=2.0, device="cpu", log=lambda *_: None) | kw


def record_calls(monkeypatch):
    import ldmkit.pipeline as pl
    calls, orig = [], pl.Pipeline.__call__
    monkeypatch.setattr(pl.Pipeline, "__call__", lambda self, *a, **k: calls.append(k) or orig(self, *a, **k))
    return calls


def test_sweep_writes_every_row_and_resumes_without_sampling(env, tmp_path, monkeypatch):
    out = tmp_path / "sweep"
    sweep = evaluate_sweep(str(env / "pipe.safetensors"), ["ddim", "euler_a"], steps=[2, 3], out=out, **common(env))
    rows = {(r["sampler"], r["steps"]): r for r in sweep["rows"]}
    assert sorted(rows) == [("ddim", 2), ("ddim", 3), ("euler_ancestral", 2), ("euler_ancestral", 3)]
    # the original's uniform DDIM spacing visits 1, 17, 33, 49 of T = 50 when asked for 3 steps: NFE is counted
    assert rows[("ddim", 3)]["nfe"] == 4 and rows[("euler_ancestral", 3)]["nfe"] == 3
    assert rows[("euler_ancestral", 2)]["eta"] == 1.0 and rows[("ddim", 2)]["eta"] == 0.0  # each sampler's default
    for (name, steps), row in rows.items():
        report = json.loads((out / f"{name}-{steps}" / "report.json").read_text())
        assert report["images"]["sampler"] == name and report["images"]["steps"] == steps
        assert row["metrics"] == pytest.approx(report["metrics"]) and "FD-fmnist" in row["metrics"]
    assert json.loads((out / "sweep.json").read_text())["rows"] == json.loads(json.dumps(sweep["rows"]))
    table = (out / "sweep.md").read_text()
    assert "| sampler | steps | NFE | FD-fmnist | KID |" in table and "counted once" in table
    assert table.count("| ddim |") == 2

    calls = record_calls(monkeypatch)
    again = evaluate_sweep(str(env / "pipe.safetensors"), ["ddim", "euler_a"], steps=[2, 3], out=out, **common(env))
    assert calls == []  # every batch is on disk: nothing is sampled again
    for a, b in zip(again["rows"], sweep["rows"]):
        assert a["metrics"]["FD-fmnist"] == pytest.approx(b["metrics"]["FD-fmnist"], rel=1e-9)


def test_cli_sweep_by_nfe(env, tmp_path, capsys):
    out = tmp_path / "nfe"
    code = main(["eval", str(env / "pipe.safetensors"), "--sampler", "heun,plms", "--nfe", "3", "--n", "6",
                 "--batch-size", "6", "--metrics", "fd", "--weights", str(env / "features.pt"), "--device", "cpu",
                 "--out", str(out)])
    assert code == 0
    rows = json.loads((out / "sweep.json").read_text())["rows"]
    # heun: 2N - 1 calls, plms: N + 1 calls
    assert [(r["sampler"], r["steps"], r["nfe"]) for r in rows] == [("heun", 2, 3), ("plms", 2, 3)]
    assert (out / "heun-2" / "samples" / "batch_0000000.npz").is_file()
    assert "| heun | 2 | 3 |" in capsys.readouterr().out


def test_eta_reaches_every_sampler_that_takes_it(env, tmp_path, monkeypatch):
    calls = record_calls(monkeypatch)
    report = evaluate(str(env / "pipe.safetensors"), sampler="DDIMScheduler", steps=2, eta=1.0, out=tmp_path / "a",
                      **common(env))
    assert calls[-1]["eta"] == 1.0 and report["images"]["sampler"] == "ddim" and report["images"]["eta"] == 1.0
    evaluate(str(env / "pipe.safetensors"), sampler="dpmpp_2m", steps=2, out=tmp_path / "b", **common(env))
    assert "eta" not in calls[-1]
    with pytest.raises(ConfigError, match="sampler heun: no option eta"):
        evaluate(str(env / "pipe.safetensors"), sampler="heun", steps=2, eta=0.5, out=tmp_path / "c", **common(env))


def test_classifier_guidance_is_in_the_protocol(env, tmp_path, monkeypatch):
    calls = record_calls(monkeypatch)
    report = evaluate(str(env / "pipe.safetensors"), steps=2, out=tmp_path / "g", classifier=str(env / "clf.safetensors"),
                      classifier_scale=2.5, **common(env))
    images = json.loads((tmp_path / "g" / "report.json").read_text())["images"]
    assert len(images["classifier_sha256"]) == 64 and images["classifier_scale"] == 2.5
    assert images["classifier"].endswith("clf.safetensors") and report["images"] == images
    assert calls[-1]["classifier_scale"] == 2.5 and isinstance(calls[-1]["classifier"], NoisyClassifier)
    with pytest.raises(ValueError, match="made with other settings"):  # the unguided run needs its own folder
        evaluate(str(env / "pipe.safetensors"), steps=2, out=tmp_path / "g", **common(env))


def test_a_folder_from_before_classifier_guidance_still_resumes(env, tmp_path, monkeypatch):
    evaluate(str(env / "pipe.safetensors"), steps=2, out=tmp_path / "old", **common(env))
    record = tmp_path / "old" / "samples" / "protocol.json"
    saved = json.loads(record.read_text())
    record.write_text(json.dumps({k: v for k, v in saved.items() if not k.startswith("classifier")}))
    calls = record_calls(monkeypatch)
    evaluate(str(env / "pipe.safetensors"), steps=2, out=tmp_path / "old", **common(env))
    assert calls == []


def test_guidance_rescale_and_interval_are_in_the_protocol(env, tmp_path, monkeypatch):
    """The model's own defaults are recorded as used and reach the pipeline; explicit values win; a folder made
    with other guidance settings is refused."""
    from ldmkit.diffusion import GuidanceConfig

    pipe = Pipeline.load(env / "pipe.safetensors")
    pipe.cfg.guidance = GuidanceConfig(rescale=0.7, interval=(0, 30))
    pipe.save(tmp_path / "tuned.safetensors", {"data": to_dict(DataConfig(name="shapes", image_size=16, channels=3,
                                                                           shapes_size=64))})
    calls = record_calls(monkeypatch)
    report = evaluate(str(tmp_path / "tuned.safetensors"), steps=2, out=tmp_path / "own", **common(env))
    assert report["images"]["guidance_rescale"] == 0.7 and list(report["images"]["guidance_interval"]) == [0, 30]
    assert calls[-1]["guidance_rescale"] == 0.7 and tuple(calls[-1]["guidance_interval"]) == (0, 30)
    report = evaluate(str(tmp_path / "tuned.safetensors"), steps=2, out=tmp_path / "plain", guidance_rescale=0.0,
                      guidance_interval=(0, float("inf")), **common(env))
    assert report["images"]["guidance_rescale"] == 0.0 and report["images"]["guidance_interval"] is None
    assert calls[-1]["guidance_rescale"] == 0.0 and calls[-1]["guidance_interval"][1] == float("inf")
    evaluate(str(tmp_path / "tuned.safetensors"), steps=2, out=tmp_path / "own", **common(env))  # resumes
    with pytest.raises(ValueError, match="made with other settings"):
        evaluate(str(tmp_path / "tuned.safetensors"), steps=2, out=tmp_path / "own", guidance_rescale=0.3,
                 **common(env))
