"""The local stack's console keeps each thread's lines whole."""

from __future__ import annotations

import io
import threading
import time

from imagegen.local.console import LineAtomicStream


def test_lines_written_in_pieces_by_many_threads_stay_whole() -> None:
    target = io.StringIO()
    stream = LineAtomicStream(target)
    start = threading.Barrier(8)

    def writer(name: int) -> None:
        start.wait()
        for line in range(50):
            # As print() does it: the text, then the newline, in separate writes; the sleeps
            # hand the processor to the other threads between the pieces.
            stream.write(f"thread {name} line {line} ")
            time.sleep(0.0001)
            stream.write("end")
            time.sleep(0.0001)
            stream.write("\n")

    threads = [threading.Thread(target=writer, args=(name,)) for name in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    lines = target.getvalue().splitlines()
    assert len(lines) == 8 * 50
    assert all(line.startswith("thread ") and line.endswith(" end") for line in lines)


def test_a_flush_writes_a_partial_line() -> None:
    target = io.StringIO()
    stream = LineAtomicStream(target)
    stream.write("prompt> ")
    assert target.getvalue() == ""
    stream.flush()
    assert target.getvalue() == "prompt> "
