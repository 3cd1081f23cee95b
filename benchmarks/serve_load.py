"""Issue 20: load figure of ``ldmkit serve`` — requests per minute and p50 / p95 latency for N requests from C
concurrent clients on loopback, and the memory the queue adds.

The server runs in this process (uvicorn on a thread, port 0) with a tiny random class-conditional model (or the
checkpoints given); each client thread posts one request, waits for its job to end (polling its status), then
posts the next, until N requests are done. Latency = from the POST to the job's end, as a client sees it (queue
wait included). Memory: the process's resident set before the first request, at its peak during the run
(VmHWM), and after. A bounded load generator: every client has one request in flight at most.

    PYTHONPATH=src python benchmarks/serve_load.py --requests 50 --clients 5 --steps 20
"""
from __future__ import annotations

import argparse
import json
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import torch


def _rss_kib(field: str = "VmRSS") -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return -1


def _tiny_class_model():
    from ldmkit.autoencoder import AutoencoderConfig
    from ldmkit.diffusion import ScheduleConfig
    from ldmkit.nn import ConditionerConfig, UNetConfig
    from ldmkit.pipeline import Pipeline, PipelineConfig

    torch.manual_seed(0)
    cfg = PipelineConfig(
        autoencoder=AutoencoderConfig(kind="kl", resolution=32, ch=32, ch_mult=(1, 2), num_res_blocks=1,
                                      z_channels=3, embed_dim=3),
        unet=UNetConfig(in_channels=3, out_channels=3, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                        attention_resolutions=(2,), num_heads=2, context_dim=16),
        conditioner=ConditionerConfig(kind="class", num_classes=10, embed_dim=16),
        diffusion=ScheduleConfig(timesteps=1000), scale_factor=0.5)
    return Pipeline(cfg).eval()


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=600) as r:
        return json.loads(r.read())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", nargs="*", help="models to serve (default: a tiny random class model)")
    ap.add_argument("--requests", type=int, default=50)
    ap.add_argument("--clients", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--n", type=int, default=1, help="images per request")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads of the worker")
    ap.add_argument("--out", type=Path, default=Path("runs/bench/serve_load"))
    args = ap.parse_args()

    from ldmkit.serve import ServeLimits
    from ldmkit.serve.app import create_app
    from ldmkit.serve.models import ModelEntry
    from ldmkit.serve.server import BackgroundServer, load_entries

    torch.set_num_threads(args.threads)
    entries = load_entries(args.checkpoints) if args.checkpoints else [ModelEntry("tiny", _tiny_class_model(), "random")]
    caps = entries[0].capabilities()
    body = {"model": caps["name"], "steps": args.steps, "n": args.n}
    if caps["class"]:
        body["class_label"] = 0
    if caps["text"]:
        body["prompt"] = "a red circle left of a blue square"
    limits = ServeLimits(max_queue=max(16, args.clients), previews=0)
    latencies, lock, counter = [], threading.Lock(), iter(range(args.requests))
    with BackgroundServer(create_app(entries, args.out / "results", limits)) as srv:
        warm = _post(f"{srv.url}/api/jobs", {**body, "seed": 0})  # first-call costs out of the figure
        while _get(f"{srv.url}/api/jobs/{warm['id']}")["status"] not in ("done", "failed"):
            time.sleep(0.02)
        rss_before = _rss_kib()

        def client() -> None:
            while True:
                with lock:
                    k = next(counter, None)
                if k is None:
                    return
                t0 = time.perf_counter()
                job = _post(f"{srv.url}/api/jobs", {**body, "seed": 1 + k})
                while True:
                    job = _get(f"{srv.url}/api/jobs/{job['id']}")
                    if job["status"] in ("done", "failed", "cancelled"):
                        break
                    time.sleep(0.01)
                assert job["status"] == "done", job
                with lock:
                    latencies.append(time.perf_counter() - t0)

        start = time.perf_counter()
        threads = [threading.Thread(target=client) for _ in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - start
        completed = _get(f"{srv.url}/api/jobs")["completed"]
    lat = np.array(latencies)
    report = {"requests": len(lat), "clients": args.clients, "steps": args.steps, "n": args.n,
              "model": caps["name"], "completed_by_server": completed - 1, "wall_s": wall,
              "requests_per_min": len(lat) / wall * 60, "latency_p50_s": float(np.percentile(lat, 50)),
              "latency_p95_s": float(np.percentile(lat, 95)), "latency_max_s": float(lat.max()),
              "rss_before_mib": rss_before / 1024, "rss_after_mib": _rss_kib() / 1024,
              "rss_peak_mib": _rss_kib("VmHWM") / 1024, "torch_threads": args.threads}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
