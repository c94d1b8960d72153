"""Which process this is when ``torchrun`` or ``accelerate launch`` started several, and the
guards built on it.

Both launchers set ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; a plain ``unitune`` run is rank 0
of 1. ``is_main()`` is the one guard for every write to a run folder. Work that must happen
once per machine before any collective (tokenising the data, building a preset) is done by the
local main process while the others wait for its result on disk (``build_once``): no process
group exists yet, so no collective can time out however long that work takes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
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


def wait_for(done: Path, failed: Path, what: str, since: float) -> None:
    """Block until ``done`` exists (another process finished ``what``); if ``failed`` appears
    instead (written after ``since``), raise its message: the same one-line error the other
    process reported."""
    while not done.exists():
        try:
            if failed.stat().st_mtime >= since:
                raise UserError(failed.read_text(encoding="utf-8").strip()
                                or f"{what} failed in another process")
        except FileNotFoundError:
            pass
        time.sleep(0.5)


def build_once(target: Path, done: str, what: str, build) -> None:
    """Make the folder ``target`` (complete once ``target/done`` exists) once per machine: the
    local main process runs ``build(tmp)`` into a temporary sibling and renames it into place
    (an interrupted build leaves nothing behind; one that loses the rename to another machine
    sharing the folder is dropped), while the other processes wait for it. A failure is
    written to ``<target>.error``, so the waiting processes stop with the same message."""
    failed = target.with_name(target.name + ".error")
    if (target / done).exists():
        return
    if not is_local_main():  # (an error file older than this wait is a past attempt's)
        wait_for(target / done, failed, what, since=time.time() - 60)
        return
    failed.unlink(missing_ok=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        build(tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process (sharing the folder) finished first: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException as exc:
        failed.write_text(str(exc) if isinstance(exc, UserError) else
                          f"{what} failed in another process: {type(exc).__name__}: {exc}",
                          encoding="utf-8")
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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
