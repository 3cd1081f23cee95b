from dataclasses import dataclass, field

import pytest

from ldmkit.config import ConfigError, apply_overrides, from_dict, load_config, require, to_dict


@dataclass
class Inner:
    size: int = 32
    mult: tuple[int, ...] = (1, 2)
    name: str | None = None

    def __post_init__(self):
        require(self.size % 4 == 0, "size", f"{self.size} is not divisible by 4")


@dataclass
class Outer:
    inner: Inner = field(default_factory=Inner)
    lr: float = 1e-3
    flag: bool = False


def test_nested_round_trip():
    cfg = from_dict(Outer, {"inner": {"size": 64, "mult": [1, 2, 4]}, "lr": "2e-4", "flag": "true"})
    assert cfg.inner.mult == (1, 2, 4) and cfg.lr == 2e-4 and cfg.flag is True
    assert from_dict(Outer, to_dict(cfg)) == cfg


@pytest.mark.parametrize("data, key", [
    ({"inner": {"sise": 3}}, "inner.sise"),
    ({"lr": "fast"}, "lr"),
    ({"inner": {"size": 30}}, "inner.size"),
    ({"inner": {"size": 1.5}}, "inner.size"),
    ({"flag": "maybe"}, "flag"),
])
def test_errors_name_the_key(data, key):
    with pytest.raises(ConfigError) as e:
        from_dict(Outer, data)
    msg = str(e.value)
    assert msg.startswith(key + ":") and "\n" not in msg


def test_overrides_parse_yaml_values():
    d = apply_overrides({}, ["inner.size=16", "inner.mult=[1,1]", "lr=0.5", "inner.name=abc"])
    cfg = from_dict(Outer, d)
    assert cfg.inner == Inner(16, (1, 1), "abc") and cfg.lr == 0.5
    with pytest.raises(ConfigError, match="expected section.key=value"):
        apply_overrides({}, ["nonsense"])


def test_presets_load():
    from ldmkit.training.autoencoder_loop import AutoencoderRunConfig
    from ldmkit.training.ldm_loop import LDMRunConfig

    ae = load_config(AutoencoderRunConfig, "autoencoder/kl-f4-fmnist")
    assert ae.model.downsample_factor == 4 and ae.model.latent_shape == (3, 8, 8)
    ldm = load_config(LDMRunConfig, "ldm/fmnist-class", ["train.steps=7"])
    assert ldm.train.steps == 7 and ldm.unet.context_dim == ldm.conditioner.embed_dim
    with pytest.raises(ConfigError, match="model.resolution"):
        load_config(AutoencoderRunConfig, "autoencoder/kl-f4-fmnist", ["model.resolution=30", "data.image_size=30"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(AutoencoderRunConfig, "autoencoder/does-not-exist")
