"""``Prefer: wait=N`` over real HTTP on the local stack (API server, Lambda processes, moto).

With no GPU worker: a Bedrock job (the local stand-in) ends within the wait and is answered 200
with a signed URL that downloads; a GPU job cannot end and is answered 202.
"""

from __future__ import annotations

import time

import httpx
import pytest

from tests.e2e.local_stack_harness import Harness


@pytest.mark.gpu_workers(0)
def test_prefer_wait_answers_200_for_a_fast_job_and_202_for_a_slow_one(harness: Harness) -> None:
    fast = harness.http.post(
        "/generate",
        json={"prompt": "a lighthouse at dawn", "backend": "bedrock"},
        headers={"Prefer": "wait=20"},
    )

    assert fast.status_code == 200, fast.text
    assert fast.headers["Preference-Applied"] == "wait=20"
    assert fast.headers["Vary"] == "Prefer"
    finished = fast.json()
    assert finished["status"] == "SUCCEEDED"
    [image] = finished["images"]
    png = httpx.get(image["url"], timeout=10)
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")

    started = time.monotonic()
    slow = harness.http.post(
        "/generate",
        json={"prompt": "a red bicycle", "backend": "gpu"},
        headers={"Prefer": "respond-async, wait=1"},
    )
    elapsed = time.monotonic() - started

    assert slow.status_code == 202, slow.text
    assert slow.headers["Preference-Applied"] == "wait=1"
    assert 1.0 <= elapsed < 15.0  # it waited, and not for the whole default wait
    execution_id = slow.json()["execution_id"]
    assert harness.status(execution_id)["status"] == "RUNNING"
    assert harness.request("DELETE", f"/generate/{execution_id}").status_code == 202  # tidy up
