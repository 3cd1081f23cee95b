"""Generate the bad-input corpus: what users feed ldmkit without meaning to, each case with its expected outcome.

    python tests/data/bad/make_corpus.py [OUT]      # default: tests/data/bad/corpus (git-ignored)

The suite builds the same corpus in a temporary folder (``tests/data/test_bad_inputs.py``); nothing here is
hand-picked to pass: every file is made from a recipe, and each recipe states what must happen:

- ``images/``: one image folder. ``loads`` (decoded to a finite (3, 16, 16) tensor in [-1, 1]) or ``skipped``
  (counted in ``ImageFolder.skipped`` / ``verify()``, the run goes on);
- ``captions/<case>/``: image folders whose captions are broken: a one-line ``error`` naming the file, or
  ``loads`` (empty captions train as the empty prompt and are counted);
- ``configs/``: YAML presets: a one-line ``error`` naming the key (exit code 2);
- ``weights/``: checkpoints: a one-line ``error`` naming the file (exit code 2), never code execution;
- ``shards/``: tar shards: a truncated one is a one-line ``error`` naming it when the stream reaches it.
"""
from __future__ import annotations

import io
import json
import os
import struct
import sys
import tarfile
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image


@dataclass
class Case:
    path: str            # relative to the corpus root
    kind: str            # image | captions | config | weights | shard
    expect: str          # loads | skipped | error
    match: str = ""      # a substring the error must contain ("{path}": the case's own path)
    note: str = ""


def _png(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kw)
    return buf.getvalue()


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(width: int = 20000, height: int = 20000) -> bytes:
    """A PNG header claiming width x height pixels (a decompression bomb), with a tiny IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + \
        _chunk(b"IEND", b"")


def _photo(rng: np.random.Generator, w: int = 24, h: int = 20) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def image_cases(root: Path, rng: np.random.Generator) -> list[Case]:
    d = root / "images"
    d.mkdir(parents=True)
    photo = _photo(rng)
    files: dict[str, tuple[bytes, str, str]] = {
        "good.png": (_png(photo), "loads", ""),
        "good.jpg": (_save(photo, "JPEG", quality=90), "loads", ""),
        "good.webp": (_save(photo, "WEBP"), "loads", ""),
        "cmyk.jpg": (_save(photo.convert("CMYK"), "JPEG"), "loads", "CMYK JPEG"),
        "grey16.png": (_png(Image.fromarray((rng.integers(0, 65536, (20, 24))).astype(np.uint16))), "loads",
                       "16-bit grey: scaled to 8 bits, not clipped"),
        "palette.png": (_png(photo.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)), "loads", ""),
        "palette_transparent.png": (_png(photo.convert("P", palette=Image.Palette.ADAPTIVE, colors=16),
                                         transparency=0), "loads", ""),
        "grey_alpha.png": (_png(photo.convert("LA")), "loads", "LA: composited over white"),
        "rgba.png": (_png(photo.convert("RGBA")), "loads", ""),
        "one_pixel.png": (_png(Image.new("RGB", (1, 1), (10, 200, 30))), "loads", "1x1: resized up"),
        "tall.png": (_png(Image.new("RGB", (3, 300), (0, 0, 255))), "loads", "extreme aspect ratio"),
        "bmp.bmp": (_save(photo, "BMP"), "loads", ""),
        "UPPER.PNG": (_png(photo), "loads", "upper-case extension"),
        "zero.png": (b"", "skipped", "zero bytes"),
        "zero.jpg": (b"", "skipped", "zero bytes"),
        "zero.webp": (b"", "skipped", "zero bytes"),
        "truncated.png": (_png(photo)[:120], "skipped", "truncated"),
        "truncated.jpg": (_save(photo, "JPEG")[:300], "skipped", "truncated"),
        "truncated.webp": (_save(photo, "WEBP")[:60], "skipped", "truncated"),
        "bad_crc.png": (_png(photo)[:40] + b"\xff\xff" + _png(photo)[42:], "skipped", "corrupted chunk"),
        "bomb.png": (bomb_png(), "skipped", "20000x20000 header: decompression bomb"),
        "text.png": (b"this is not an image\n", "skipped", "text with an image extension"),
        "html.jpg": (b"<html><body>404 Not Found</body></html>", "skipped", "a saved error page"),
        "random.webp": (rng.integers(0, 256, 512, dtype=np.uint8).tobytes(), "skipped", "random bytes"),
        "gif_named.png": (_save(photo, "GIF"), "loads", "a GIF with a .png name: PIL reads it"),
    }
    cases = []
    for name, (data, expect, note) in files.items():
        (d / name).write_bytes(data)
        cases.append(Case(f"images/{name}", "image", expect, note=note))
    for orientation in (3, 6, 8):  # EXIF rotations: the stored pixels are turned, the tag says how to show them
        img = Image.new("RGB", (24, 12), (255, 0, 0))
        img.paste((0, 0, 255), (12, 0, 24, 12))  # right half blue as stored
        exif = img.getexif()
        exif[0x0112] = orientation
        (d / f"exif_{orientation}.jpg").write_bytes(_save(img, "JPEG", exif=exif.tobytes(), quality=95))
        cases.append(Case(f"images/exif_{orientation}.jpg", "image", "loads", note=f"EXIF orientation {orientation}"))
    # symlinks: a loop to the folder itself, a link to itself, a dangling link; none may hang or crash the scan
    os.symlink(".", d / "loop")
    os.symlink("self.png", d / "self.png")
    os.symlink("missing.png", d / "dangling.png")
    cases += [Case("images/loop", "image", "skipped", note="symlink loop (a directory): not followed"),
              Case("images/self.png", "image", "skipped", note="a symlink to itself"),
              Case("images/dangling.png", "image", "skipped", note="a dangling symlink")]
    (d / ".hidden.png").write_bytes(_png(photo))
    cases.append(Case("images/.hidden.png", "image", "skipped", note="hidden file: not scanned"))
    return cases


def caption_cases(root: Path, rng: np.random.Generator) -> list[Case]:
    cases = []

    def folder(name: str, n: int = 3) -> Path:
        d = root / "captions" / name
        d.mkdir(parents=True)
        for k in range(n):
            (d / f"img{k}.png").write_bytes(_png(_photo(rng)))
        return d

    d = folder("broken_jsonl")
    lines = [json.dumps({"file_name": "img0.png", "text": "a cat"}), '{"file_name": "img1.png", "text": "a d',
             json.dumps({"file_name": "img2.png", "text": "a bird"})]
    (d / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    cases.append(Case("captions/broken_jsonl", "captions", "error", "metadata.jsonl:2", "a cut JSON line"))
    d = folder("jsonl_wrong_keys")
    (d / "metadata.jsonl").write_text(json.dumps({"image": "img0.png", "caption": "x"}) + "\n")
    cases.append(Case("captions/jsonl_wrong_keys", "captions", "error", "metadata.jsonl:1", "no file_name"))
    d = folder("latin1_sidecar")
    (d / "img1.txt").write_bytes("une photo de caf\xe9".encode("latin-1"))
    cases.append(Case("captions/latin1_sidecar", "captions", "error", "img1.txt:1: not UTF-8", "latin-1 bytes"))
    d = folder("latin1_jsonl")
    (d / "metadata.jsonl").write_bytes(b'{"file_name": "img0.png", "text": "caf\xe9"}\n')
    cases.append(Case("captions/latin1_jsonl", "captions", "error", "metadata.jsonl:1: not UTF-8", ""))
    d = folder("empty_captions")
    (d / "img0.txt").write_text("a red circle")
    (d / "img1.txt").write_text("")
    (d / "img2.txt").write_text("   \n")
    cases.append(Case("captions/empty_captions", "captions", "loads", "2 empty", "empty captions are counted"))
    d = folder("bom_sidecar")
    for k in range(3):
        (d / f"img{k}.txt").write_bytes("\ufeffa photo".encode("utf-8"))
    cases.append(Case("captions/bom_sidecar", "captions", "loads", "", "UTF-8 with a byte-order mark"))
    d = folder("captions_json_not_mapping")
    (d / "captions.json").write_text('["a cat", "a dog"]')
    cases.append(Case("captions/captions_json_not_mapping", "captions", "error", "captions.json: expected one mapping"))
    return cases


CONFIGS = {  # name: (YAML text, the substring the one-line error must hold)
    "wrong_type.yaml": ("train:\n  steps: ten\n", "train.steps: expected an integer, got 'ten'"),
    "float_steps.yaml": ("train:\n  steps: 2.5\n", "train.steps: expected an integer"),
    "bool_as_int.yaml": ("train:\n  batch_size: true\n", "train.batch_size: expected an integer"),
    "unknown_key.yaml": ("train:\n  stepz: 5\n", "train.stepz: unknown key"),
    "unknown_section.yaml": ("trainer:\n  steps: 5\n", "trainer: unknown key"),
    "nan_lr.yaml": ("train:\n  lr: .nan\n", "train.lr: expected a number, got nan"),
    "inf_steps.yaml": ("train:\n  steps: .inf\n", "train.steps: expected an integer, got inf"),
    "negative_steps.yaml": ("train:\n  steps: -3\n", "train.steps: must be >= 1"),
    "list_for_mapping.yaml": ("train: [1, 2]\n", "train"),
    "top_level_list.yaml": ("- train\n- data\n", "expected a mapping at the top level"),
    "not_yaml.yaml": ("train: {steps: [1, 2\n", "not valid YAML"),
    "bad_choice.yaml": ("train:\n  precision: fp8\n", "train.precision: expected one of"),
    "bad_list_item.yaml": ("model:\n  ch_mult: [1, two]\n", "model.ch_mult[1]: expected an integer"),
    "tabs.yaml": ("train:\n\tsteps: 3\n", "not valid YAML"),
    "binary.yaml": (None, "not valid YAML"),
}


# train-ldm presets whose required sections are missing (an autoencoder preset's sections all have defaults)
LDM_CONFIGS = {
    "ldm_missing_first_stage.yaml": ("data:\n  name: shapes\ntrain:\n  steps: 3\n", "first_stage: path to an autoencoder"),
    "ldm_empty.yaml": ("", "first_stage: path to an autoencoder"),
}


def config_cases(root: Path) -> list[Case]:
    d = root / "configs"
    d.mkdir(parents=True)
    cases = []
    for name, (text, match) in (CONFIGS | LDM_CONFIGS).items():
        (d / name).write_bytes(b"\x00\xff\xfe binary" if text is None else text.encode())
        cases.append(Case(f"configs/{name}", "config", "error", match, "train-ldm" if name in LDM_CONFIGS else ""))
    return cases


def _safetensors(tensors: dict[str, np.ndarray], metadata: dict | None = None) -> bytes:
    header, offset, blobs = {}, 0, []
    for name, a in tensors.items():
        raw = a.astype(np.float32).tobytes()
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
        blobs.append(raw)
    if metadata:
        header["__metadata__"] = metadata
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + b"".join(blobs)


LFS = b"version https://git-lfs.github.com/spec/v1\noid sha256:4c5d6e\nsize 4265380512\n"


def _corrupt_header(good: bytes) -> bytes:
    """The JSON header with its closing brace replaced: the same length, no longer JSON."""
    n = struct.unpack("<Q", good[:8])[0]
    return good[: 8 + n - 1] + b"!" + good[8 + n:]


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/ldmkit-corpus-pwned",))


def weight_cases(root: Path, rng: np.random.Generator) -> list[Case]:
    import pickle

    d = root / "weights"
    d.mkdir(parents=True)
    unet = {"model.diffusion_model.input_blocks.0.0.weight": rng.standard_normal((8, 4, 3, 3))}
    good = _safetensors(unet)
    files = {
        "zero.safetensors": (b"", "truncated or corrupt"),
        "truncated.safetensors": (good[: len(good) - 100], "truncated or corrupt"),
        "lfs_pointer.safetensors": (LFS, "a Git LFS pointer"),
        "header_corrupt.safetensors": (_corrupt_header(good), "truncated or corrupt"),
        "header_too_long.safetensors": (struct.pack("<Q", 10 ** 9) + good[8:], "truncated or corrupt"),
        "claims_more_bytes.safetensors": (
            good[:8] + good[8:8 + struct.unpack("<Q", good[:8])[0]].replace(b"[0, 1152]", b"[0, 9999]")
            + good[8 + struct.unpack("<Q", good[:8])[0]:], "truncated or corrupt"),
        "other_architecture.safetensors": (_safetensors({"encoder.layer.0.weight": rng.standard_normal((4, 4))}),
                                           "cannot infer the architecture"),
        "random.ckpt": (b"\x13" + rng.integers(0, 256, 2048, dtype=np.uint8).tobytes(), "not a torch checkpoint"),
        "html.ckpt": (b"<!DOCTYPE html><html><body>Rate limited</body></html>", "not a torch checkpoint"),
        "lfs_pointer.ckpt": (LFS, "a Git LFS pointer"),
        "code.ckpt": (pickle.dumps({"state_dict": {"w": _Exploit()}}), "refusing to load"),
        "wrong_suffix.onnx": (b"\x08\x07", "unknown checkpoint format"),
    }
    cases = []
    for name, (data, match) in files.items():
        (d / name).write_bytes(data)
        cases.append(Case(f"weights/{name}", "weights", "error", match))
    (d / "empty_folder").mkdir()
    cases.append(Case("weights/empty_folder", "weights", "error", "{path}", "a folder that is no diffusers folder"))
    return cases


def shard_cases(root: Path, rng: np.random.Generator) -> list[Case]:
    d = root / "shards"
    d.mkdir(parents=True)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for k in range(4):
            for suffix, data in ((".png", _png(_photo(rng))), (".txt", f"sample {k}".encode())):
                info = tarfile.TarInfo(f"{k:06d}{suffix}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    whole = buf.getvalue()
    (d / "good-000000.tar").write_bytes(whole)
    (d / "cut-000001.tar").write_bytes(whole[: len(whole) // 2 + 100])  # ends inside a member
    return [Case("shards/good-000000.tar", "shard", "loads"),
            Case("shards/cut-000001.tar", "shard", "error", "corrupt tar shard",
                 "truncated member: a one-line error naming the shard when the stream reaches it")]


def build(root: str | Path, seed: int = 0) -> list[Case]:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    cases = image_cases(root, rng) + caption_cases(root, rng) + config_cases(root) + weight_cases(root, rng) + \
        shard_cases(root, rng)
    (root / "manifest.json").write_text(json.dumps([asdict(c) for c in cases], indent=1))
    return cases


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "corpus"
    if out.exists():
        sys.exit(f"{out} exists: remove it first")
    cases = build(out)
    print(f"{len(cases)} cases in {out} (manifest.json)")
