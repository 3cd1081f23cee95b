"""Foreign weights are read without executing code: safetensors, or torch.load(weights_only=True)."""
import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

from ldmkit.convert import load_state_dict_file


class _Exploit:
    """Unpickling this runs a shell command: what a malicious checkpoint would do."""

    def __init__(self, sentinel):
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.system, (f"touch {self.sentinel}",))


def test_pickled_callable_is_refused_and_never_runs(tmp_path):
    sentinel = tmp_path / "SENTINEL"
    path = tmp_path / "evil.ckpt"
    path.write_bytes(pickle.dumps({"state_dict": {"w": _Exploit(sentinel)}}, protocol=2))
    with pytest.raises(ValueError, match="refusing to load: the pickle needs code execution") as e:
        load_state_dict_file(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    assert not sentinel.exists()


def test_lightning_wrapper_is_removed(tmp_path):
    w = torch.randn(3, 2)
    torch.save({"state_dict": {"a.weight": w}, "global_step": 7, "epoch": 1}, tmp_path / "m.ckpt")
    sd = load_state_dict_file(tmp_path / "m.ckpt")
    assert list(sd) == ["a.weight"] and torch.equal(sd["a.weight"], w)


def test_plain_pt_and_safetensors(tmp_path):
    w = torch.randn(4)
    torch.save({"w": w}, tmp_path / "m.pt")
    save_file({"w": w}, str(tmp_path / "m.safetensors"))
    for name in ("m.pt", "m.safetensors"):
        assert torch.equal(load_state_dict_file(tmp_path / name)["w"], w)


def test_missing_file_and_unknown_suffix(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        load_state_dict_file(tmp_path / "nope.ckpt")
    (tmp_path / "w.npz").write_bytes(b"x")
    with pytest.raises(ValueError, match="unknown weights format"):
        load_state_dict_file(tmp_path / "w.npz")


def test_non_tensor_entries_are_rejected(tmp_path):
    torch.save({"state_dict": {"w": torch.zeros(1), "note": "hi"}}, tmp_path / "m.ckpt")
    with pytest.raises(ValueError, match="note"):
        load_state_dict_file(tmp_path / "m.ckpt")
