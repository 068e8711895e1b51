"""A run's guard: what a CLI run starts outside its own process dies with it, even by SIGKILL.

    python flows/run_guard.py --parent PID --remove DIR [-- COMMAND ARG...]

Started by `flows.runtime.shared_api_server`. It runs COMMAND (the temporary Prefect API
server) as its child and waits. When the process PID (the CLI) dies, however it died,
the guard kills COMMAND, removes DIR (the run's temporary folder: the server's database,
Dask's scratch space) and exits, within a fraction of a second. Without COMMAND it only
watches PID and removes DIR. On SIGTERM (the CLI stopping the server normally) it passes
SIGTERM on to COMMAND, waits for it, and exits with its status (uvicorn's 3 means "port
in use", which the caller retries on another port).

Why a separate guard rather than `prctl(PR_SET_PDEATHSIG)` on the server alone: a signal
can kill the server, but nothing would then remove DIR; and the parent-death signal fires
when the *thread* that forked the child ends, not the process. The guard watches the
parent process itself (a pidfd, Linux 5.3+; else it polls `getppid()`), and its own child
gets the parent-death signal from the guard's main thread, which lives until the end, so
a SIGKILLed guard takes the server with it too.

Standard library only, run by file path: it starts in milliseconds and needs nothing
importable from the repository.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import select
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence

_PR_SET_PDEATHSIG = 1
#: How often the fallback watch (no pidfd) checks whether the parent is still there.
_POLL_S = 0.1


def _die_with_parent() -> None:
    """In the child, between fork and exec: SIGKILL me when the guard (my parent) ends.

    It also unblocks SIGTERM, which the guard blocks while it starts the child (see main):
    a signal mask survives exec, and a server that never sees SIGTERM cannot be stopped.
    """
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the guard still kills the child itself
        pass


def _wait_for_death(pid: int, stop: threading.Event) -> None:
    """Return once process `pid`, our parent, has exited (or `stop` is set)."""
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        fd = -1
    # The parent may have died before the pidfd was opened (and its PID been reused):
    # re-parenting shows it.
    if os.getppid() != pid:
        return
    if fd >= 0:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        while not stop.is_set():
            if poller.poll(1000):
                break
        os.close(fd)
        return
    while not stop.is_set() and os.getppid() == pid:
        stop.wait(_POLL_S)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the guard; returns COMMAND's exit status (0 without COMMAND)."""
    args = list(sys.argv[1:] if argv is None else argv)
    command: list[str] = []
    if "--" in args:
        split = args.index("--")
        args, command = args[:split], args[split + 1:]
    p = argparse.ArgumentParser(prog="run_guard", description=__doc__.splitlines()[0])
    p.add_argument("--parent", type=int, required=True, help="the process whose death ends everything")
    p.add_argument("--remove", required=True, help="folder removed when the parent dies")
    opts = p.parse_args(args)

    child: subprocess.Popen[bytes] | None = None
    terminated = threading.Event()

    def on_term(signum: int, frame: object) -> None:
        terminated.set()
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_term)
    # Ctrl-C in the CLI's terminal: the CLI decides when its server stops (after its last logs).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if command:
        # SIGTERM is held back until `child` is set. Popen forks before it returns, so a
        # caller that sees the child and stops us at once would otherwise find `child` still
        # None in on_term: the SIGTERM was swallowed and the guard waited on its command forever.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        try:
            child = subprocess.Popen(command, preexec_fn=_die_with_parent)  # before the watcher thread starts
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})  # a pending one runs on_term now

    stop = threading.Event()
    watcher = threading.Thread(target=_wait_for_death, args=(opts.parent, stop), daemon=True)
    watcher.start()
    while watcher.is_alive():
        if child is not None and child.poll() is not None:
            break
        if child is None and terminated.is_set():
            break
        watcher.join(_POLL_S)
    stop.set()
    parent_gone = os.getppid() != opts.parent  # re-parented: the parent has exited
    if child is not None:
        if parent_gone and child.poll() is None:
            child.kill()
        code = child.wait()
    else:
        code = 0
    if parent_gone:
        shutil.rmtree(opts.remove, ignore_errors=True)
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main())
