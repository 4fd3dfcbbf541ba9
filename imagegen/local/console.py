"""Whole lines on the console when many threads of one process print.

The local stack prints from many threads of one process: the API's, the event printer's, and
those relaying the output of the Lambda environments and GPU workers (child processes), one
thread each. ``print()`` writes its text and its newline in two calls, so a line from one thread
can be cut into by another's. This stream keeps each thread's text until its line is complete,
then writes whole lines under one lock.
"""

from __future__ import annotations

import threading
from typing import Any, TextIO


class LineAtomicStream:
    """Wraps a text stream; ``write`` emits only complete lines, one thread's at a time."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        self._pending = threading.local()

    def write(self, text: str) -> int:
        buffered: str = getattr(self._pending, "text", "") + text
        complete, newline, rest = buffered.rpartition("\n")
        self._pending.text = rest
        if newline:
            with self._lock:
                self._stream.write(complete + newline)
        return len(text)

    def flush(self) -> None:
        rest: str = getattr(self._pending, "text", "")
        self._pending.text = ""
        with self._lock:
            if rest:  # an explicit flush of a partial line (a prompt) writes it as it is
                self._stream.write(rest)
            self._stream.flush()

    def __getattr__(self, name: str) -> Any:  # encoding, isatty, fileno, ...
        return getattr(self._stream, name)
