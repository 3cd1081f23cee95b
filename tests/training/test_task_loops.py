"""Every task preset of the paper trains (tiny), saves, reloads and samples through one Pipeline API."""
import pytest
import torch

from ldmkit.config import ConfigError, load_config
from ldmkit.data import DataConfig, Shapes
from ldmkit.pipeline import Pipeline
from ldmkit.training.autoencoder_loop import AutoencoderRunConfig, train_autoencoder
from ldmkit.training.ldm_loop import LDMRunConfig, train_ldm

TASKS = ["text", "layout", "semantic", "sr", "inpaint"]


@pytest.fixture(scope="module")
def tiny_ae(tmp_path_factory):
    out = tmp_path_factory.mktemp("ae")
    return train_autoencoder(load_config(AutoencoderRunConfig, "tiny/autoencoder", [f"train.out_dir={out}", "train.steps=2"]))


@pytest.fixture(scope="module")
def trained(tiny_ae, tmp_path_factory):
    out = {}
    for task in TASKS:
        run = tmp_path_factory.mktemp(task)
        cfg = load_config(LDMRunConfig, f"tiny/ldm-{task}", [f"train.out_dir={run}", f"first_stage={tiny_ae}",
                                                             "train.steps=2", "train.sample_every=2"])
        out[task] = train_ldm(cfg)
        assert (run / "samples" / "samples_final.png").is_file()
    return out


def test_text_to_image_with_negative_prompt(trained):
    pipe = Pipeline.load(trained["text"])
    x = pipe(prompt=["a red circle", "a blue square left of a green triangle"], negative_prompt="a red square",
             num_inference_steps=2, guidance_scale=3.0, seeds=[0, 1], output_type="pt")
    assert x.shape == (2, 3, 16, 16) and torch.isfinite(x).all()
    # seeds make image k reproducible on its own
    y = pipe(prompt="a blue square left of a green triangle", num_images=1, negative_prompt="a red square",
             num_inference_steps=2, guidance_scale=3.0, seeds=[1], output_type="pt")
    torch.testing.assert_close(y[0], x[1], atol=1e-5, rtol=0)


def test_layout_to_image(trained):
    pipe = Pipeline.load(trained["layout"])
    x = pipe(boxes=[[1, 0.1, 0.1, 0.5, 0.5]], num_images=2, num_inference_steps=2, seeds=[0, 1], output_type="pt")
    assert x.shape == (2, 3, 16, 16)


def test_semantic_synthesis_beyond_training_size(trained):
    pipe = Pipeline.load(trained["semantic"])
    seg = Shapes(DataConfig(name="shapes", image_size=32), "test")[0]["segmentation"]  # 2x the training size
    x = pipe(segmentation=seg, num_inference_steps=2, seeds=[0], output_type="pt")
    assert x.shape == (1, 3, 32, 32)


def test_super_resolution_at_twice_the_training_size(trained):
    pipe = Pipeline.load(trained["sr"])
    assert pipe.unet.input_blocks[0][0].in_channels == 6  # 3 latent + 3 low-res channels
    low = torch.rand(3, 16, 16) * 2 - 1  # trained on 8 -> 16; here 16 -> 32
    x = pipe(low_res=low, num_inference_steps=2, seeds=[0], output_type="pt")
    assert x.shape == (1, 3, 32, 32)


def test_inpainting_keeps_the_known_region(trained):
    pipe = Pipeline.load(trained["inpaint"])
    assert pipe.unet.input_blocks[0][0].in_channels == 7  # latent 3 + masked-image latent 3 + mask 1
    image = Shapes(DataConfig(name="shapes", image_size=16), "test")[0]["image"]
    mask = torch.zeros(16, 16)
    mask[4:12, 4:12] = 1
    x = pipe(image=image, mask=mask, num_inference_steps=2, seeds=[0], output_type="pt")[0]
    keep = mask == 0
    torch.testing.assert_close(x[:, keep], image[:, keep].clamp(-1, 1))


def test_wrong_inputs_are_named(trained):
    pipe = Pipeline.load(trained["sr"])
    with pytest.raises(ValueError, match="prompt given, but this pipeline is not conditioned on it"):
        pipe(prompt="a red circle", num_inference_steps=2)
    with pytest.raises(ValueError, match="pass low_res"):
        pipe(num_inference_steps=2)


def test_in_channels_must_count_the_concat_channels(tiny_ae, tmp_path):
    cfg = load_config(LDMRunConfig, "tiny/ldm-inpaint", [f"train.out_dir={tmp_path}", f"first_stage={tiny_ae}",
                                                         "unet.in_channels=3"])
    with pytest.raises(ConfigError, match=r"unet.in_channels: must equal .* \+ the inpaint condition's 4, got 3"):
        train_ldm(cfg)


@pytest.mark.parametrize("task", TASKS)
def test_eval_task_reports_the_metric_beside_its_baseline(trained, task, tmp_path, capsys):
    from ldmkit.cli.main import main

    args = ["eval-task", str(trained[task]), "--n", "3", "--steps", "2", "--batch-size", "2", "--device", "cpu",
            "--out", str(tmp_path)]
    assert main(args) == 0, capsys.readouterr().err
    import json
    report = json.loads((tmp_path / "report.json").read_text())
    expected = {"text": "real_images_accuracy", "layout": "real_images_mean_iou", "semantic": "real_images_miou",
                "sr": "bicubic_psnr", "inpaint": "mean_fill_psnr_inside"}[task]
    assert expected in report["metrics"], report["metrics"]
    # the sample-health rule on the sampler's latents, as `ldmkit eval` reports it
    assert report["health"]["n"] == 3 and report["health"]["measured_on"] == "the sampler's latents"
    assert report["metrics"]["off_manifold"] == report["health"]["off_manifold_share"]
    assert (tmp_path / "grid.png").is_file()


def test_hybrid_text_and_low_res_conditioning(tiny_ae, tmp_path):
    """Concat and cross-attention together: a caption-guided super-resolution model."""
    cfg = load_config(LDMRunConfig, "tiny/ldm-sr", [
        f"train.out_dir={tmp_path}", f"first_stage={tiny_ae}", "train.steps=1", "train.sample_every=100",
        "conditioner.kind=text", "conditioner.embed_dim=16", "conditioner.max_length=16", "conditioner.n_layer=1",
        "conditioner.n_head=2", "unet.context_dim=16"])
    pipe = Pipeline.load(train_ldm(cfg))
    x = pipe(prompt="a red circle", low_res=torch.zeros(3, 8, 8), num_inference_steps=2, guidance_scale=2.0,
             seeds=[0], output_type="pt")
    assert x.shape == (1, 3, 16, 16)
    with pytest.raises(ValueError, match="pass low_res"):
        pipe(prompt="a red circle", num_inference_steps=2)


def _png(path, array, mode=None):
    from PIL import Image
    import numpy as np

    Image.fromarray(np.asarray(array, dtype=np.uint8), mode).save(path)
    return str(path)


@pytest.mark.parametrize("task", TASKS)
def test_sample_cli_takes_each_tasks_input(trained, task, tmp_path, capsys):
    import numpy as np

    from ldmkit.cli.main import main

    flags = {
        "text": ["--prompt", "a red circle", "--negative-prompt", "a blue square"],
        "layout": ["--boxes", '[["red circle", 0.1, 0.1, 0.6, 0.6], [4, 0.6, 0.6, 0.9, 0.9]]'],
        "semantic": ["--segmentation", _png(tmp_path / "seg.png", np.pad(np.full((8, 8), 3), 4), "L")],
        "sr": ["--low-res", _png(tmp_path / "low.png", np.full((8, 8, 3), 200))],
        "inpaint": ["--image", _png(tmp_path / "img.png", np.full((16, 16, 3), 90)),
                    "--mask", _png(tmp_path / "mask.png", np.pad(np.full((8, 8), 255), 4), "L")],
    }[task]
    out = tmp_path / "out"
    code = main(["sample", str(trained[task]), *flags, "--n", "2", "--steps", "2", "--device", "cpu", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    assert len(list(out.glob("0000*_seed*.png"))) == 2 and (out / "grid.png").is_file()


def test_sample_cli_names_bad_task_input(trained, tmp_path, capsys):
    from ldmkit.cli.main import main

    assert main(["sample", str(trained["layout"]), "--boxes", "[[1, 0.5, 0.5, 0.2, 0.9]]", "--steps", "1",
                 "--out", str(tmp_path)]) == 2
    assert "--boxes: box" in capsys.readouterr().err
    assert main(["sample", str(trained["text"]), "--steps", "1", "--out", str(tmp_path)]) == 2
    assert "pass --prompt" in capsys.readouterr().err
