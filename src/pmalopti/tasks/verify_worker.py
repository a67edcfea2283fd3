"""math-verify in worker processes, with a hard deadline per call that works from any thread.

math-verify's own timeout uses SIGALRM, which only the main thread may set: called from a worker
thread (a trainer's reward thread, a thread pool) a hostile answer such as `10^{10^{10}}` makes
sympy compute forever while holding the GIL, freezing the whole process. Here each call goes to a
persistent worker process; the caller waits at most `timeout_s` on a queue (no GIL held while
waiting). A worker that misses its deadline is killed and replaced; the answer counts as wrong.

Workers are forked from a "zygote": one subprocess (`python -m pmalopti.tasks.verify_worker`) that
imported and warmed math-verify once, so a replacement is ready in milliseconds. They are plain
subprocesses, never `multiprocessing` ones, so nothing re-imports the caller's `__main__` and
daemon processes may use them. Where `fork` is missing (Windows) each worker is its own
subprocess. A worker's address space is capped (`MEMORY_LIMIT_BYTES`, Linux) so a huge integer
fails with MemoryError inside it instead of exhausting the machine.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time

from pmalopti.tasks.math_screen import screen_answer

DEFAULT_TIMEOUT_S = 0.8
"""Deadline per call (parse both answers + verify): a legitimate answer takes 10-150 ms."""
STARTUP_TIMEOUT_S = 120.0
"""How long the first call waits for math-verify to import (not counted against its deadline)."""
MEMORY_LIMIT_BYTES = 2 << 30
"""Extra address space a worker may take beyond what it had at start (Linux)."""


# --- inside the worker -------------------------------------------------------------------------


def _limit_memory() -> None:
    """Cap the address space, and die with the parent (Linux): a stuck worker never outlives it."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    try:
        import resource

        with open("/proc/self/statm") as f:
            vm = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        limit = vm + MEMORY_LIMIT_BYTES
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ImportError, OSError, ValueError):
        pass  # not Linux: the deadline still holds


def verify_in_process(pred: str, gold: str, timeout: int | None = None) -> bool:
    """math-verify equality of two answer strings (LaTeX or plain), in this process."""
    import math_verify as mv

    def wrap(s: str) -> str:
        return s if "$" in s else f"${s}$"

    gold_p = mv.parse(wrap(gold), parsing_timeout=timeout)
    pred_p = mv.parse(wrap(pred), parsing_timeout=timeout)
    if not gold_p or not pred_p:
        return pred.strip() == gold.strip() != ""
    return bool(mv.verify(gold_p, pred_p, timeout_seconds=timeout))


def _serve(rfile, wfile, signal_timeout: int) -> None:
    """One JSON [pred, gold] per input line, one `true`/`false` per output line."""
    for line in rfile:
        try:
            pred, gold = json.loads(line)
            ok = verify_in_process(str(pred), str(gold), signal_timeout)
        except BaseException:  # MemoryError, RecursionError, sympy's own errors: wrong
            ok = False
        wfile.write("true\n" if ok else "false\n")
        wfile.flush()


def _zygote(ctl_fd: int, signal_timeout: int) -> None:
    """Fork a warm worker per request on the control socket; send back (pid, socket)."""
    _limit_memory()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped automatically
    ctl = socket.socket(fileno=ctl_fd)
    ctl.sendall(b"r")
    while ctl.recv(1) == b"s":
        ours, theirs = socket.socketpair()
        pid = os.fork()
        if pid == 0:
            ctl.close()
            ours.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            _limit_memory()
            with theirs.makefile("r", encoding="utf-8") as r, theirs.makefile("w") as w:
                _serve(r, w, signal_timeout)
            os._exit(0)
        theirs.close()
        socket.send_fds(ctl, [pid.to_bytes(8, "little")], [ours.fileno()])
        ours.close()


def main(argv: list[str]) -> None:
    signal_timeout = max(1, round(float(argv[1]) * 2))  # math-verify's own alarm, a second line
    with contextlib.suppress(Exception):
        verify_in_process("1", "1", signal_timeout)  # import sympy's lazy parts now
    if argv[0] == "zygote":
        _zygote(int(argv[2]), signal_timeout)
    else:
        _limit_memory()
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        _serve(sys.stdin, sys.stdout, signal_timeout)


# --- in the caller ------------------------------------------------------------------------------


def _command(*args: str) -> tuple[list[str], dict[str, str]]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    return [sys.executable, "-m", "pmalopti.tasks.verify_worker", *args], env


class VerifyTimeout(Exception):
    """A call missed its deadline (the worker has been killed)."""


class _Worker:
    """One worker: write request lines to `wfile`; a reader thread queues the reply lines."""

    def __init__(self, rfile, wfile, kill, ready: bool):
        self.rfile, self.wfile, self._kill = rfile, wfile, kill
        self.replies: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self.ready, self.dead = ready, False
        threading.Thread(target=self._read, daemon=True, name="math-verify-reader").start()

    def _read(self) -> None:
        with contextlib.suppress(Exception):
            for line in self.rfile:
                self.replies.put(line.strip())
        self.replies.put(None)  # end of stream: the worker is gone

    def wait_ready(self, timeout_s: float) -> bool:
        """Whether the worker is ready within `timeout_s` (raises if it died starting)."""
        if not self.ready:
            try:
                reply = self.replies.get(timeout=max(timeout_s, 0.0))
            except queue.Empty:
                return False
            self.ready = reply == "ready"
            if not self.ready:
                self.kill()
                raise RuntimeError("the math-verify worker process failed to start")
        return True

    def call(self, pred: str, gold: str, timeout_s: float) -> bool:
        try:
            self.wfile.write(json.dumps([pred, gold]) + "\n")
            self.wfile.flush()
            reply = self.replies.get(timeout=max(timeout_s, 0.0))
            if reply is not None:
                return reply == "true"
        except (OSError, ValueError, queue.Empty):  # deadline missed, or the worker died
            pass
        self.kill()
        raise VerifyTimeout

    def kill(self) -> None:
        self.dead = True
        with contextlib.suppress(Exception):
            self._kill()
        for f in (self.wfile, self.rfile):
            with contextlib.suppress(Exception):
                f.close()


def _popen_worker(timeout_s: float) -> _Worker:
    cmd, env = _command("worker", str(timeout_s))
    proc = subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
        text=True, encoding="utf-8", errors="replace",
    )  # fmt: skip

    def kill() -> None:
        proc.kill()
        proc.wait(5)

    return _Worker(proc.stdout, proc.stdin, kill, ready=False)


class _Zygote:
    """The warm process workers are forked from (POSIX)."""

    def __init__(self, timeout_s: float):
        self.ctl, theirs = socket.socketpair()
        cmd, env = _command("zygote", str(timeout_s), str(theirs.fileno()))
        self.proc = subprocess.Popen(
            cmd, pass_fds=[theirs.fileno()], env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        theirs.close()
        self.ctl.settimeout(STARTUP_TIMEOUT_S)
        if self.ctl.recv(1) != b"r":
            self.close()
            raise RuntimeError("the math-verify worker process failed to start")
        self.ctl.settimeout(10.0)

    def fork(self) -> _Worker:
        self.ctl.sendall(b"s")
        msg, fds, _, _ = socket.recv_fds(self.ctl, 8, 1)
        if len(msg) != 8 or len(fds) != 1:
            raise OSError("the math-verify zygote stopped")
        pid, sock = int.from_bytes(msg, "little"), socket.socket(fileno=fds[0])
        rfile = sock.makefile("r", encoding="utf-8", errors="replace")
        wfile = sock.makefile("w", encoding="utf-8")
        sock.close()  # the files keep the connection open

        def kill() -> None:
            os.kill(pid, signal.SIGKILL)

        return _Worker(rfile, wfile, kill, ready=True)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ctl.close()
        with contextlib.suppress(Exception):
            self.proc.kill()
            self.proc.wait(5)


class VerifyPool:
    """Persistent workers shared by all threads, one call per worker at a time.

    Grows to `max_workers` when threads call concurrently.
    """

    def __init__(self, timeout_s: float = DEFAULT_TIMEOUT_S, max_workers: int | None = None):
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.timeout_s = float(timeout_s)
        self.max_workers = max_workers or min(8, os.cpu_count() or 1)
        self._idle: list[_Worker] = []
        self._count = 0
        self._cond = threading.Condition()
        self._zygote: _Zygote | None = None
        self._zygote_lock = threading.Lock()
        self.timeouts = 0
        """calls that missed the deadline (counted as wrong)"""

    def _new(self) -> _Worker:
        if not hasattr(os, "fork"):
            return _popen_worker(self.timeout_s)
        with self._zygote_lock:
            for attempt in range(2):
                if self._zygote is None:
                    self._zygote = _Zygote(self.timeout_s)
                try:
                    return self._zygote.fork()
                except OSError:
                    self._zygote.close()
                    self._zygote = None
                    if attempt:
                        raise
        raise AssertionError("unreachable")

    def _take(self) -> _Worker:
        with self._cond:
            while not self._idle and self._count >= self.max_workers:
                self._cond.wait()
            if self._idle:
                return self._idle.pop()
            self._count += 1
        try:
            return self._new()
        except BaseException:
            with self._cond:
                self._count -= 1
                self._cond.notify()
            raise

    def _give_back(self, w: _Worker) -> None:
        with self._cond:
            if w.dead:
                self._count -= 1
            else:
                self._idle.append(w)
            self._cond.notify()

    def verify(self, pred: str, gold: str) -> bool:
        """math-verify(gold, pred); False when it misses the deadline.

        The deadline covers waiting for a worker to be ready too, except for the first worker of
        a pool without fork, which may take up to `STARTUP_TIMEOUT_S` to import math-verify.
        """
        w = self._take()  # the first call starts the zygote: not counted against the deadline
        if not w.ready and self._count == 1:
            w.wait_ready(STARTUP_TIMEOUT_S)
        deadline = time.monotonic() + self.timeout_s
        try:
            if not w.wait_ready(deadline - time.monotonic()):
                self.timeouts += 1
                return False
            return w.call(pred, gold, deadline - time.monotonic())
        except VerifyTimeout:
            self.timeouts += 1
            return False
        finally:
            self._give_back(w)

    def close(self) -> None:
        with self._cond:
            for w in self._idle:
                w.kill()
            self._idle.clear()
            self._count = 0
        with self._zygote_lock:
            if self._zygote is not None:
                self._zygote.close()
                self._zygote = None


_POOLS: dict[float, VerifyPool] = {}
_POOLS_LOCK = threading.Lock()


@atexit.register
def _close_pools() -> None:
    for pool in _POOLS.values():
        pool.close()


def shared_pool(timeout_s: float = DEFAULT_TIMEOUT_S) -> VerifyPool:
    """The process-wide pool for this deadline (created on first use)."""
    with _POOLS_LOCK:
        pool = _POOLS.get(timeout_s)
        if pool is None:
            pool = _POOLS[timeout_s] = VerifyPool(timeout_s)
        return pool


def timed_verify(pred: str, gold: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> tuple[bool, float]:
    """(result, seconds) of one screened, deadline-bound verification: for benchmarks."""
    start = time.perf_counter()
    ok = screen_answer(pred) is None and shared_pool(timeout_s).verify(pred, gold)
    return ok, time.perf_counter() - start


if __name__ == "__main__":
    main(sys.argv[1:])
