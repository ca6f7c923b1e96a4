"""Real processes for the tests, forked from the test process instead of started afresh.

A test that kills, interrupts or races torchclf needs another process: its own
process id, signals, exit status and open files. A new interpreter spends 2 to 4
s of CPU importing torch, pandas and torchclf again (``torch._dynamo`` too, once
it trains) before it does anything; a fork of this process, which has them all,
starts in milliseconds. The child starts as a new ``torchclf`` process would:
default signal handling, none of this process's exit handlers, its own standard
streams and environment, and ends with ``os._exit``, as the command does.

What a fork cannot show is how a new process starts: ``tests/test_startup.py``
runs the command in new interpreters, and the torchrun tests launch theirs.
Nothing here is for processes that use onnxruntime, whose threads do not
survive a fork.
"""

from __future__ import annotations

import atexit
import io
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
import warnings
from typing import Callable

PIPE = subprocess.PIPE
DEVNULL = subprocess.DEVNULL


class Forked:
    """``target()`` in a forked child, with the parts of :class:`subprocess.Popen` the tests use.

    ``stdin``, ``stdout`` and ``stderr``: ``None`` (/dev/null, unlike ``Popen``: this process's own
    streams are pytest's capture), :data:`PIPE` (text, as ``Popen(..., text=True)``), :data:`DEVNULL` or
    an open file. ``env`` replaces the environment, ``cwd`` the working folder. ``target``'s return
    value (an int or None) or ``SystemExit`` is the exit status; an exception is printed and exits 1.
    """

    def __init__(self, target: Callable[[], int | None], *, env: dict | None = None, cwd=None,
                 stdin=None, stdout=None, stderr=None):
        if not hasattr(os, "fork"):
            import pytest

            pytest.skip("forks a process (POSIX only)")
        ends = [self._ends(stream, child_reads=(i == 0)) for i, stream in enumerate((stdin, stdout, stderr))]
        sys.stdout.flush()
        sys.stderr.flush()
        with warnings.catch_warnings():
            # Python 3.12+ warns about forking a process with threads (here pytest-xdist's and test servers'):
            # the child runs this thread only and never takes a lock that those threads hold.
            warnings.simplefilter("ignore", DeprecationWarning)
            self.pid = os.fork()
        if self.pid == 0:  # the child: never returns
            self._child(target, env, cwd, [child for child, _ in ends], [parent for _, parent in ends])
        self.returncode: int | None = None
        for child, parent in ends:
            if child is not None and child > 2:
                os.close(child)
        self.stdin, self.stdout, self.stderr = (
            None if parent is None else open(parent, "w" if i == 0 else "r", closefd=True)
            for i, (_, parent) in enumerate(ends))

    @staticmethod
    def _ends(stream, child_reads: bool) -> tuple[int | None, int | None]:
        """(the child's descriptor, the parent's end of a pipe or None)."""
        if stream is PIPE:
            read, write = os.pipe()
            return (read, write) if child_reads else (write, read)
        if stream is None or stream is DEVNULL:
            return os.open(os.devnull, os.O_RDWR), None
        return os.dup(stream.fileno()), None

    @staticmethod
    def _child(target, env, cwd, fds: list[int], parent_ends: list[int | None]) -> None:
        status = 1
        try:
            # As Python sets them up in a new process: Ctrl-C raises, SIGPIPE and SIGXFSZ are ignored.
            signal.signal(signal.SIGINT, signal.default_int_handler)
            for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
                signal.signal(signum, signal.SIG_DFL)
            for signum in (signal.SIGPIPE, signal.SIGXFSZ):
                signal.signal(signum, signal.SIG_IGN)
            atexit._clear()
            for end in parent_ends:
                if end is not None:
                    os.close(end)
            for target_fd, fd in enumerate(fds):
                os.dup2(fd, target_fd)
            sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False))
            sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), write_through=False)
            sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), line_buffering=True)
            if env is not None:
                os.environ.clear()
                os.environ.update(env)
            if cwd is not None:
                os.chdir(cwd)
            result = target()
            status = 0 if result is None else int(result)
        except SystemExit as stop:
            status = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        except BaseException:  # noqa: BLE001  reported as an uncaught exception would be
            traceback.print_exc()
        finally:
            try:
                atexit._run_exitfuncs()
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(status)

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid == self.pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"forked process {self.pid}", timeout)
            time.sleep(0.005)
        return self.returncode

    def communicate(self, timeout: float | None = None) -> tuple[str | None, str | None]:
        """The piped output, read to its end, once the process has ended (or TimeoutExpired)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        texts: dict[int, str] = {}
        readers = [threading.Thread(target=lambda i=i, f=f: texts.__setitem__(i, f.read()), daemon=True)
                   for i, f in enumerate((self.stdout, self.stderr)) if f is not None]
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if reader.is_alive():
                raise subprocess.TimeoutExpired(f"forked process {self.pid}", timeout)
        self.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return texts.get(0), texts.get(1)

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, signum)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def cli(*args: str) -> Callable[[], None]:
    """The ``torchclf`` command with ``args``, as its console entry runs it (``cli.run``)."""

    def command() -> None:
        from torchclf.cli import run

        sys.argv = ["torchclf", *args]
        run()

    return command
