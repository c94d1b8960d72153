"""Load on `unitune serve`: many concurrent clients for a bounded time, against answering the
same requests one at a time with plain `model.generate` (both sides in this one run).

    python benchmarks/serve_load.py                       # tiny preset on the CPU
    python benchmarks/serve_load.py --model runs/x --clients 1,8,32 --seconds 30 --device cuda

Every request is a chat completion of a synthetic-suite prompt with `--max-tokens` new
tokens, greedy, `ignore_eos` so both sides generate the same number of tokens. Prints, per
client count: requests/s, generated tokens/s, p50/p99 latency and errors; then the baseline's
tokens/s and the ratio of each to it.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def prompts(n: int) -> list[list[dict]]:
    import random

    from unitune.data.synth import DEFAULT_FAMILIES, FAMILIES

    rng = random.Random(0)
    out = []
    for i in range(n):
        ex = FAMILIES[DEFAULT_FAMILIES[i % len(DEFAULT_FAMILIES)]][1](rng)
        out.append([{"role": "user", "content": f"{ex.instruction}\n\n{ex.input}"}])
    return out


def baseline(model_name: str, messages: list[list[dict]], max_tokens: int, device: str
             ) -> float:
    """Generated tokens/s answering one request at a time with plain model.generate."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from unitune.data.readers import conversation_from_messages
    from unitune.models.loading import resolve_model_path, resolve_template
    from unitune.run import is_run, open_model

    if is_run(Path(model_name)):  # a run: base + adapter, as PEFT runs it
        model, tok, template = open_model(model_name, device=device, log=lambda *a: None)
    else:
        path = resolve_model_path(model_name, log=lambda *a: None)
        model = AutoModelForCausalLM.from_pretrained(path).to(device).eval()
        tok = AutoTokenizer.from_pretrained(path)
        template = resolve_template("auto", model.config.model_type, tok)
    rendered = [template.render_prompt(conversation_from_messages(m), tok) for m in messages]
    tokens, start = 0, time.perf_counter()
    with torch.inference_mode():
        for text in rendered:
            ids = tok(text, return_tensors="pt").to(device)
            out = model.generate(**ids, max_new_tokens=max_tokens, min_new_tokens=max_tokens,
                                 do_sample=False, pad_token_id=tok.pad_token_id)
            tokens += out.shape[1] - ids["input_ids"].shape[1]
    return tokens / (time.perf_counter() - start)


def load(url: str, bodies: list[dict], clients: int, seconds: float,
         endpoint: str = "/v1/chat/completions") -> dict:
    """``clients`` threads sending ``bodies`` (round robin) for ``seconds``: throughput,
    latency percentiles and errors."""
    import httpx

    stop_at = time.perf_counter() + seconds
    latencies, tokens, errors, lock = [], [0], [0], threading.Lock()

    def client(k: int) -> None:
        with httpx.Client(timeout=600) as http:
            i = k
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                r = http.post(f"{url}{endpoint}", json=bodies[i % len(bodies)])
                with lock:
                    if r.status_code == 200:
                        latencies.append(time.perf_counter() - t0)
                        tokens[0] += r.json()["usage"]["completion_tokens"]
                    else:
                        errors[0] += 1
                i += clients

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    wall = time.perf_counter() - start
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies * 99
    return {"clients": clients, "requests": len(latencies), "errors": errors[0],
            "requests_per_s": round(len(latencies) / wall, 2),
            "tokens_per_s": round(tokens[0] / wall, 1),
            "p50_s": round(statistics.median(latencies), 3), "p99_s": round(q[98], 3)}


def start_server(args: list[str], timeout_s: float = 600.0
                 ) -> tuple[subprocess.Popen, str, list[dict]]:
    """`unitune serve ARGS` on a free port of 127.0.0.1, started as users start it: (process,
    base url, its models) once it answers. Its output goes to a log file (a pipe nobody
    reads would stall a chatty server), removed once the server is up; the log's tail is the
    error if it exits or does not start in ``timeout_s``. The tests start their servers with
    it too."""
    import tempfile

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(  # (works without an install, too)
        [str(REPO / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])}
    key = next((a.split("=", 1)[1] if "=" in a else args[i + 1]
                for i, a in enumerate(args) if a.split("=", 1)[0] == "--api-key"), None)
    fd, log = tempfile.mkstemp(prefix="unitune-serve-", suffix=".log")
    with os.fdopen(fd, "w") as out:
        server = subprocess.Popen([sys.executable, "-c", "from unitune.cli import main; raise "
                                   "SystemExit(main())", "serve", *args, "--port", str(port)],
                                  stdout=out, stderr=subprocess.STDOUT, text=True, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout_s
    try:
        while server.poll() is None and time.time() < deadline:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    models = httpx.get(f"{url}/v1/models", headers={
                        "Authorization": f"Bearer {key}"} if key else {}).json()["data"]
                    os.unlink(log)
                    return server, url, models
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        what = "exited" if server.poll() is not None else f"did not start in {timeout_s:.0f} s"
    except BaseException:
        server.kill()
        raise
    server.kill()
    server.wait()
    tail = Path(log).read_text(encoding="utf-8", errors="replace")[-3000:]
    os.unlink(log)
    raise RuntimeError(f"`unitune serve {' '.join(args)}` {what}:\n{tail}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny-llama", help="a base model or a run")
    ap.add_argument("--clients", default="1,4,16,64")
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--baseline-requests", type=int, default=24)
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    messages = prompts(256)
    server, url, models = start_server([args.model, "--device", args.device, "--max-batch",
                                        str(args.max_batch)])
    bodies = [{"model": models[-1]["id"], "messages": m, "max_tokens": args.max_tokens,
               "temperature": 0, "ignore_eos": True} for m in messages]
    try:
        load(url, bodies, 4, 3)  # warm-up
        rows = [load(url, bodies, int(c), args.seconds) for c in args.clients.split(",")]
    finally:
        server.terminate()
        server.wait(timeout=60)
    base = baseline(args.model, messages[:args.baseline_requests], args.max_tokens,
                    args.device)
    print(f"plain model.generate, one request at a time: {base:.1f} generated tokens/s")
    print("| clients | requests/s | tokens/s | p50 (s) | p99 (s) | errors | vs plain generate |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['clients']} | {r['requests_per_s']} | {r['tokens_per_s']} | {r['p50_s']} | "
              f"{r['p99_s']} | {r['errors']} | {r['tokens_per_s'] / base:.2f}x |")
    print(json.dumps({"baseline_tokens_per_s": round(base, 1), "rows": rows}))


if __name__ == "__main__":
    main()
