"""``ldmkit sample`` with every sampler name, img2img (--image --strength) and inpainting (--mask)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from ldmkit.autoencoder import AutoencoderConfig
from ldmkit.cli.main import main
from ldmkit.diffusion import ScheduleConfig
from ldmkit.imageio import from_pil
from ldmkit.nn import ConditionerConfig, UNetConfig
from ldmkit.pipeline import Pipeline, PipelineConfig


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one intra-op thread is faster


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    cfg = PipelineConfig(
        autoencoder=AutoencoderConfig(resolution=16, ch=32, ch_mult=(1, 2), num_res_blocks=1, z_channels=3,
                                      embed_dim=3),
        unet=UNetConfig(in_channels=3, out_channels=3, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                        attention_resolutions=(2,), num_heads=2, context_dim=16),
        conditioner=ConditionerConfig(kind="class", num_classes=3, embed_dim=16),
        diffusion=ScheduleConfig(timesteps=100), scale_factor=0.5, class_names=["a", "b", "c"])
    pipe = Pipeline(cfg)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for t in pipe.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.randn(t.shape, generator=g) * 0.2)
    pipe.save(root / "pipe.safetensors")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / "image.png")
    mask = np.zeros((16, 16), dtype=np.uint8)
    mask[4:12, 4:12] = 255
    Image.fromarray(mask).save(root / "mask.png")
    return root


def sample(files, out, *args):
    return main(["sample", str(files / "pipe.safetensors"), "--class", "b", "--n", "1", "--steps", "3",
                 "--device", "cpu", "--out", str(files / out), *args])


@pytest.mark.parametrize("name", ["plms", "dpmpp_2m", "DPMSolverMultistepScheduler", "euler", "euler_a", "heun",
                                  "HeunDiscreteScheduler"])
def test_every_sampler_name_samples(files, name):
    assert sample(files, name, "--sampler", name) == 0
    meta = json.loads(Image.open(next((files / name).glob("0*.png"))).text["ldmkit"])
    assert meta["sampler"] in ("plms", "dpmpp_2m", "euler", "euler_ancestral", "heun") and meta["steps"] == 3


def test_inpainting_keeps_the_known_pixels(files):
    assert sample(files, "inpaint", "--sampler", "euler_a", "--karras", "--image", str(files / "image.png"),
                  "--mask", str(files / "mask.png")) == 0
    out = np.asarray(Image.open(next((files / "inpaint").glob("0*.png"))))
    src = np.asarray(Image.open(files / "image.png"))
    known = np.asarray(Image.open(files / "mask.png")) == 0
    np.testing.assert_array_equal(out[known], src[known])
    assert np.abs(out[~known].astype(int) - src[~known]).max() > 10


def test_img2img_strength_0_is_the_reconstruction(files):
    assert sample(files, "i2i", "--sampler", "dpmpp_2m", "--image", str(files / "image.png"), "--strength", "0") == 0
    path = next((files / "i2i").glob("0*.png"))
    meta = json.loads(Image.open(path).text["ldmkit"])
    assert meta["strength"] == 0.0 and meta["sampler"] == "dpmpp_2m"
    pipe = Pipeline.load(files / "pipe.safetensors")
    x = from_pil(Image.open(files / "image.png"), 3)[None]
    rec = pipe.decode_latents(pipe.encode_latents(x, sample=False)).clamp(-1, 1)[0]
    got = from_pil(Image.open(path), 3)
    assert (got - rec).abs().max() <= 1 / 127.5 + 1e-6  # equal up to 8-bit rounding


@pytest.mark.parametrize("args, needle", [
    (["--sampler", "lms"], "unknown 'lms'"),
    (["--sampler", "heun", "--eta", "0.5"], "sampler heun: no option eta"),
    (["--strength", "0.5"], "--strength given without --image"),
])
def test_sampler_mistakes_are_one_line(files, capsys, args, needle):
    assert sample(files, "err", *args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]
