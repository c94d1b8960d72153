"""Which process this is when ``torchrun`` or ``accelerate launch`` started several, and the
guards built on it.

Both launchers set ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; a plain ``unitune`` run is rank 0
of 1. ``is_main()`` is the one guard for every write to a run folder. Work that must happen
once per machine before any collective (tokenising the data, building a preset) is done by the
local main process while the others wait for its result on disk (``wait_for``): no process
group exists yet, so no collective can time out however long that work takes.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from unitune.errors import UserError


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    """The process that writes run folders, logs and progress bars."""
    return rank() == 0


def is_local_main() -> bool:
    """The process that prepares what every process of this machine reads (data caches)."""
    return local_rank() == 0


def wait_for(done: Path, failed: Path | None, what: str, since: float = 0.0,
             poll_s: float = 0.5) -> None:
    """Block until ``done`` exists (another process finished ``what``); if ``failed`` appears
    instead (written after ``since``), raise its message: the same one-line error the other
    process reported."""
    while not done.exists():
        try:
            if failed is not None and failed.stat().st_mtime >= since:
                raise UserError(failed.read_text(encoding="utf-8").strip()
                                or f"{what} failed in another process")
        except FileNotFoundError:
            pass
        time.sleep(poll_s)


def barrier() -> None:
    """Wait for every process, once a process group exists (no-op otherwise)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def any_process(flag: bool) -> bool:
    """True when ``flag`` is true on any process (an all-reduce; ``flag`` alone without a
    process group)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return flag
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    value = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())
