"""Lightning checkpoints (state_dict + pickled callbacks / OmegaConf hparams) load without running code.

The fake checkpoint is written by torch.save with throw-away modules registered in sys.modules; their
classes touch a sentinel file when the full unpickler rebuilds them (checked by the control test)."""
import logging
import os
import sys
import types
import typing
import uuid
import zipfile
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from ldmkit.convert import load_state_dict_file
from ldmkit.convert.restricted_pickle import ForeignObject, restricted_load


def _touch(path):
    Path(path).write_text("executed")


class _Exploit:
    """Unpickling this runs a shell command."""

    def __init__(self, sentinel):
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.system, (f"touch {self.sentinel}",))


class Fakes:
    """Throw-away stand-ins for pytorch_lightning / omegaconf, living in sys.modules while saving."""

    def __init__(self):
        tag = uuid.uuid4().hex[:8]
        self.pl, self.oc = f"fake_pl_{tag}", f"fake_omegaconf_{tag}"
        self.modules = {name: types.ModuleType(name) for name in
                        (self.pl, f"{self.pl}.callbacks", self.oc, f"{self.oc}.dictconfig", f"{self.oc}.nodes")}

        def restore_checkpoint_callback(sentinel, state):  # what ModelCheckpoint's reduce calls
            _touch(sentinel)
            return state

        class ModelCheckpoint:
            def __init__(self, sentinel):
                self.sentinel = sentinel

            def __reduce__(self):
                return (restore_checkpoint_callback, (self.sentinel, {"best_model_score": 0.5}))

        class ContainerMetadata:
            def __init__(self, ref_type):
                self.ref_type = ref_type

        class AnyNode:
            def __init__(self, value):
                self._val = value

        class DictConfig:
            def __init__(self, sentinel, content):
                self.__dict__.update(sentinel=sentinel, _metadata=ContainerMetadata(typing.Any), _content=content)

            def __setstate__(self, state):
                _touch(state["sentinel"])
                self.__dict__.update(state)

        self._put(f"{self.pl}.callbacks", restore_checkpoint_callback, ModelCheckpoint)
        self._put(f"{self.oc}.dictconfig", DictConfig)
        self._put(f"{self.oc}.nodes", AnyNode, ContainerMetadata)
        self.ModelCheckpoint, self.DictConfig, self.AnyNode = ModelCheckpoint, DictConfig, AnyNode

    def _put(self, module, *objs):
        for obj in objs:
            obj.__module__, obj.__qualname__ = module, obj.__name__
            setattr(self.modules[module], obj.__name__, obj)

    def register(self):
        sys.modules.update(self.modules)

    def unregister(self):
        for name in self.modules:
            sys.modules.pop(name, None)

    def hparams(self, sentinel):
        return self.DictConfig(str(sentinel), {"lr": self.AnyNode(1e-4), "channels": self.AnyNode(64)})


@pytest.fixture
def fakes():
    f = Fakes()
    f.register()
    yield f
    f.unregister()


def _state_dict():
    base = torch.randn(4, 6)
    return OrderedDict([
        ("model.diffusion_model.out.weight", torch.randn(3, 5)),
        ("first_stage_model.w16", torch.randn(7).half()),
        ("cond_stage_model.wbf16", torch.randn(2, 3).bfloat16()),
        ("steps", torch.tensor([1, -2, 2**40])),
        ("base", base),
        ("view_t", base.t()),  # non-contiguous, same storage as "base"
        ("view_slice", base[1:, ::2]),  # storage offset + strides
        ("model_ema.decay", torch.tensor(0.9999)),
        ("model_ema.num_updates", torch.tensor(10, dtype=torch.int)),
        ("model_ema.diffusion_modelout.weight", torch.randn(3, 5)),
    ])


def _lightning_ckpt(fakes, sentinel, sd):
    return {
        "epoch": 3,
        "global_step": 10,
        "pytorch-lightning_version": "1.4.2",
        "state_dict": sd,
        "callbacks": {fakes.ModelCheckpoint: fakes.ModelCheckpoint(str(sentinel))},
        "optimizer_states": [{"state": {0: {"exp_avg": torch.ones(3)}}, "param_groups": [{"lr": 1e-4, "params": [0]}]}],
        "lr_schedulers": [],
        "loops": {"seen": {1, 2}, "frozen": frozenset({"a"}), "raw": b"\x00\xff", "cut": slice(1, 5, 2)},
        "hyper_parameters": fakes.hparams(sentinel),
    }


def _bits(t):
    return t.detach().contiguous().flatten().view(torch.uint8)


def test_control_the_fakes_do_execute_under_the_full_unpickler(fakes, tmp_path):
    sentinel = tmp_path / "SENTINEL"
    torch.save(_lightning_ckpt(fakes, sentinel, _state_dict()), tmp_path / "m.ckpt")
    with pytest.raises(Exception, match="Unsupported global"):
        torch.load(tmp_path / "m.ckpt", weights_only=True)
    assert not sentinel.exists()
    torch.load(tmp_path / "m.ckpt", weights_only=False)  # our own file: proves the test can fail
    assert sentinel.exists()


@pytest.mark.parametrize("lazy", [False, True], ids=["read", "mmap"])
def test_lightning_checkpoint_loads_bit_identical_and_runs_nothing(fakes, tmp_path, caplog, lazy):
    sentinel = tmp_path / "SENTINEL"
    sd = _state_dict()
    torch.save(_lightning_ckpt(fakes, sentinel, sd), tmp_path / "m.ckpt")
    fakes.unregister()  # unknown at load time, as on a user's machine
    before = (tmp_path / "m.ckpt").read_bytes()
    with caplog.at_level(logging.WARNING, logger="ldmkit.convert.safe_load"):
        out = load_state_dict_file(tmp_path / "m.ckpt", lazy=lazy)
    assert not sentinel.exists()
    assert list(out) == list(sd)
    for k, v in sd.items():
        w = out[k]
        assert type(w) is torch.Tensor and w.dtype == v.dtype and w.shape == v.shape, k
        assert w.stride() == v.stride() and w.storage_offset() == v.storage_offset(), k
        assert torch.equal(_bits(w), _bits(v)), k
    assert not out["view_t"].is_contiguous()
    assert out["view_t"].untyped_storage().data_ptr() == out["base"].untyped_storage().data_ptr()
    out["base"][2, 4] = 123.0  # shared memory, not two copies
    assert out["view_t"][4, 2] == 123.0 and out["view_slice"][1, 2] == 123.0
    del out
    assert (tmp_path / "m.ckpt").read_bytes() == before  # a mapped file is copy-on-write: never written

    (record,) = caplog.records
    msg = record.getMessage()
    assert "ignored callbacks, hyper_parameters (" in msg and msg.endswith("— not executed")
    assert f"{fakes.pl}.callbacks.ModelCheckpoint" in msg and f"{fakes.oc}.dictconfig.DictConfig" in msg
    assert "optimizer_states" not in msg and "epoch" not in msg  # plain entries are not foreign


def _anon_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    raise AssertionError("no RssAnon")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the process's memory from /proc")
def test_lazy_lightning_checkpoint_is_mapped_not_read(fakes, tmp_path):
    """A released .ckpt takes the restricted reader; lazily its 64 MiB of storages must not land in fresh
    memory (they are pages of the file until touched), and a compressed archive still reads (no map)."""
    sentinel = tmp_path / "SENTINEL"
    big = torch.randn(16 * 1024 * 1024)  # 64 MiB
    torch.save(_lightning_ckpt(fakes, sentinel, {"w": big}), tmp_path / "m.ckpt")
    fakes.unregister()
    start = _anon_kib()
    out = load_state_dict_file(tmp_path / "m.ckpt", lazy=True)
    grown = _anon_kib() - start
    assert grown < 16 * 1024, f"{grown} KiB of fresh memory for a mapped 64 MiB checkpoint"
    assert torch.equal(out["w"], big)
    del out
    with zipfile.ZipFile(tmp_path / "m.ckpt") as src, \
            zipfile.ZipFile(tmp_path / "z.ckpt", "w", compression=zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    assert torch.equal(load_state_dict_file(tmp_path / "z.ckpt", lazy=True)["w"], big)


def test_foreign_globals_are_never_resolved_even_when_importable(fakes, tmp_path):
    sentinel = tmp_path / "SENTINEL"
    torch.save(_lightning_ckpt(fakes, sentinel, _state_dict()), tmp_path / "m.ckpt")
    # the fake modules stay in sys.modules: an unpickler that looked them up would touch the sentinel
    out = load_state_dict_file(tmp_path / "m.ckpt")
    assert "base" in out and not sentinel.exists()


def test_restricted_load_keeps_plain_data_and_inert_placeholders(fakes, tmp_path):
    sentinel = tmp_path / "SENTINEL"
    torch.save(_lightning_ckpt(fakes, sentinel, _state_dict()), tmp_path / "m.ckpt")
    fakes.unregister()
    res = restricted_load(tmp_path / "m.ckpt")
    obj = res.obj
    assert obj["epoch"] == 3 and obj["pytorch-lightning_version"] == "1.4.2"
    assert obj["loops"] == {"seen": {1, 2}, "frozen": frozenset({"a"}), "raw": b"\x00\xff", "cut": slice(1, 5, 2)}
    assert torch.equal(obj["optimizer_states"][0]["state"][0]["exp_avg"], torch.ones(3))
    ((key, cb),) = obj["callbacks"].items()
    assert issubclass(key, ForeignObject) and key._ldm_global == f"{fakes.pl}.callbacks.ModelCheckpoint"
    # calling the placeholder of restore_checkpoint_callback built a placeholder holding the arguments
    assert isinstance(cb, ForeignObject) and cb.args == (str(sentinel), {"best_model_score": 0.5})
    hp = obj["hyper_parameters"]
    assert hp._ldm_global == f"{fakes.oc}.dictconfig.DictConfig" and hp.state["_content"]["lr"].state == {"_val": 1e-4}
    assert hp.state["_metadata"].state["ref_type"]._ldm_global == "typing.Any"  # not the real typing.Any
    assert set(res.foreign) == {f"{fakes.pl}.callbacks.ModelCheckpoint",
                                f"{fakes.pl}.callbacks.restore_checkpoint_callback",
                                f"{fakes.oc}.dictconfig.DictConfig", f"{fakes.oc}.nodes.AnyNode",
                                f"{fakes.oc}.nodes.ContainerMetadata", "typing.Any"}
    assert not sentinel.exists()


def test_state_dict_holding_a_foreign_object_is_refused(fakes, tmp_path):
    sentinel = tmp_path / "SENTINEL"
    sd = {"w": torch.zeros(2), "config": fakes.hparams(sentinel)}
    torch.save(_lightning_ckpt(fakes, sentinel, sd), tmp_path / "m.ckpt")
    fakes.unregister()
    with pytest.raises(ValueError, match="refusing to load: the pickle needs code execution") as e:
        load_state_dict_file(tmp_path / "m.ckpt")
    assert "state_dict itself holds foreign objects" in str(e.value) and "DictConfig" in str(e.value)
    assert "\n" not in str(e.value) and not sentinel.exists()


def test_os_system_in_a_zip_checkpoint(tmp_path, caplog):
    sentinel = tmp_path / "SENTINEL"
    torch.save({"state_dict": {"w": _Exploit(sentinel)}}, tmp_path / "evil.ckpt")
    with pytest.raises(ValueError, match=r"refusing to load.*state_dict itself holds foreign objects: \w+\.system"):
        load_state_dict_file(tmp_path / "evil.ckpt")
    # outside the state_dict it is dropped, still never called
    torch.save({"state_dict": {"w": torch.ones(2)}, "callbacks": [_Exploit(sentinel)]}, tmp_path / "cb.ckpt")
    with caplog.at_level(logging.WARNING, logger="ldmkit.convert.safe_load"):
        assert torch.equal(load_state_dict_file(tmp_path / "cb.ckpt")["w"], torch.ones(2))
    assert "ignored callbacks (" in caplog.text and ".system" in caplog.text
    assert not sentinel.exists()


def test_legacy_format_with_foreign_objects_is_refused_clearly(fakes, tmp_path):
    sentinel = tmp_path / "SENTINEL"
    torch.save(_lightning_ckpt(fakes, sentinel, {"w": torch.ones(1)}), tmp_path / "old.ckpt",
               _use_new_zipfile_serialization=False)
    fakes.unregister()
    with pytest.raises(ValueError, match="refusing to load.*only torch zip checkpoints are read") as e:
        load_state_dict_file(tmp_path / "old.ckpt")
    assert "\n" not in str(e.value) and not sentinel.exists()


def test_truncated_storage_record_is_refused(fakes, tmp_path):
    sentinel = tmp_path / "SENTINEL"
    ckpt = _lightning_ckpt(fakes, sentinel, {"w": torch.ones(2)})
    ckpt["optimizer_states"] = [{"m": torch.ones(8)}]  # after callbacks: only the restricted reader meets it
    torch.save(ckpt, tmp_path / "m.ckpt")
    fakes.unregister()
    with zipfile.ZipFile(tmp_path / "m.ckpt") as src, zipfile.ZipFile(tmp_path / "cut.ckpt", "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            dst.writestr(info.filename, data[:-4] if "/data/" in info.filename and len(data) == 32 else data)
    with pytest.raises(ValueError, match="restricted read failed: UnpicklingError: storage record .* not 32 bytes"):
        load_state_dict_file(tmp_path / "cut.ckpt")


def test_plain_and_nested_ema_checkpoints_take_the_weights_only_path(tmp_path, caplog):
    sd = _state_dict()
    torch.save(sd, tmp_path / "plain.ckpt")
    torch.save({"state_dict": sd, "epoch": 1, "global_step": 5}, tmp_path / "wrapped.ckpt")
    with caplog.at_level(logging.WARNING, logger="ldmkit.convert.safe_load"):
        for name in ("plain.ckpt", "wrapped.ckpt"):
            out = load_state_dict_file(tmp_path / name)
            assert list(out) == list(sd) and all(torch.equal(_bits(out[k]), _bits(v)) for k, v in sd.items())
    assert not caplog.records
