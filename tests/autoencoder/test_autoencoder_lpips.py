import pytest
import torch
from safetensors.torch import save_file

from ldmkit.autoencoder import LPIPS


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A random but valid LPIPS state dict (non-negative heads, like the released ones) on disk."""
    torch.manual_seed(0)
    model = LPIPS()
    for k in range(5):
        lin = getattr(model, f"lin{k}").model[1].weight
        lin.data = lin.data.abs()
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    path = tmp_path_factory.mktemp("lpips") / "lpips.pt"
    torch.save(sd, path)
    return path, sd


def test_key_layout_follows_taming_and_torchvision_indices():
    keys = set(LPIPS().state_dict())
    for key in ["scaling_layer.shift", "net.slice1.0.weight", "net.slice1.2.bias", "net.slice2.5.weight",
                "net.slice3.14.weight", "net.slice4.17.weight", "net.slice5.28.weight", "lin0.model.1.weight",
                "lin4.model.1.weight"]:
        assert key in keys, key
    assert not any(k.startswith("lin") and k.endswith("bias") for k in keys)
    assert len([k for k in keys if k.startswith("net.")]) == 26  # 13 convs x (weight, bias)


def test_from_file_roundtrip_and_frozen(weights):
    path, sd = weights
    model = LPIPS.from_file(path)
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k]), k
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    model.train()
    assert not model.training


def test_safetensors_without_scaling_layer(weights, tmp_path):
    path, sd = weights
    st = tmp_path / "lpips.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items() if not k.startswith("scaling_layer.")}, str(st))
    model = LPIPS.from_file(st)
    assert torch.equal(model.lin3.model[1].weight, sd["lin3.model.1.weight"])
    assert torch.allclose(model.scaling_layer.scale.flatten(), torch.tensor([0.458, 0.448, 0.450]))


def test_torchvision_vgg_plus_lpips_heads(weights, tmp_path):
    _, sd = weights
    vgg = {}
    for k, v in sd.items():
        if k.startswith("net."):
            _, _, idx, name = k.split(".")
            vgg[f"features.{idx}.{name}"] = v
    vgg["classifier.0.weight"] = torch.zeros(2, 2)  # torchvision's head is ignored
    lin = {k: v for k, v in sd.items() if k.startswith("lin")}
    torch.save(vgg, tmp_path / "vgg16.pth")
    torch.save(lin, tmp_path / "vgg.pth")
    model = LPIPS.from_file(f"{tmp_path / 'vgg16.pth'},{tmp_path / 'vgg.pth'}")
    assert torch.equal(getattr(model.net.slice4, "19").weight, sd["net.slice4.19.weight"])
    assert torch.equal(model.lin0.model[1].weight, sd["lin0.model.1.weight"])


def test_missing_file_and_bad_keys(weights, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        LPIPS.from_file(tmp_path / "nope.pt")
    _, sd = weights
    broken = {k: v for k, v in sd.items() if k != "lin2.model.1.weight"}
    broken["extra.weight"] = torch.zeros(1)
    torch.save(broken, tmp_path / "broken.pt")
    with pytest.raises(ValueError, match=r"lin2\.model\.1\.weight.*extra\.weight"):
        LPIPS.from_file(tmp_path / "broken.pt")


def test_distance_zero_for_identical_positive_otherwise(weights):
    model = LPIPS.from_file(weights[0])
    torch.manual_seed(0)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    y = (x + 0.3 * torch.randn_like(x)).clamp(-1, 1)
    with torch.no_grad():
        assert torch.allclose(model(x, x), torch.zeros(2), atol=1e-6)
        d = model(x, y)
        assert d.shape == (2,) and (d > 0).all()
        gray = model(x[:, :1], y[:, :1])
        assert torch.allclose(gray, model(x[:, :1].repeat(1, 3, 1, 1), y[:, :1].repeat(1, 3, 1, 1)))
