"""The HTTP API against a real server on loopback: results equal the pipeline's own, every limit answers a 4xx
naming its field, the queue keeps order and loses nothing, cancel frees a slot, files and tokens are guarded."""
from __future__ import annotations

import base64
import http.client
import io
import json
import os
import threading
import time
import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image

from ldmkit.imageio import to_uint8
from ldmkit.serve.jobs import Cancelled, Job, JobQueue, QueueFull

from serve_helpers import CLASSES, SHAPES, call, png_b64, wait_done

pytestmark = pytest.mark.usefixtures("one_thread")
CLS = {"model": "cls", "class_label": 2, "steps": 6, "seed": 11, "n": 2}


def test_models_list_what_each_takes(serve):
    srv = serve()
    status, info, _ = call(f"{srv.url}/api/models")
    assert status == 200
    by = {m["name"]: m for m in info["models"]}
    assert by["cls"]["class"] and by["cls"]["class_names"] == CLASSES and not by["cls"]["text"]
    assert by["text"]["text"] and not by["text"]["class"] and by["text"]["size"] == 512
    assert by["layout"]["boxes"] and by["layout"]["box_classes"] == SHAPES and by["layout"]["max_objects"] == 3
    assert info["limits"]["max_steps"] == 150
    status, schema, _ = call(f"{srv.url}/openapi.json")
    assert status == 200 and "GenerateRequest" in schema["components"]["schemas"]


def test_result_equals_the_pipeline_and_carries_its_settings(serve, models):
    srv = serve()
    status, job, _ = call(f"{srv.url}/api/jobs", "POST", CLS)
    assert status == 202 and job["status"] in ("queued", "running")
    job = wait_done(srv.url, job["id"])
    assert job["status"] == "done" and job["seeds"] == [11, 12] and job["step"] == job["total"] == 6
    ref = models["cls"]([2, 2], seeds=[11, 12], num_inference_steps=6, guidance_scale=3.0, output_type="pt")
    for url, seed, expected in zip(job["images"], job["seeds"], ref):
        status, png, hdrs = call(f"{srv.url}/{url}")
        assert status == 200 and hdrs["content-type"] == "image/png"
        img = Image.open(io.BytesIO(png))
        np.testing.assert_array_equal(np.asarray(img), to_uint8(expected))
        meta = json.loads(img.text["ldmkit"])
        assert meta["seed"] == seed and meta["class_label"] == 2 and meta["steps"] == 6 and meta["sampler"] == "ddim"
    # progress previews were decoded on the way (previews=2 for 6 steps: at steps 3)
    status, png, _ = call(f"{srv.url}/api/jobs/{job['id']}/preview.png")
    assert status == 200 and Image.open(io.BytesIO(png)).size == (32, 32)


def test_text_model_takes_a_prompt_and_negative_prompt(serve, models):
    srv = serve()
    req = {"model": "text", "prompt": "A Red Circle", "negative_prompt": "blue", "steps": 3, "seed": 5, "size": 64,
           "guidance": 7.5, "sampler": "dpmpp_2m"}
    status, job, _ = call(f"{srv.url}/api/jobs", "POST", req)
    assert status == 202, job
    job = wait_done(srv.url, job["id"])
    assert job["status"] == "done", job
    ref = models["text"](prompt="A Red Circle", negative_prompt="blue", seeds=[5], height=64, width=64,
                         num_inference_steps=3, guidance_scale=7.5, sampler="dpmpp_2m", output_type="pt")
    _, png, _ = call(f"{srv.url}/{job['images'][0]}")
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png))), to_uint8(ref[0]))


def test_prompt_weighting_equals_the_pipeline_and_broken_brackets_are_named(serve, models):
    srv = serve()
    req = {"model": "text", "prompt": "a (red:1.4) circle, [blue]", "negative_prompt": "(square)", "steps": 2,
           "seed": 3, "size": 64, "guidance": 5.0, "prompt_weighting": True}
    status, job, _ = call(f"{srv.url}/api/jobs", "POST", req)
    assert status == 202, job
    job = wait_done(srv.url, job["id"])
    assert job["status"] == "done", job
    ref = models["text"](prompt="a (red:1.4) circle, [blue]", negative_prompt="(square)", seeds=[3], height=64,
                         width=64, num_inference_steps=2, guidance_scale=5.0, prompt_weighting=True, output_type="pt")
    _, png, _ = call(f"{srv.url}/{job['images'][0]}")
    img = Image.open(io.BytesIO(png))
    np.testing.assert_array_equal(np.asarray(img), to_uint8(ref[0]))
    assert json.loads(img.text["ldmkit"])["prompt_weighting"] is True
    for field in ("prompt", "negative_prompt"):
        got, body, _ = call(f"{srv.url}/api/jobs", "POST", {**req, field: "a (red circle"})
        assert (got, body["field"]) == (422, field) and "column 3" in body["error"], body


def _gif_b64() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32)).save(buf, format="GIF")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.mark.parametrize("change, status, field", [
    ({"steps": "many"}, 422, "steps"),
    ({"steps": 0}, 422, "steps"),
    ({"steps": 151}, 422, "steps"),
    ({"n": 9}, 422, "n"),
    ({"size": 2048}, 422, "size"),
    ({"size": 31}, 422, "size"),                      # not a multiple of the first stage's factor 2
    ({"guidance": -1}, 422, "guidance"),
    ({"seed": -3}, 422, "seed"),
    ({"colour": "red"}, 422, "colour"),               # unknown fields are refused, not ignored
    ({"model": "nope"}, 404, "model"),
    ({"class_label": 7}, 422, "class_label"),
    ({"class_label": "seven"}, 422, "class_label"),
    ({"class_label": None}, 422, "class_label"),      # a class model needs its class
    ({"prompt": "a cat"}, 422, "prompt"),             # ... and takes no prompt
    ({"prompt_weighting": True}, 422, "prompt_weighting"),
    ({"sampler": "warp_drive"}, 422, "sampler"),
    ({"sampler": "ddpm", "steps": 30}, 422, "steps"),   # DDPM runs every one of the 100 steps
    ({"strength": 0.5}, 422, "strength"),             # img2img strength without an image
    ({"image": "not base64!"}, 422, "image"),
    ({"image": _gif_b64()}, 415, "image"),
    ({"image": png_b64(Image.new("RGB", (2048, 1024)))}, 413, "image"),  # over max_upload_pixels
    ({"image": png_b64(Image.new("RGB", (32, 32))), "mask": png_b64(Image.new("L", (16, 16)))}, 422, "mask"),
])
def test_bad_requests_name_their_field(serve, change, status, field):
    srv = serve()
    got, body, _ = call(f"{srv.url}/api/jobs", "POST", {**CLS, **change})
    assert (got, body["field"]) == (status, field), body
    assert body["error"].startswith(f"{field}: ") and "\n" not in body["error"]


def test_layout_boxes_are_checked(serve):
    srv = serve()
    box = {"label": "square", "x0": 0.1, "y0": 0.1, "x1": 0.5, "y1": 0.6}
    base = {"model": "layout", "steps": 2}
    for boxes, field in (([{**box, "x1": 0.05}], "boxes[0]"), ([box] * 4, "boxes"), ([], "boxes"),
                         ([{**box, "label": "hexagon"}], "boxes[0].label"), ([{**box, "label": 4}], "boxes[0].label"),
                         ([{**box, "x0": 1.5}], "boxes.0.x0")):
        got, body, _ = call(f"{srv.url}/api/jobs", "POST", {**base, "boxes": boxes})
        assert (got, body["field"]) == (422, field), body
    got, job, _ = call(f"{srv.url}/api/jobs", "POST", {**base, "boxes": [box, {**box, "label": 3}]})
    assert got == 202
    done = wait_done(srv.url, job["id"])
    assert done["status"] == "done", done
    np.testing.assert_allclose(done["settings"]["boxes"], [[2, 0.1, 0.1, 0.5, 0.6], [3, 0.1, 0.1, 0.5, 0.6]], atol=1e-6)


def test_text_limits_and_upload_size(serve):
    srv = serve(max_prompt_chars=20, max_upload_bytes=4096)
    base = {"model": "text", "steps": 2, "size": 64}
    got, body, _ = call(f"{srv.url}/api/jobs", "POST", {**base, "prompt": "x" * 21})
    assert (got, body["field"]) == (422, "prompt")
    got, body, _ = call(f"{srv.url}/api/jobs", "POST", {**base})
    assert (got, body["field"]) == (422, "prompt") and "needs it" in body["error"]
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    got, body, _ = call(f"{srv.url}/api/jobs", "POST", {**base, "prompt": "a", "image": png_b64(noise)})
    assert (got, body["field"]) == (413, "image")
    # a body over the limit is refused from its Content-Length, before it is read
    conn = http.client.HTTPConnection(srv.url.removeprefix("http://"), timeout=30)
    conn.putrequest("POST", "/api/jobs")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(10 ** 9))
    conn.endheaders()
    r = conn.getresponse()
    assert (r.status, json.loads(r.read())["field"]) == (413, "body")
    conn.close()


def test_ten_concurrent_requests_complete_in_order(serve):
    srv = serve(max_queue=10)
    ids, lock = [None] * 10, threading.Lock()

    def post(k):
        status, job, _ = call(f"{srv.url}/api/jobs", "POST", {**CLS, "n": 1, "seed": 100 + k})
        assert status == 202, job
        with lock:
            ids[k] = job["id"]

    threads = [threading.Thread(target=post, args=(k,)) for k in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    jobs = [wait_done(srv.url, i) for i in ids]
    assert all(j["status"] == "done" and len(j["images"]) == 1 for j in jobs)
    by_arrival = sorted(jobs, key=lambda j: j["created"])
    starts = [j["started"] for j in by_arrival]
    assert starts == sorted(starts)  # first come, first served
    assert all(a["finished"] <= b["started"] for a, b in zip(by_arrival, by_arrival[1:]))  # one at a time
    assert len({j["seeds"][0] for j in jobs}) == 10


def test_full_queue_is_429_and_cancel_frees_the_slot(serve, models):
    gate = threading.Event()
    srv = serve(max_queue=2, gate=gate)
    first = call(f"{srv.url}/api/jobs", "POST", CLS)[1]
    second = call(f"{srv.url}/api/jobs", "POST", CLS)[1]
    got, body, _ = call(f"{srv.url}/api/jobs", "POST", CLS)
    assert (got, body["field"]) == (429, "queue")
    assert call(f"{srv.url}/api/jobs/{second['id']}")[1]["position"] == 1
    got, cancelled, _ = call(f"{srv.url}/api/jobs/{second['id']}", "DELETE")
    assert got == 200 and cancelled["status"] == "cancelled"
    got, third, _ = call(f"{srv.url}/api/jobs", "POST", CLS)
    assert got == 202
    # the running job stops at its next step when cancelled
    call(f"{srv.url}/api/jobs/{first['id']}", "DELETE")
    gate.set()
    assert wait_done(srv.url, first["id"])["status"] == "cancelled"
    done = wait_done(srv.url, third["id"])
    assert done["status"] == "done" and call(f"{srv.url}/api/jobs/{second['id']}")[1]["images"] == []
    assert call(f"{srv.url}/api/jobs/0123456789abcdef", "DELETE")[0] == 404


def test_events_stream_progress_until_done(serve):
    srv = serve()
    job = call(f"{srv.url}/api/jobs", "POST", {**CLS, "steps": 20, "n": 1})[1]
    events = []
    with urllib.request.urlopen(f"{srv.url}/api/jobs/{job['id']}/events", timeout=60) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r:
            if line.startswith(b"data: "):
                events.append(json.loads(line[6:]))
    assert events[-1]["status"] == "done" and events[-1]["images"]
    steps = [e["step"] for e in events]
    assert steps == sorted(steps) and steps[-1] == 20


def test_only_result_files_are_served(serve, tmp_path):
    srv = serve()
    (tmp_path / "secret.txt").write_text("no")
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    os.symlink(tmp_path / "secret.txt", out / "0123456789abcdef_00_seed1.png")  # a result name leading outside
    for path in ("files/..%2Fsecret.txt", "files/%2E%2E%2Fsecret.txt", "files/../secret.txt",
                 "files/0123456789abcdef_00_seed1.png", "files/ffffffffffffffff_00_seed2.png", "files/secret.txt"):
        got, body, _ = call(f"{srv.url}/{path}")
        assert got == 404, path
        assert b"no" != body


def test_token_is_required_on_every_request(serve):
    srv = serve(token="s3cret")
    for path in ("", "api/models", "static/app.js", "api/jobs"):
        assert call(f"{srv.url}/{path}")[0] == 401, path
    got, body, _ = call(f"{srv.url}/api/models", headers={"Authorization": "Bearer wrong"})
    assert (got, body["field"]) == (401, "token")
    assert call(f"{srv.url}/api/models", headers={"Authorization": "Bearer s3cret"})[0] == 200
    got, _, hdrs = call(f"{srv.url}/?token=s3cret")
    assert got == 200 and "ldmkit_token=s3cret" in hdrs["set-cookie"] and "HttpOnly" in hdrs["set-cookie"]
    assert call(f"{srv.url}/static/app.js", headers={"Cookie": "ldmkit_token=s3cret"})[0] == 200
    got, job, _ = call(f"{srv.url}/api/jobs", "POST", CLS, headers={"Authorization": "Bearer s3cret"})
    assert got == 202
    assert call(f"{srv.url}/api/jobs/{job['id']}")[0] == 401


def test_queue_unit_cancel_and_failure():
    """The queue alone: a failing job is reported on the job and the worker goes on; QueueFull at the bound."""
    gate = threading.Event()

    def run(job):
        if job.model == "boom":
            raise RuntimeError("out of memory")
        while not gate.is_set():
            if job.cancel.is_set():
                raise Cancelled()
            time.sleep(0.01)

    q = JobQueue(run, max_queue=2)
    try:
        jobs = [Job("boom", {}, {}, 1), Job("ok", {}, {}, 1)]
        for j in jobs:
            q.submit(j)
        with pytest.raises(QueueFull):
            q.submit(Job("ok", {}, {}, 1))
        gate.set()
        deadline = time.time() + 10
        while q.depth() and time.time() < deadline:
            time.sleep(0.01)
        assert jobs[0].status == "failed" and "RuntimeError: out of memory" in jobs[0].error
        assert jobs[1].status == "done" and q.completed == 2
    finally:
        q.close()


def test_cli_serve_bad_inputs_are_one_line(tmp_path, capsys):
    from ldmkit.cli.main import main

    assert main(["serve", str(tmp_path / "missing.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ldmkit: error: ") and "missing.safetensors" in err and err.count("\n") == 1
    with pytest.raises(SystemExit) as e:
        main(["serve", "x.safetensors", "--max-queue", "0"])
    assert e.value.code == 2 and "--max-queue: must be >= 1" in capsys.readouterr().err
