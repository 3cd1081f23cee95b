"""DataConfig validation, build_dataset dispatch and collate."""
import pytest
import torch
from torch.utils.data import DataLoader

from ldmkit.config import ConfigError, from_dict
from ldmkit.data import DataConfig, Shapes, build_dataset, collate


@pytest.mark.parametrize("kwargs,key", [({"channels": 2}, "channels"), ({"image_size": 4}, "image_size"),
                                        ({"max_objects": 0}, "max_objects"),
                                        ({"name": "image_folder"}, "root")])
def test_config_validation(kwargs, key):
    with pytest.raises(ConfigError, match=f"^{key}:"):
        DataConfig(**kwargs)


def test_config_from_dict_and_build():
    cfg = from_dict(DataConfig, {"name": "shapes", "shapes_size": "12", "image_size": 16})
    ds = build_dataset(cfg, "test")
    assert isinstance(ds, Shapes) and len(ds) == 1 and ds[0]["image"].shape == (3, 16, 16)
    with pytest.raises(ConfigError, match="split"):
        build_dataset(cfg, "val")


def test_collate_stacks_tensors_and_keeps_strings():
    ds = Shapes(DataConfig(shapes_size=4))
    batch = next(iter(DataLoader(ds, batch_size=4, collate_fn=collate)))
    assert batch["image"].shape == (4, 3, 32, 32) and batch["label"].shape == (4,)
    assert batch["boxes"].shape == (4, 2, 5) and batch["segmentation"].shape == (4, 32, 32)
    assert isinstance(batch["caption"], list) and batch["caption"][0] == ds[0]["caption"]
    assert collate([{"x": 1}, {"x": 2}])["x"].tolist() == [1, 2]


def test_collate_rejects_mismatched_keys():
    with pytest.raises(ValueError, match="label"):
        collate([{"image": torch.zeros(1)}, {"image": torch.zeros(1), "label": 1}])
    with pytest.raises(ValueError, match="label"):
        collate([{"image": torch.zeros(1), "label": 1}, {"image": torch.zeros(1)}])
    with pytest.raises(ValueError):
        collate([])
