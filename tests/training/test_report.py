"""`ldmkit report RUN_DIR` (curves + latest samples in one PNG) and the logger's TensorBoard output."""
import json
import sys
import types

import pytest
from PIL import Image

from ldmkit.cli.main import main
from ldmkit.training.logger import RunLogger
from ldmkit.training.plot import LINE, PALETTE, log_ticks, nice_ticks, series_plot
from ldmkit.training.report import curves, latest_samples, read_events

MAGENTA, GREEN = (255, 0, 255), (0, 255, 0)


@pytest.fixture
def run(tmp_path):
    lines = []
    for s in range(1, 21):
        event = {"step": s, "time": s * 0.5, "it_per_s": 2.0, "loss": 1.0 / s, "lr": 1e-4 * min(1, s / 5),
                 "img_per_s": 64.0, "eta_s": 20 - s}
        if s % 5 == 0:
            event["eval/fd-fmnist"] = 100.0 / s
        lines.append(json.dumps(event))
    lines.insert(7, json.dumps({"step": 8, "loss": 9.0}))  # a resumed run logs step 8 again: the later line wins
    (tmp_path / "events.jsonl").write_text("\n".join(lines) + '\n{"step": 21, "lo')  # torn by a kill
    (tmp_path / "samples").mkdir()
    Image.new("RGB", (16, 8), GREEN).save(tmp_path / "samples" / "samples_0000010.png")
    Image.new("RGB", (16, 8), MAGENTA).save(tmp_path / "samples" / "samples_0000020.png")
    return tmp_path


def test_nice_ticks():
    assert nice_ticks(0, 1) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert nice_ticks(0.955, 1.03) == [0.96, 0.98, 1.0, 1.02]
    assert nice_ticks(0, 1e5) == [0, 2e4, 4e4, 6e4, 8e4, 1e5]
    assert nice_ticks(3, 3) == [3]


def test_log_ticks():
    assert log_ticks(4, 110) == [5.0, 10.0, 20.0, 50.0, 100.0]
    assert log_ticks(1, 1) == [1.0]


def test_series_plot_draws_one_coloured_line_per_series():
    series = {"ddim": ([5, 10, 50], [40.0, 20.0, 10.0]), "heun": ([9, 5], [30.0, 50.0]), "empty": ([], [])}
    img = series_plot("FD vs NFE", series, x_label="NFE", y_label="FD", log_x=True, size=(500, 300))
    colours = {c for _, c in img.getcolors(maxcolors=1 << 20)}
    assert img.size == (500, 300) and {PALETTE[0], PALETTE[1], PALETTE[2]} <= colours  # "empty" still has its legend
    assert PALETTE[3] not in colours


def test_events_and_curves(run):
    events = read_events(run / "events.jsonl")
    assert [e["step"] for e in events] == list(range(1, 21))
    assert events[7]["loss"] == 1.0 / 8 and events[7]["lr"] == 1e-4  # the later line of step 8
    c = curves(events)
    assert list(c) == ["loss", "eval/fd-fmnist", "lr", "img_per_s"]  # bookkeeping (time, eta) is not plotted
    assert c["eval/fd-fmnist"] == ([5, 10, 15, 20], [20.0, 10.0, 100 / 15, 5.0])
    assert latest_samples(run).name == "samples_0000020.png"


def test_report_png(run, capsys):
    assert main(["report", str(run)]) == 0
    assert capsys.readouterr().out.strip() == f"report: {run / 'report.png'}"
    img = Image.open(run / "report.png").convert("RGB")
    colours = {c for _, c in img.getcolors(maxcolors=1 << 20)}
    assert MAGENTA in colours and GREEN not in colours  # the latest grid, not an older one
    assert LINE in colours  # the curves' polylines
    # 4 panels in 2 columns of 420 x 240 below a header, the grid enlarged beside them
    assert img.height >= 2 * 240 and img.width > 2 * 420 + 16


def test_report_of_a_folder_without_events(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "no events" in capsys.readouterr().err


def test_tensorboard_scalars(tmp_path, monkeypatch):
    written = []

    class Writer:
        def __init__(self, log_dir):
            written.append(("dir", log_dir))

        def add_scalar(self, tag, value, step):
            written.append((tag, value, step))

        def close(self):
            written.append("closed")

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=Writer))
    log = RunLogger(tmp_path, 10, tensorboard=True)
    log.log(3, {"loss": 0.5, "lr": 1e-4}, batch_size=8)
    log.close()
    assert written[0] == ("dir", str(tmp_path / "tensorboard"))
    assert ("loss", 0.5, 3) in written and ("lr", 1e-4, 3) in written and written[-1] == "closed"
    assert any(w[0] == "img_per_s" for w in written if isinstance(w, tuple))


def test_tensorboard_missing_is_a_warning(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    log = RunLogger(tmp_path, 10, tensorboard=True)
    log.log(1, {"loss": 0.5})
    log.close()
    assert "tensorboard package is not installed" in capsys.readouterr().err
    assert json.loads((tmp_path / "events.jsonl").read_text())["loss"] == 0.5
