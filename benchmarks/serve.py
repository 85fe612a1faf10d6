"""`dialsum serve` under load: requests per second and p50/p95 latency at 1, 4 and 16 concurrent clients, with
requests batched into one generate call (the default window) and without (one request per generate call).

The tiny model, a LoRA-free run trained for two steps on the bundled sample (built in a temporary folder), served
by uvicorn on a free loopback port in this process; clients are threads posting dev dialogues to /v1/summarize.
Both modes run interleaved, on the same machine, with the same dialogues.

    python benchmarks/serve.py [--requests 48] [--clients 1 4 16] [--window-ms 10] [--max-new-tokens 24]
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import common  # noqa: F401  (offline hub settings)
from common import SAMPLE, real_dev_or_sample

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def _tiny_run(folder: Path, max_new_tokens: int) -> Path:
    from dialsum.config import config_from_dict
    from dialsum.train import train

    config = config_from_dict(
        {
            "model": {"name_or_path": "tiny:llama"},
            "data": {"train": str(SAMPLE / "train.csv")},
            "training": {
                "max_steps": 2,
                "per_device_train_batch_size": 4,
                "gradient_accumulation_steps": 1,
                "max_length": 512,
                "packing": False,
                "gradient_checkpointing": False,
                "warmup_ratio": 0.0,
            },
            "generation": {"max_new_tokens": max_new_tokens, "batch_size": 16},
        }
    )
    return train(config, output_dir=folder / "run")


def _start(server):
    import uvicorn

    from dialsum.serve import create_app

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    http = uvicorn.Server(uvicorn.Config(create_app(server), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=http.run, daemon=True)
    thread.start()
    while not http.started:
        time.sleep(0.02)
    return http, thread, f"http://127.0.0.1:{port}"


def _load(url: str, bodies: list[dict], clients: int) -> dict:
    import httpx

    latencies: list[float] = []

    def ask(body):
        with httpx.Client(timeout=600) as client:
            started = time.perf_counter()
            response = client.post(f"{url}/v1/summarize", json=body)
            response.raise_for_status()
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        list(pool.map(ask, bodies))
    wall = time.perf_counter() - started
    ordered = sorted(latencies)
    return {
        "req_s": len(bodies) / wall,
        "p50": statistics.median(ordered),
        "p95": ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=48, help="requests per measurement")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--window-ms", type=float, default=10.0, help="the batching window of the batched mode")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    args = parser.parse_args()

    from dialsum.data import load_dialogues
    from dialsum.serve import load_server

    dialogues = load_dialogues(real_dev_or_sample("dev.csv"))
    bodies = [
        {"dialogue": "\n".join(f"{t.speaker}: {t.utterance}" for t in d.turns), "topic": d.topic}
        for d in (dialogues * (args.requests // len(dialogues) + 1))[: args.requests]
    ]
    with tempfile.TemporaryDirectory() as folder:
        run_dir = _tiny_run(Path(folder), args.max_new_tokens)
        server = load_server(run_dir, batch_window_ms=args.window_ms)
        http, thread, url = _start(server)
        try:
            _load(url, bodies[:4], 4)  # warm-up
            rows = []
            for clients in args.clients:
                for mode, window in (("batched", args.window_ms), ("unbatched", 0.0)):
                    server.batch_window_ms = window
                    calls = server.generate_calls
                    result = _load(url, bodies, clients)
                    result.update(mode=mode, clients=clients, calls=server.generate_calls - calls)
                    rows.append(result)
                    p50, p95 = result["p50"] * 1000, result["p95"] * 1000
                    print(
                        f"{clients:>3} clients  {mode:<9}  {result['req_s']:7.2f} req/s  p50 {p50:7.0f} ms  p95 "
                        f"{p95:7.0f} ms  ({result['calls']} generate calls for {len(bodies)})",
                        flush=True,
                    )
        finally:
            http.should_exit = True
            thread.join(timeout=10)
    print()
    print("| clients | batched req/s | unbatched req/s | speed-up | batched p50 / p95 ms | unbatched p50 / p95 ms |")
    print("|---|---|---|---|---|---|")
    for clients in args.clients:
        b, u = (next(r for r in rows if r["clients"] == clients and r["mode"] == m) for m in ("batched", "unbatched"))
        print(
            f"| {clients} | {b['req_s']:.2f} | {u['req_s']:.2f} | {b['req_s'] / u['req_s']:.2f}x | "
            f"{b['p50'] * 1000:.0f} / {b['p95'] * 1000:.0f} | {u['p50'] * 1000:.0f} / {u['p95'] * 1000:.0f} |"
        )


if __name__ == "__main__":
    main()
