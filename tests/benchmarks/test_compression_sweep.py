"""benchmarks/compression_sweep.py: segment times from events, the <= 1/3 verdict, tables and plot (pure parts)."""
import json
import sys
from pathlib import Path

import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from compression_report import claims, reach_time, render_plot, segment_seconds, tables  # noqa: E402
from compression_sweep import parse_fracs  # noqa: E402

from ldmkit.config import ConfigError  # noqa: E402

SETTINGS = {"budget_min": 5.0, "eval_n": 500, "eval_steps": 10, "eval_guidance": 1.0}


def test_segment_seconds_reads_the_resumed_segment(tmp_path):
    events = tmp_path / "events.jsonl"
    first = [{"step": s, "time": float(s)} for s in (1, 2, 3)]
    # killed at step 4 before a checkpoint, resumed from step 3: the logger cut the file back, the clock restarted
    second = [{"step": 4, "time": 0.5}, {"step": 5, "time": 1.2}]
    events.write_text("".join(json.dumps(e) + "\n" for e in first + second) + '{"step": 6, "ti')
    assert segment_seconds(events, 0) == (5, 1.2)
    assert segment_seconds(events, 3) == (5, 1.2)
    assert segment_seconds(events, 5) == (5, 0.0)


def row(f, points, shape=(3, 8, 8)):
    pts = [{"frac": fr, "train_s": t, "step": 10 * i + 10, "FD-fmnist": fd} for i, (fr, t, fd) in enumerate(points)]
    fs = {"kind": "identity"} if f == 1 else {"kind": "kl", "psnr": 28.16, "budget_min": 10.0, "steps": 2879}
    return {"f": f, "settings": SETTINGS, "first_stage": fs | {"latent_shape": list(shape)}, "cache_s": None,
            "steps": pts[-1]["step"], "train_s": points[-1][1], "img_per_s": 100.0, "sample_s_per_image": 0.05,
            "points": pts}


@pytest.fixture
def rows():
    return {1: row(1, [(1 / 3, 100.0, 300.0), (1.0, 300.0, 200.0)], (1, 32, 32)),
            4: row(4, [(1 / 6, 50.0, 250.0), (1 / 3, 100.0, 190.0), (2 / 3, 200.0, 100.0), (1.0, 300.0, 80.0)]),
            8: row(8, [(1 / 6, 50.0, 400.0), (1.0, 300.0, 210.0)], (4, 4, 4))}


def test_reach_time_and_the_one_third_verdict(rows):
    assert reach_time(rows[4]["points"], 200.0) == 100.0 and reach_time(rows[8]["points"], 200.0) is None
    by_f = {c["f"]: c for c in claims(rows)}
    assert by_f[4]["share"] == pytest.approx(1 / 3) and by_f[4]["met"]  # exactly 1/3 counts
    assert by_f[8]["reach_s"] is None and not by_f[8]["met"] and by_f[8]["best"] == 210.0
    assert claims({4: rows[4]}) == []  # no pixel row: nothing to compare with


def test_tables_and_plot(rows, tmp_path):
    guidance = [{"guidance": g, "n": 500, "steps": 10, "FD-fmnist": 60.0 - g, "precision": 0.5 + g / 20,
                 "recall": 0.5 - g / 20, "IS": 5.0 + g} for g in (1.0, 3.0)]
    text = tables(rows, guidance)
    assert "| 4 | 8x8x3 | 28.16 dB (10-min budget, 2,879 steps) |" in text
    assert "| 1 | 32x32x1 | identity (pixels) |" in text
    assert "f=4: reaches the pixel model's final FD-fmnist (200.0 after 5.00 min) by 1.67 min = 0.33" in text
    assert "<= 1/3 met" in text and "f=8: does not reach" in text
    assert "| 3 | 57.0 | 0.650 | 0.350 | 8.00 |" in text
    png = render_plot(rows, guidance, tmp_path / "c.png")
    assert Image.open(png).size == (560 + 320 + 320, 362)


def test_parse_fracs():
    assert parse_fracs("1/3, 1/6,1,2/3") == pytest.approx([1 / 6, 1 / 3, 2 / 3, 1])
    for bad in ("1/2", "0,1", "a,1", ""):
        with pytest.raises(ConfigError, match="eval points"):
            parse_fracs(bad)
