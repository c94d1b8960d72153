"""One device call that measures what issues 11, 14 and 18 still need on the H200, most
important first, inside a time budget.

A session is lent the GPU for 15 minutes in all (the machine's start included), so every
measurement cannot fit: the parts run in the order given, each under its own time limit and
what is left of the budget (a part is not started when too little is left for it to measure
anything), each logging to ``OUT/<part>.log`` as it goes (a part cut short still returns the
rows it printed, and nothing it started outlives it), and ``OUT/summary.md`` says what ran,
how long, and how it ended. Two steps:

    python benchmarks/gpu_session.py prepare        # here, on the CPU machine: .whl/ + .bench/
    python3 benchmarks/gpu_session.py run --budget 540 --out "$OUT"     # there (carry .whl .bench)

``prepare`` downloads the wheels the device image lacks (Python 3.12, x86-64; versions pinned
below and checked against transformers 5.17, the image's version) into ``.whl/`` and copies
the Alpaca sample and the Llama-2 tokenizer from ``../shared`` into ``.bench/`` (the shared
folder beside the checkout does not travel); both folders are git-ignored. ``run`` installs the
wheels into /tmp/site, checks every import the parts need, then runs the parts:

- ``smoke`` (issue 11): DDP LoRA and FSDP2 full fine-tuning of a 1B Llama under torchrun;
- ``serve`` (issue 14): batch-1 decoding (dynamic and static cache) and ``unitune serve`` at
  32 clients against plain ``model.generate``;
- ``train-core`` (issue 18): the 8B LoRA setup with checkpointing of every layer and of 16,
  without checkpointing, packed rows under FlexAttention, and the low-memory mode, against
  the baseline where it has one, profiled;
- ``train-rest`` (issue 18): selective checkpointing of 24 and 20 layers, offload, packed rows
  under SDPA, 4096 tokens, QLoRA, full fine-tuning of 1B, real Alpaca data packed against padded.

``run --tiny`` runs every part at tiny size on the CPU (what the tests do, so the call does
not rot between GPU sessions).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"

# what the device image (torch 2.11, transformers 5.17, peft, accelerate, triton) lacks for
# the parts; the versions are the ones the parts were checked with against transformers 5.17
WHEELS = {"pydantic": "2.14.4", "pydantic-core": "2.50.5", "annotated-types": "0.8.0",
          "typing-inspection": "0.4.5", "datasets": "5.2.0", "dill": "0.4.1",
          "multiprocess": "0.70.19", "fastapi": "0.165.0", "starlette": "1.10.0",
          "uvicorn": "0.54.0", "opentelemetry-api": "1.45.2", "liger-kernel": "0.8.5",
          "bitsandbytes": "0.50.2"}
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64",
             "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64"]
IMPORTS = ["torch", "transformers", "peft", "accelerate", "datasets", "pydantic", "fastapi",
           "uvicorn", "httpx", "liger_kernel.transformers", "bitsandbytes", "unitune.cli"]

BENCH = [sys.executable, "benchmarks/train_throughput.py", "--steps", "6", "--warmup", "2",
         "--profile"]
REAL = ["--data", ".bench/alpaca_en_2k.json",
        "--tokenizer-model", ".bench/tokenizers/llama2_sp.model"]
REAL_HERE = ["--data", str(SHARED / "instruct" / "alpaca_en_2k.json"),
             "--tokenizer-model", str(SHARED / "tokenizers" / "llama2_sp.model")]


@dataclass
class Part:
    limit: float  # seconds it may take at most
    least: float  # seconds below which starting it would measure nothing
    gpu: list[str]  # the command on the GPU
    tiny: list[str]  # the command with --tiny (the CPU)


PARTS = {  # most important first: issue 11 and issue 14 each close with one part
    "smoke": Part(200, 60, [sys.executable, "benchmarks/distributed_smoke.py", "--shape", "1b",
                            "--steps", "20", "--batch", "8"],
                  [sys.executable, "benchmarks/distributed_smoke.py", "--shape", "tiny",
                   "--device", "cpu", "--nproc", "2", "--steps", "2", "--batch", "2"]),
    "serve": Part(330, 150, [sys.executable, "benchmarks/serve_gpu.py", "--shape", "8b",
                             "--seconds", "20"],
                  [sys.executable, "benchmarks/serve_gpu.py", "--shape", "tiny", "--seconds",
                   "2", "--clients", "4", "--new-tokens", "8"]),
    "train-core": Part(300, 90, [*BENCH, "--suite", "0,3,4,6,10"],
                       [*BENCH, "--suite", "0,3,4,6", "--suite-shape", "tiny", "--device",
                        "cpu", "--steps", "1", "--warmup", "1"]),
    "train-rest": Part(420, 60, [*BENCH, "--suite", "1,2,5,7,8,9,11,12", "--baseline-autocast",
                                 *REAL],
                       [*BENCH, "--suite", "1,2,5,7,8,11,12", "--suite-shape", "tiny",
                        "--device", "cpu", "--steps", "1", "--warmup", "1", *REAL_HERE]),
}


def prepare() -> None:
    """Wheels into .whl/ and the benchmark's real data into .bench/, both git-ignored."""
    wheels, bench = REPO / ".whl", REPO / ".bench"
    shutil.rmtree(wheels, ignore_errors=True)
    platforms = [a for p in PLATFORMS for a in ("--platform", p)]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                    "--only-binary=:all:", "--python-version", "3.12", "--implementation",
                    "cp", *platforms, "-d", str(wheels),
                    *(f"{name}=={version}" for name, version in WHEELS.items())], check=True)
    (bench / "tokenizers").mkdir(parents=True, exist_ok=True)
    shutil.copy(SHARED / "instruct" / "alpaca_en_2k.json", bench)
    shutil.copy(SHARED / "tokenizers" / "llama2_sp.model", bench / "tokenizers")
    exclude = REPO / ".git" / "info" / "exclude"
    exclude.parent.mkdir(parents=True, exist_ok=True)
    ignored = exclude.read_text() if exclude.exists() else ""
    exclude.write_text(ignored + "".join(f"/{d}/\n" for d in (".whl", ".bench")
                                         if f"/{d}/" not in ignored))
    size = sum(f.stat().st_size for d in (wheels, bench) for f in d.rglob("*") if f.is_file())
    print(f"{len(list(wheels.glob('*.whl')))} wheels in .whl/, data in .bench/: "
          f"{size / 2**20:.0f} MiB to carry (the device takes 64 MiB with the tree)")


def install(site: Path) -> None:
    """The carried wheels into ``site`` (put first on the parts' path)."""
    wheels = sorted(str(w) for w in (REPO / ".whl").glob("*.whl"))
    if not wheels:
        sys.exit("no wheels in .whl/: run `python benchmarks/gpu_session.py prepare` here and "
                 "carry .whl and .bench")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                    "--no-compile", "--no-cache-dir", "--upgrade", "--target", str(site),
                    *wheels], check=True)


def _stop(proc: subprocess.Popen, grace: float = 15.0) -> None:
    """End ``proc``, its process group and every process below it (torchrun starts each
    worker in a session of its own): SIGTERM first (torchrun's agent then stops its workers,
    a server shuts down), SIGKILL to whatever is left after ``grace`` seconds."""
    try:
        import psutil

        below = psutil.Process(proc.pid).children(recursive=True)
    except Exception:  # (psutil missing, or the process already gone)
        below = []

    def send(sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        for child in below:
            with contextlib.suppress(Exception):
                child.send_signal(sig)

    def alive(child) -> bool:
        try:
            return child.is_running() and child.status() != "zombie"
        except Exception:
            return False

    send(signal.SIGTERM)
    deadline = time.time() + grace
    while time.time() < deadline and (proc.poll() is None or any(map(alive, below))):
        time.sleep(0.5)
    send(signal.SIGKILL)


def run_part(name: str, cmd: list[str], limit: float, out: Path, env: dict) -> str:
    """``cmd`` with its output shown and kept in ``out/name.log``; how it ended. Nothing it
    started outlives it (the next part has the GPU to itself)."""
    with open(out / f"{name}.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        cut = threading.Event()

        def at_limit() -> None:
            if proc.poll() is None:
                cut.set()
                _stop(proc)

        timer = threading.Timer(limit, at_limit)
        timer.start()
        for line in proc.stdout:
            log.write(line)
            log.flush()
            if "it/s]" not in line and "s/it]" not in line:  # (progress bars: log only)
                print(line, end="", flush=True)
        proc.wait()
        timer.cancel()
        timer.join()
        if not cut.is_set():  # (anything it left running in its group)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
    if cut.is_set():
        return f"cut at its limit ({limit:.0f} s)"
    return "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"


def run(args: argparse.Namespace) -> int:
    start = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONWARNINGS": "ignore"}
    paths = [str(REPO / "src")]
    if not args.tiny:
        site = Path("/tmp/site")
        install(site)
        paths.insert(0, str(site))
    env["PYTHONPATH"] = os.pathsep.join(paths + [env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    check = ("import importlib, sys\n"
             "for name in sys.argv[1:]:\n"
             "    try:\n"
             "        m = importlib.import_module(name)\n"
             "        print(f'{name:<28}', getattr(m, '__version__', ''))\n"
             "    except Exception as e:\n"
             "        print(f'{name:<28} MISSING: {type(e).__name__}: {e}')\n"
             "import pyarrow, torch\n"
             "print('pyarrow', pyarrow.__version__, '| cuda', torch.cuda.is_available(),\n"
             "      torch.cuda.get_device_name() if torch.cuda.is_available() else '')\n")
    imports = [m for m in IMPORTS if not (args.tiny and m in ("liger_kernel.transformers",
                                                                  "bitsandbytes"))]
    rows = [("imports", run_part("imports", [sys.executable, "-c", check, *imports], 120, out,
                                 env), time.time() - start)]
    for name in args.parts:
        left = args.budget - (time.time() - start)
        part = PARTS[name]
        limit = min(args.limits.get(name, part.limit), left)
        if left < part.least:
            rows.append((name, f"not started: {left:.0f} s left, it needs {part.least:.0f}",
                         0.0))
            continue
        print(f"\n=== {name} (at most {limit:.0f} s) ===", flush=True)
        began = time.time()
        how = run_part(name, part.tiny if args.tiny else part.gpu, limit, out, env)
        rows.append((name, how, time.time() - began))
    summary = "| part | how it ended | seconds |\n|---|---|---|\n" + "".join(
        f"| {name} | {how} | {secs:.0f} |\n" for name, how, secs in rows)
    (out / "summary.md").write_text(summary)
    print("\n" + summary, flush=True)
    return 0 if all(how == "ok" for _, how, _ in rows) else 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="verb", required=True)
    sub.add_parser("prepare", help="here: the wheels and data the device call carries")
    r = sub.add_parser("run", help="on the device: the parts, most important first")
    r.add_argument("parts", nargs="*", metavar="PART",
                   help=f"the parts, in this order (default: {' '.join(PARTS)})")
    r.add_argument("--budget", type=float, default=540, help="seconds for all the parts")
    r.add_argument("--out", default=os.environ.get("OUT", "gpu-session"),
                   help="where the logs and summary.md go (the device's $OUT)")
    r.add_argument("--tiny", action="store_true", help="every part at tiny size on the CPU")
    r.add_argument("--limit", action="append", default=[], metavar="PART=SECONDS",
                   help="a part's own time limit instead of its default")
    args = ap.parse_args()
    if args.verb == "run":
        args.limits = {}
        for given in args.limit:
            name, _, seconds = given.partition("=")
            try:
                args.limits[name] = float(seconds)
            except ValueError:
                ap.error(f"--limit {given}: give PART=SECONDS")
        unknown = [p for p in [*args.parts, *args.limits] if p not in PARTS]
        if unknown:
            ap.error(f"no part {unknown[0]!r}; the parts are {', '.join(PARTS)}")
        args.parts = args.parts or list(PARTS)
    if args.verb == "prepare":
        prepare()
    else:
        sys.exit(run(args))


if __name__ == "__main__":
    main()
