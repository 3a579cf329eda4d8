"""Load on `hogwild serve` over loopback: requests/s and latency percentiles.

Usage:
  python benchmarks/serve_load.py [--model tiny|default|PATH | --url URL] [-n 64] [-c 8] [--steps 8]
                                  [--workers 2] [--stream] [--no-retry] [--threads 1] [--queue 8]
                                  [--ctx 4096] [--json FILE]

With --model (default: `tiny`, a random one-layer llama from models/gguf_gen.py) this starts
`hogwild serve MODEL --port 0` in a process of its own on 127.0.0.1 and stops it with SIGINT at the
end; with --url it loads a running server. After one warm-up request, C clients each send chat
requests one after another (closed loop) until N have been sent; a refused request (503) waits its
Retry-After and asks again. Reported: answered, 503s, requests/s answered; client latency
p50/p90/p99 (retries included); for --stream, time to the first worker token; the engine thread's
time per run (`hogwild.timings.run_s`: the context's creation, the prompt, the steps, the finisher)
and its busy share of the wall time; and the overhead of each answered request beyond its wait in
the queue and its run (HTTP, JSON, the bridge from the engine thread): latency - queued_s - run_s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PROBLEM = "A baker makes 12 muffins in the morning and 5 more in the afternoon. How many muffins?"


def percentile(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def start_server(model: str, args):
    """`hogwild serve MODEL` in a process of its own (the load's clients run in this one); returns
    (url, stop, label)."""
    if model == "tiny":
        from models import gguf_gen
        model = str(gguf_gen.write_llama_gguf(Path(tempfile.mkdtemp()) / "tiny.gguf", n_embd=64, n_head=4,
                                              n_head_kv=2, n_layer=1, seed=3))
    elif model == "default":
        from hogwild_cpp.default_model import default_model
        model = str(default_model())
    hogwild = Path(sys.executable).with_name("hogwild")
    cmd = [str(hogwild), "serve", model, "--port", "0", "-np", str(args.workers), "-n", str(args.steps),
           "-c", str(args.ctx), "-t", str(args.threads), "--temp", "0", "--queue", str(args.queue)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env={**os.environ, "HOGWILD_API_KEY": ""})
    lines, url = [], None
    deadline = time.monotonic() + 120
    while url is None and time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        m = re.search(r"(http://127\.0\.0\.1:\d+)/v1", line)
        url = m.group(1) if m else None
    if url is None:
        proc.kill()
        raise SystemExit("the server did not start:\n" + "".join(lines))
    threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep its pipe drained

    def stop():
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    return url, stop, Path(model).name


async def one_attempt(client: httpx.AsyncClient, url: str, i: int, args) -> dict:
    """One HTTP request; times are perf_counter() readings."""
    body = {"model": "m", "messages": [{"role": "user", "content": f"({i}) {PROBLEM}"}], "stream": args.stream,
            "hogwild": {"max_steps": args.steps, "workers": args.workers}}
    out = {"status": None, "summary": None, "first_token": None, "retry_after": None}
    if args.stream:
        async with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
            out["status"], out["retry_after"] = r.status_code, r.headers.get("retry-after")
            if r.status_code == 200:
                async for line in r.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    ev = json.loads(line[6:])
                    h = ev.get("hogwild") or {}
                    if out["first_token"] is None and h.get("delta"):
                        out["first_token"] = time.perf_counter()
                    if ev.get("choices") and ev["choices"][0].get("finish_reason"):
                        out["summary"] = h
            else:
                await r.aread()
    else:
        r = await client.post(url + "/v1/chat/completions", json=body)
        out["status"], out["retry_after"] = r.status_code, r.headers.get("retry-after")
        out["summary"] = r.json().get("hogwild") if r.status_code == 200 else None
    out["end"] = time.perf_counter()
    return out


async def load(url: str, args) -> tuple[list[dict], float]:
    """C clients, each sending requests one after another until N are done; a refused request
    (503) waits its Retry-After and asks again (unless --no-retry)."""
    results: list[dict] = []
    counter = iter(range(args.n))
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}

    async def client_loop():
        async with httpx.AsyncClient(timeout=600, headers=headers) as client:
            for i in counter:
                t0, refusals = time.perf_counter(), 0
                while True:
                    try:
                        a = await one_attempt(client, url, i, args)
                    except httpx.HTTPError as exc:
                        a = {"status": type(exc).__name__, "summary": None, "first_token": None,
                             "end": time.perf_counter()}
                    if a["status"] != 503 or args.no_retry:
                        break
                    refusals += 1
                    await asyncio.sleep(float(a["retry_after"] or 1))
                results.append({"status": a["status"], "summary": a["summary"], "refusals": refusals,
                                "latency": a["end"] - t0,
                                "first_token": a["first_token"] - t0 if a["first_token"] else None})

    t0 = time.perf_counter()
    await asyncio.gather(*(client_loop() for _ in range(args.c)))
    return results, time.perf_counter() - t0


def report(results: list[dict], wall: float, args, label: str) -> dict:
    ok = [r for r in results if r["status"] == 200 and r["summary"]]
    refusals = sum(r["refusals"] for r in results)
    lat = [r["latency"] for r in ok]
    runs = [r["summary"]["timings"]["run_s"] for r in ok]
    # beyond the wait in the server's queue and the run: HTTP, JSON, the bridge (first attempts only)
    overhead = [r["latency"] - r["summary"]["timings"]["queued_s"] - run
                for r, run in zip(ok, runs) if r["refusals"] == 0]
    ttft = [r["first_token"] for r in ok if r["first_token"] is not None]
    pct = lambda xs, qs: {k: round(percentile(xs, q), 3) for k, q in qs}  # noqa: E731
    out = {
        "model": label, "requests": len(results), "clients": args.c, "workers": args.workers,
        "steps": args.steps, "stream": args.stream, "queue": args.queue, "answered": len(ok),
        "refusals_503": refusals, "failed": len(results) - len(ok), "wall_s": round(wall, 3),
        "requests_per_s": round(len(ok) / wall, 3),
        "latency_s": pct(lat, (("p50", .5), ("p90", .9), ("p99", .99))) | {"max": round(max(lat), 3) if lat else None},
        "first_token_s": pct(ttft, (("p50", .5), ("p90", .9))) if ttft else None,
        "run_s_p50": round(percentile(runs, .5), 3),
        "engine_busy": round(sum(runs) / wall, 3),
        "overhead_ms": {k: round(1000 * v, 1) for k, v in pct(overhead, (("p50", .5), ("p90", .9))).items()},
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
    }
    lat_s, ft = out["latency_s"], out["first_token_s"]
    ft_p50 = f"{ft['p50']:.3f}" if ft else "-"
    print(f"| {label} | W={args.workers}, {args.steps} steps{', stream' if args.stream else ''} | {args.c} "
          f"| {len(ok)}/{len(results)} | {refusals} | {out['requests_per_s']:.2f} "
          f"| {lat_s['p50']:.3f} / {lat_s['p90']:.3f} / {lat_s['p99']:.3f} | {ft_p50} "
          f"| {out['run_s_p50']:.3f} | {out['engine_busy']:.0%} | {out['overhead_ms']['p50']:.1f} |")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = ap.add_mutually_exclusive_group()
    where.add_argument("--model", default="tiny", help="tiny (random one-layer llama), default (SmolLM2) or a path")
    where.add_argument("--url", help="a running server, e.g. http://127.0.0.1:8080")
    ap.add_argument("-n", type=int, default=64, help="requests in all")
    ap.add_argument("-c", type=int, default=8, help="concurrent clients")
    ap.add_argument("--steps", type=int, default=8, help="max_steps of each request")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--stream", action="store_true")
    ap.add_argument("--no-retry", action="store_true", help="count a 503 as the request's end")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads of the server started here")
    ap.add_argument("--queue", type=int, default=8, help="queue places of the server started here")
    ap.add_argument("--ctx", type=int, default=4096, help="context of the server started here")
    ap.add_argument("--api-key", default=os.environ.get("HOGWILD_API_KEY"))
    ap.add_argument("--json", help="also write the numbers here")
    args = ap.parse_args()

    stop = None
    if args.url:
        url, label = args.url.rstrip("/"), args.url
    else:
        url, stop, label = start_server(args.model, args)
    try:
        asyncio.run(load(url, argparse.Namespace(**{**vars(args), "n": 1, "c": 1})))  # warm-up, not counted
        results, wall = asyncio.run(load(url, args))
    finally:
        if stop is not None:
            stop()
    print("| model | request | clients | answered | 503s | req/s | latency p50 / p90 / p99 s | first token p50 s "
          "| run p50 s | engine busy | overhead p50 ms |\n|---|---|---|---|---|---|---|---|---|---|---|")
    out = report(results, wall, args, label)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
