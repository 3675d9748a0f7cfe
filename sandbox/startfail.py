"""A job whose command could not be started: told from the job's own failure, and said plainly.

When the command is missing or not executable, the program that was to exec it says so in its own
words and with its own exit status: bwrap `bwrap: execvp nosuchcmd: No such file or directory` and
1, Docker's init (tini) `[FATAL tini (7)] exec nosuchcmd failed: No such file or directory` and 127.
Each backend names its launcher's words (`LauncherWords`). `StartWatch` sits between the job's
output and its buffer, recognises those words for the job's own command at the very start of
stderr (before the exec, nothing of the job can have written), and puts `command not found:
nosuchcmd` in their place; the result then says exit 127 (126 for `command not executable`), as
a shell would, on both backends.

Only the beginning of stderr is ever held back, and only while it still reads as the launcher's
words (their fixed start, then to the end of that one line, bounded): a job's own output passes
straight through. A job that did start and writes those very words first changes only its own
result.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from dataclasses import dataclass

from sandbox.output import Stream

# Past the command, the words hold a little more: the errno's text, tini's pid, a newline.
_TAIL_BYTES = 256


class StartFailure(enum.Enum):
    """Why a job's command could not be started, as a shell says it."""

    NOT_FOUND = "command not found"
    NOT_EXECUTABLE = "command not executable"

    @property
    def exit_code(self) -> int:
        return 127 if self is StartFailure.NOT_FOUND else 126


# strerror() of the exec's errno in the launcher's words (its locale is C.UTF-8 or the engine's).
_BY_ERRNO_TEXT = {
    b"No such file or directory": StartFailure.NOT_FOUND,
    b"Permission denied": StartFailure.NOT_EXECUTABLE,
}


@dataclass(frozen=True)
class LauncherWords:
    """How a backend's launcher says that it could not exec the job's command."""

    start: bytes  # the fixed bytes its line begins with
    before: bytes  # a regex of what comes before the command (from the line's start)
    after: bytes  # a regex of what comes between the command and the errno's text
    exit_codes: frozenset[int]  # the launcher's exit status then

    def line(self, command: bytes) -> re.Pattern[bytes]:
        return re.compile(self.before + re.escape(command) + self.after + rb"(?P<why>[^\n]*)\n")


class StartWatch:
    """Passes a job's output on to `feed`, but for the launcher's words, which it rewrites."""

    def __init__(
        self, words: LauncherWords, command: str, feed: Callable[[Stream, bytes], None]
    ) -> None:
        self._words = words
        self._command = command
        name = command.encode()
        self._line = words.line(name)
        self._limit = len(words.start) + len(name) + _TAIL_BYTES
        self._feed = feed
        self._held: bytes | None = b""  # the start of stderr while undecided; None once decided
        self.failure: StartFailure | None = None

    def feed(self, stream: Stream, data: bytes) -> None:
        if self._held is None or stream is Stream.STDOUT:
            self._release()  # (output on stdout: the command did start)
            self._feed(stream, data)
            return
        held = self._held + data
        start = self._words.start
        if held.startswith(start) if len(held) >= len(start) else start.startswith(held):
            if b"\n" not in held and len(held) <= self._limit:
                self._held = held
                return
            found = self._line.match(held)
            failure = _BY_ERRNO_TEXT.get(found["why"]) if found is not None else None
            if found is not None and failure is not None:
                self.failure = failure
                held = f"{failure.value}: {self._command}\n".encode() + held[found.end() :]
        self._held = held
        self._release()

    def exit_code(self, launcher_exit: int | None) -> int | None:
        """The job's exit code: the shell's for a command that could not be started."""
        if self.failure is not None and launcher_exit in self._words.exit_codes:
            return self.failure.exit_code
        return launcher_exit

    def close(self) -> None:
        """The streams are closed: pass on whatever is still held."""
        self._release()

    def _release(self) -> None:
        held, self._held = self._held, None
        if held:
            self._feed(Stream.STDERR, held)
