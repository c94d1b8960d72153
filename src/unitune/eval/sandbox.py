"""Running untrusted generated code (HumanEval completions) in a subprocess with limits.

Each program runs in a fresh temporary directory (its working and home directory, deleted
afterwards) in a new process group, under:
- a wall-clock limit (the whole group is killed) and a CPU-time limit;
- an address-space limit (a memory bomb fails with MemoryError) and a file-size limit;
- no network: a separate network namespace (``unshare -n``) where the machine allows it, and in
  any case an audit hook that refuses sockets;
- an audit hook that refuses writing, deleting, renaming or changing anything outside its
  directory, starting other programs, and loading ``ctypes``.

This is what OpenAI's human-eval harness does (limits plus disabled functions) with a network
namespace on top; it keeps a model's mistakes from harming the machine, not a determined
attacker (use a container or VM for that).
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

_GUARD = r'''
import os, resource, sys
limit_mb, cpu_s, here = int(sys.argv[1]), int(sys.argv[2]), os.path.realpath(sys.argv[3])
resource.setrlimit(resource.RLIMIT_AS, (limit_mb << 20, limit_mb << 20))
resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
resource.setrlimit(resource.RLIMIT_FSIZE, (16 << 20, 16 << 20))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

def inside(path):
    try:
        path = os.fsdecode(path)
    except TypeError:
        return False
    full = os.path.realpath(path if os.path.isabs(path) else os.path.join(os.getcwd(), path))
    return full == here or full.startswith(here + os.sep)

WRITES = {"os.remove", "os.rmdir", "os.rename", "os.mkdir", "os.chmod", "os.chown",
          "os.symlink", "os.link", "os.truncate", "os.utime", "shutil.rmtree", "shutil.move",
          "os.replace"}
REFUSED = {"subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn",
           "os.fork", "os.forkpty", "pty.spawn", "socket.connect", "socket.bind",
           "socket.sendto", "socket.getaddrinfo", "socket.__new__", "os.kill", "os.killpg",
           "ctypes.dlopen", "ctypes.dlsym"}

def hook(event, args):
    if event in REFUSED or event.startswith(("os.exec", "os.spawn")):
        raise PermissionError(f"sandbox: {event} is not allowed")
    if event == "import" and args[0] in ("ctypes", "_ctypes"):
        raise PermissionError("sandbox: ctypes is not allowed")
    if event == "open":
        path, mode, flags = args
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or \
            (isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
        if writing and not inside(path):
            raise PermissionError(f"sandbox: writing {path!r} outside the sandbox")
    if event in WRITES and not all(inside(a) for a in args[:2] if isinstance(a, (str, bytes))):
        raise PermissionError(f"sandbox: {event} outside the sandbox")

sys.addaudithook(hook)
source = open("program.py").read()
exec(compile(source, "program.py", "exec"), {"__name__": "__main__"})
'''


@dataclass(frozen=True)
class Outcome:
    status: str  # "passed", "failed" (an exception or a non-zero exit), "timeout"
    detail: str = ""  # the end of stderr, or why it stopped

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@functools.cache
def _network_namespace() -> list[str]:
    """``unshare -n -r`` when this machine lets an unprivileged process make one."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return []
    try:
        ok = subprocess.run([unshare, "-n", "-r", "true"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [unshare, "-n", "-r"] if ok.returncode == 0 else []


def run_program(source: str, timeout_s: float = 10.0, memory_mb: int = 1024) -> Outcome:
    """Run ``source`` as a Python program under the limits above; passed = exit code 0."""
    folder = Path(tempfile.mkdtemp(prefix="unitune-sandbox-"))
    try:
        (folder / "program.py").write_text(source, encoding="utf-8")
        (folder / "guard.py").write_text(_GUARD, encoding="utf-8")
        env = {"PATH": "/usr/bin:/bin", "HOME": str(folder), "PYTHONHASHSEED": "0",
               "PYTHONDONTWRITEBYTECODE": "1", "LANG": "C.UTF-8"}
        command = [*_network_namespace(), sys.executable, "-I", "guard.py", str(memory_mb),
                   str(max(1, int(timeout_s))), str(folder)]
        proc = subprocess.Popen(command, cwd=folder, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                start_new_session=True)
        try:
            _, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return Outcome("timeout", f"stopped after {timeout_s:g}s")
        tail = err.decode("utf-8", "replace").strip().splitlines()[-3:]
        if proc.returncode == -signal.SIGXCPU or proc.returncode == -signal.SIGKILL:
            return Outcome("timeout", f"CPU limit ({proc.returncode})")
        return Outcome("passed" if proc.returncode == 0 else "failed", "\n".join(tail))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
