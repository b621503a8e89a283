"""Child processes for tests and benchmarks: read with deadlines, always stopped.

A :class:`Child` is one process, in one of two shapes:

- ``read_lines=True`` (the default): its stdout is read line by line by a
  thread, so that the parent waits for "the next line" with a deadline and
  the child never blocks on a full pipe. Only complete lines count: a child
  killed in the middle of a ``print`` leaves a partial line, which is not an
  acknowledgement. Its stdin is a pipe (:meth:`Child.send`); its stderr goes
  to ``log`` if one is given, else it is kept in memory.
- ``read_lines=False``: stdout and stderr both go to ``log`` (appended, so a
  restarted daemon keeps one log), or stderr is kept in memory without one.

:meth:`Child.stop` sends the child its ``stop_signal`` (SIGKILL by default:
the test programs have nothing to save; a daemon gets SIGTERM and writes its
status a last time), kills it if it has not exited within the timeout, and
closes its pipes. A child is a context manager that stops it on the way out,
whatever happens; :class:`Group` does the same for many, all at once.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

from .wait import HarnessError

__all__ = [
    "PROCS",
    "STOP_TIMEOUT",
    "Child",
    "Group",
    "file_tail",
    "program",
    "python_env",
    "running",
    "stop_all",
]

PROCS = Path(__file__).resolve().parents[1] / "procs"
"""The child programs of the integration tests (``tests/procs/``)."""
STOP_TIMEOUT = 15.0
"""Seconds a child gets to exit after its stop signal before it is killed."""
TAIL_LINES = 30
"""Lines of a child's log or stderr shown when it did not do what was awaited."""
_EOF = ""


def python_env(**extra: str) -> dict[str, str]:
    """This process's environment, with Python's output unbuffered (and ``extra``)."""
    return dict(os.environ, PYTHONUNBUFFERED="1", **extra)


def program(script: str, *args: str) -> list[str]:
    """The command line of ``tests/procs/SCRIPT ARGS``, run by this interpreter."""
    return [sys.executable, str(PROCS / script), *args]


def file_tail(path: Path, lines: int = TAIL_LINES) -> str:
    """The last ``lines`` lines of a log file ("(no log)" if there is none)."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


class Child:
    """One running process; see the module's docstring for its two shapes."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        name: str | None = None,
        log: Path | None = None,
        read_lines: bool = True,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        stop_signal: int = signal.SIGKILL,
    ) -> None:
        self.argv = list(argv)
        self.name = name or " ".join(self.argv[1:])
        self.log = log
        self.stop_signal = stop_signal
        self._lines: queue.Queue[str] = queue.Queue()
        self._stderr: list[str] = []
        self._eof = False
        self._stopping = False
        out = log.open("ab") if log is not None else None
        try:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.PIPE if read_lines else subprocess.DEVNULL,
                stdout=subprocess.PIPE if read_lines else (out or subprocess.DEVNULL),
                stderr=out or subprocess.PIPE,
                cwd=cwd,
                env=python_env() if env is None else dict(env),
                text=True,
                encoding="utf-8",
                errors="replace",
            )
        finally:
            if out is not None:
                out.close()  # the child has its own descriptor
        pumps = [(self.proc.stdout, self._lines.put), (self.proc.stderr, self._stderr.append)]
        self._threads = [
            threading.Thread(target=_pump, args=(pipe, sink), daemon=True)
            for pipe, sink in pumps
            if pipe is not None
        ]
        for thread in self._threads:
            thread.start()

    # ------------------------------------------------------------ state

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    @property
    def stderr(self) -> str:
        """What it wrote on stderr so far (from its log if stderr goes there)."""
        if self.log is not None and self.proc.stderr is None:
            return self.log.read_text(errors="replace") if self.log.exists() else ""
        return "".join(self._stderr)

    def tail(self, lines: int = TAIL_LINES) -> str:
        if self.log is not None:
            return file_tail(self.log, lines)
        return "\n".join(self.stderr.splitlines()[-lines:])

    def describe(self) -> str:
        return f"{self.name} (exit {self.proc.poll()}):\n{self.tail()}"

    # ------------------------------------------------------------ talking

    def line(self, timeout: float) -> str:
        """The next complete stdout line, without its newline; raises at the deadline or if
        the output ended first."""
        if not self._eof:
            try:
                line = self._lines.get(timeout=timeout)
            except queue.Empty:
                raise HarnessError(
                    f"no output within {timeout:g} s from {self.describe()}"
                ) from None
            if line.endswith("\n"):
                return line[:-1]
            self._eof = True
        raise HarnessError(f"the child ended its output early: {self.describe()}")

    def message(self, timeout: float) -> dict[str, Any]:
        """The next line, parsed as JSON."""
        value: dict[str, Any] = json.loads(self.line(timeout))
        return value

    def send(self, text: str) -> None:
        """Write ``text`` and a newline to its stdin."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def close_stdin(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()

    # ------------------------------------------------------------ ending

    def wait(self, timeout: float) -> int:
        """Its exit status once it has exited and its output is read; raises at the deadline."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise HarnessError(f"still running after {timeout:g} s: {self.describe()}") from None
        for thread in self._threads:
            thread.join(timeout)
        return code

    def finish(self, timeout: float) -> list[str]:
        """Wait for it to exit (at most ``timeout`` s); return its complete lines not read yet."""
        self.wait(timeout)
        rest: list[str] = []
        while not self._eof:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:  # pragma: no cover - the pump thread always ends with _EOF
                break
            if line.endswith("\n"):
                rest.append(line[:-1])
            else:
                self._eof = True
        return rest

    def messages_until_exit(self, timeout: float) -> list[dict[str, Any]]:
        """Every remaining line as JSON, once it exited; it must exit with status 0."""
        lines = self.finish(timeout)
        if self.proc.returncode != 0:
            raise HarnessError(f"child failed: {self.describe()}")
        return [json.loads(line) for line in lines]

    def signal(self, signum: int) -> None:
        """Send ``signum`` if it is still running."""
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signum)

    def kill(self, timeout: float = 30.0) -> list[str]:
        """SIGKILL it (a crash); return the complete lines it wrote that were not read yet."""
        self.signal(signal.SIGKILL)
        return self.finish(timeout)

    def begin_stop(self) -> None:
        """Send the stop signal without waiting (see :func:`stop_all`)."""
        if self.running and not self._stopping:
            self._stopping = True
            self.signal(self.stop_signal)

    def stop(self, timeout: float = STOP_TIMEOUT, *, strict: bool = False) -> int:
        """Make sure it is gone and its pipes are closed (idempotent); return its exit status.

        It gets ``timeout`` s after its stop signal, then SIGKILL; ``strict``
        raises :class:`HarnessError` when it came to that.
        """
        overran = False
        if self.running:
            self.begin_stop()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                overran = True
        for thread in self._threads:
            thread.join(STOP_TIMEOUT)
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError):  # stdin of a killed child cannot flush
                    pipe.close()
        if overran and strict:
            what = signal.Signals(self.stop_signal).name
            raise HarnessError(f"{self.name} did not stop within {timeout:g} s of {what}")
        return self.proc.returncode

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _pump(pipe: IO[str], sink: Callable[[str], object]) -> None:
    for line in iter(pipe.readline, ""):
        sink(line)
    sink(_EOF)


def running(script: str, *args: str) -> Child:
    """``tests/procs/SCRIPT ARGS`` started; use it in a ``with`` block, which stops it."""
    return Child(program(script, *args))


def stop_all(children: Iterable[Child], timeout: float = STOP_TIMEOUT) -> list[str]:
    """Stop ``children`` together: every stop signal first, then the waits; the errors of
    those that had to be killed."""
    children = list(children)
    for child in children:
        child.begin_stop()
    errors = []
    for child in children:
        try:
            child.stop(timeout, strict=True)
        except HarnessError as exc:
            errors.append(str(exc))
    return errors


class Group:
    """Children stopped together (the last started first) when the ``with`` block ends."""

    def __init__(self) -> None:
        self.children: list[Child] = []

    def start(self, argv: Sequence[str], **options: Any) -> Child:
        """Start a :class:`Child` (same options) that the group will stop."""
        return self.add(Child(argv, **options))

    def add(self, child: Child) -> Child:
        self.children.append(child)
        return child

    def remove(self, child: Child) -> None:
        """Forget a child (stopped by the caller)."""
        self.children.remove(child)

    def check(self) -> None:
        """Raise if one of the children exited with an error (a finished one is fine)."""
        for child in self.children:
            code = child.proc.poll()
            if code is not None and code != 0:
                raise HarnessError(f"{child.name} exited with {code}:\n{child.tail()}")

    def stop(self, timeout: float = STOP_TIMEOUT) -> list[str]:
        return stop_all(reversed(self.children), timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
