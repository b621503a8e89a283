"""Run a child program from this folder: read its stdout with deadlines, always stop it.

A reader thread per pipe keeps the child from ever blocking on a full pipe and
lets the parent wait for "the next line" with a deadline instead of a sleep.
Only complete lines (ending in a newline) count: a child killed in the middle
of a ``print`` leaves a partial line, which is not an acknowledgement.
"""

from __future__ import annotations

import contextlib
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

__all__ = ["PROCS", "Child", "ChildError", "running"]

PROCS = Path(__file__).resolve().parent
_EOF = ""


class ChildError(AssertionError):
    """The child did not say what the test waited for (it exited, failed or was too slow)."""


class Child:
    """One running child program (``sys.executable PROCS/script args...``)."""

    def __init__(self, script: str, *args: str) -> None:
        self.argv = [sys.executable, str(PROCS / script), *args]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self._lines: queue.Queue[str] = queue.Queue()
        self._stderr: list[str] = []
        self._eof = False
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._threads = [
            threading.Thread(
                target=self._pump, args=(self.proc.stdout, self._lines.put), daemon=True
            ),
            threading.Thread(
                target=self._pump, args=(self.proc.stderr, self._stderr.append), daemon=True
            ),
        ]
        for thread in self._threads:
            thread.start()

    @staticmethod
    def _pump(pipe: IO[str], sink: Callable[[str], object]) -> None:
        for line in iter(pipe.readline, ""):
            sink(line)
        sink(_EOF)

    @property
    def stderr(self) -> str:
        return "".join(self._stderr)

    def describe(self) -> str:
        return f"{' '.join(self.argv[1:])} (exit {self.proc.poll()}):\n{self.stderr[-4000:]}"

    def line(self, timeout: float) -> str:
        """The next complete stdout line (without its newline); waits at most ``timeout`` s."""
        deadline = time.monotonic() + timeout
        if not self._eof:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise ChildError(f"no output within {timeout}s from {self.describe()}") from None
            if line.endswith("\n"):
                return line[:-1]
            self._eof = True
        raise ChildError(f"child ended its output early: {self.describe()}")

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def kill(self, timeout: float = 30.0) -> list[str]:
        """SIGKILL the child; return the complete lines it wrote that were not read yet."""
        self.proc.kill()
        return self.finish(timeout)

    def finish(self, timeout: float) -> list[str]:
        """Wait for the child to exit (at most ``timeout`` s); return its unread lines."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise ChildError(f"still running after {timeout}s: {self.describe()}") from None
        for thread in self._threads:
            thread.join(timeout)
        rest: list[str] = []
        while not self._eof:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:  # pragma: no cover - the pump thread always ends with _EOF
                break
            if not line.endswith("\n"):
                self._eof = True
            else:
                rest.append(line[:-1])
        return rest

    def stop(self) -> None:
        """Make sure the child is gone and its pipes are closed (idempotent)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)
        for thread in self._threads:
            thread.join(30)
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError):  # stdin of a killed child cannot flush
                    pipe.close()


@contextmanager
def running(script: str, *args: str) -> Iterator[Child]:
    """Start ``script``; on leaving the block (even by an exception) the child is stopped."""
    child = Child(script, *args)
    try:
        yield child
    finally:
        child.stop()
