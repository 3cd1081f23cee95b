"""Configuration of the data sets: one dataclass shared by every data source."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ldmkit.config import ConfigError, require, to_dict


class DataError(ConfigError):
    """A data problem the user can fix (bad file, empty folder); printed as one line by the CLI."""


class DataNotFoundError(DataError, FileNotFoundError):
    """The data set is not on disk; also a FileNotFoundError so callers can catch it as such."""


NAMES = ("fashion_mnist", "image_folder", "shapes", "emoji", "photos", "webdataset")
STREAMED = ("webdataset",)  # read as a stream of tar shards: no length, no random access, no latent cache
# fields only the webdataset source reads: left out of other sources' identities (cache keys) so that
# adding them did not invalidate the caches made before
STREAM_FIELDS = ("shards", "test_shards", "shuffle_buffer")


@dataclass
class DataConfig:
    """Which data set to load and how to preprocess it.

    One flat config (rather than one per source) keeps YAML presets and ``data.x=y``
    overrides simple; fields a source does not use are ignored by it.
    """

    name: Literal["fashion_mnist", "image_folder", "shapes", "emoji", "photos", "webdataset"] = "shapes"
    # folder for image_folder; IDX folder for fashion_mnist, npm "package" folder for emoji (optional);
    # webdataset: the folder of the tar shards (every *.tar / *.tar.gz in it, unless ``shards`` is set)
    root: str | None = None
    image_size: int = 32
    channels: int = 3  # 1 (grayscale) or 3
    flip: bool = False  # random horizontal flip (train only)
    # items per train split of the procedural sets, shapes and photos (test: shapes_size // 10)
    shapes_size: int = 10000
    max_objects: int = 2
    seed: int = 0
    download: bool = False  # fashion_mnist: allow downloading the official files into the cache
    # image_folder: every Nth file (sorted order) is the test split; 0 holds none out (fine-tune's default: a
    # user's 20 photos all train)
    test_every: int = 10
    # webdataset: a glob or brace list of tar shards ("train-{0000..0099}.tar"), relative to root when set
    shards: str = ""
    test_shards: str = ""       # webdataset: the held-out shards of the test split (same syntax)
    shuffle_buffer: int = 1000  # webdataset: samples held and drawn from at random (mixes shards)

    def __post_init__(self) -> None:
        require(self.name in NAMES, "name", f"expected one of {', '.join(NAMES)}, got {self.name!r}")
        require(self.channels in (1, 3), "channels", f"must be 1 or 3, got {self.channels}")
        require(self.image_size >= 8, "image_size", f"must be >= 8, got {self.image_size}")
        require(self.max_objects >= 1, "max_objects", f"must be >= 1, got {self.max_objects}")
        require(self.shapes_size >= 1, "shapes_size", f"must be >= 1, got {self.shapes_size}")
        require(self.name != "image_folder" or bool(self.root), "root",
                "required for name=image_folder (a folder of images)")
        require(self.name != "webdataset" or bool(self.root or self.shards), "root",
                "name=webdataset needs data.root=DIR (a folder of .tar shards) or data.shards=PATTERN")
        require(self.test_every >= 0, "test_every", f"must be >= 0 (0 = no test split), got {self.test_every}")
        require(self.shuffle_buffer >= 1, "shuffle_buffer", f"must be >= 1, got {self.shuffle_buffer}")


def data_identity(cfg: DataConfig) -> dict:
    """The config fields that decide which images (and conditioning) a data set yields, as a plain dict:
    what caches are keyed by. The webdataset fields count only for webdataset data."""
    fields = to_dict(cfg)
    if cfg.name != "image_folder" or cfg.test_every == 10:
        fields.pop("test_every")  # (the default split: keys written before the field existed stay valid)
    if cfg.name not in STREAMED:
        for k in STREAM_FIELDS:
            fields.pop(k)
    return fields
