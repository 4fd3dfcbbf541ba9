"""``Prefer: wait=N`` (RFC 7240): how long POST /generate may hold its answer for the job's end.

A preference is optional: one this server does not understand, or a malformed ``wait``, is
ignored, never refused. The wait granted is clamped to :data:`MAX_WAIT_SECONDS` (API Gateway
ends an integration after 29 s) and to the Lambda invocation's remaining time, less the time
needed to answer.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any, Final

from botocore.exceptions import BotoCoreError, ClientError

from imagegen_common.models import ExecutionStatus

ENDED: Final = frozenset(status.value for status in ExecutionStatus) - {ExecutionStatus.RUNNING}
MAX_WAIT_SECONDS: Final = 25
"""The longest wait granted: with the answer's own work it stays under API Gateway's 29 s."""

ANSWER_MARGIN_SECONDS: Final = 2.0
"""Invocation time kept back after waiting, to read the job and sign its image URLs."""

FIRST_POLL_INTERVAL_SECONDS: Final = 0.1
MAX_POLL_INTERVAL_SECONDS: Final = 0.5

# RFC 7240 section 2: preference = token [ BWS "=" BWS word ] *( OWS ";" [ OWS parameter ] ),
# and preferences are separated by commas. A word is a token or a quoted string; commas inside
# quoted strings are kept by splitting on this pattern rather than on every comma.
_PREFERENCE = re.compile(r'(?:[^,"]|"(?:[^"\\]|\\.)*")+')
_DELTA_SECONDS = re.compile(r"^[0-9]+$")


def requested_wait(prefer: str | None) -> int | None:
    """The seconds asked for by the first ``wait`` preference; None when absent or malformed.

    RFC 7240: preference names are case-insensitive, only the first instance of a preference
    counts, and ``wait``'s value is delta-seconds (digits).
    """
    for preference in _PREFERENCE.findall(prefer or ""):
        name, _, value = preference.split(";", 1)[0].partition("=")
        if name.strip().lower() != "wait":
            continue
        seconds = value.strip()
        if len(seconds) >= 2 and seconds[0] == seconds[-1] == '"':
            seconds = seconds[1:-1]
        return int(seconds) if _DELTA_SECONDS.match(seconds) else None
    return None


def granted_wait(requested: int | None, remaining_time_ms: int | None) -> int | None:
    """Whole seconds the server will wait: clamped to 25 s and the invocation's time left.

    None when nothing was asked for or there is nothing to grant (``wait=0``, or no time left).
    """
    if requested is None:
        return None
    granted = min(requested, MAX_WAIT_SECONDS)
    if remaining_time_ms is not None:
        granted = min(granted, int(remaining_time_ms / 1000 - ANSWER_MARGIN_SECONDS))
    return granted if granted > 0 else None


def wait_for_end(
    read_status: Callable[[], str],
    seconds: float,
    sleep: Callable[[float], Any] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> bool:
    """Poll ``read_status`` until the job has ended or ``seconds`` have passed.

    True when the job has ended (a status of :data:`ENDED`; Step Functions' PENDING_REDRIVE is
    not an end). An AWS error while polling (throttling, say) ends the wait
    with False: the job was accepted, so the caller still gets its 202, never a 5xx.
    """
    deadline = clock() + seconds
    interval = FIRST_POLL_INTERVAL_SECONDS
    while True:
        try:
            if read_status() in ENDED:
                return True
        except (ClientError, BotoCoreError):
            return False
        left = deadline - clock()
        if left <= 0:
            return False
        sleep(min(interval, left))
        interval = min(interval * 2, MAX_POLL_INTERVAL_SECONDS)
