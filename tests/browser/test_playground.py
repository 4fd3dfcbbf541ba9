"""The playground in a real browser: submit, progress, images, cancel, errors, the job list.

The shared local stack (tests/conftest.py), each test as its own owner, opening the page afresh.
A test fails on any console error, uncaught exception, failed request or unexpected HTTP error
(tests/browser/conftest.py).
"""

from __future__ import annotations

import os
import re
import shutil
from typing import Any

import pytest

from tests.browser.conftest import REPO_ROOT, SCREENSHOTS, PageWatch
from tests.e2e.local_stack_harness import Harness

# One GPU worker whose denoising is slow enough that progress can be seen (the tiny model makes a
# step in milliseconds), sending progress as often as its throttle allows in a test.
pytestmark = pytest.mark.gpu_workers(1, PROGRESS_INTERVAL_SECONDS="0.2")

# Records every text the progress label and the stage line take, from before the submit on.
RECORD_PROGRESS = """() => {
  window.seen = { progress: [], stage: [] };
  const record = (id, list) => new MutationObserver(() => {
    const text = document.getElementById(id).textContent;
    if (text && list[list.length - 1] !== text) list.push(text);
  }).observe(document.getElementById(id), { childList: true, characterData: true, subtree: true });
  record("job-progress-label", window.seen.progress);
  record("job-stage", window.seen.stage);
}"""
IMAGES_LOADED = """(count) => {
  const images = [...document.querySelectorAll("#images img")];
  return images.length === count && images.every((img) => img.complete && img.naturalWidth > 0);
}"""


def open_playground(page: Any, stack: Harness) -> None:
    page.goto(stack.stack.api_url + "/")
    page.get_by_role("heading", name="imagegen playground").wait_for()


def fill_job(
    page: Any, prompt: str, *, size: str, images: int, seed: int | None = None, steps: int = 50
) -> None:
    """A GPU job of ``steps`` denoising steps (50: long enough to watch it move)."""
    page.get_by_label("Prompt", exact=True).fill(prompt)
    page.get_by_label("Backend").select_option("gpu")
    page.get_by_label("Steps").fill(str(steps))
    page.get_by_label("Size").fill(size)
    page.get_by_label("Number of images").fill(str(images))
    if seed is not None:
        page.get_by_label("Seed", exact=True).fill(str(seed))


def steps_seen(labels: list[str]) -> list[int]:
    return [int(found.group(1)) for text in labels if (found := re.match(r"step (\d+) of", text))]


def test_a_job_shows_its_progress_then_its_images_with_their_seeds(
    page: Any, stack: Harness
) -> None:
    open_playground(page, stack)
    page.evaluate(RECORD_PROGRESS)
    # 256x256: a few seconds of denoising even on an idle machine, so the page sees steps move.
    fill_job(page, "a lighthouse on a cliff at dawn", size="256x256", images=2, seed=1234)

    page.get_by_role("button", name="Generate").click()

    page.wait_for_function(IMAGES_LOADED, arg=2, timeout=180_000)
    page.locator("#job-stage", has_text=re.compile("^Succeeded$")).wait_for()
    seen = page.evaluate("window.seen")
    steps = steps_seen(seen["progress"])
    assert len(set(steps)) >= 2 and steps == sorted(steps), seen
    assert seen["stage"][-1] == "Succeeded", seen
    captions = page.locator("#images figcaption").all_inner_texts()
    assert [caption.split()[:2] for caption in captions] == [["seed", "1234"], ["seed", "1235"]]
    assert page.locator("#job-cost").inner_text().startswith("$")
    assert page.locator("#cancel").is_hidden()

    page.get_by_role("button", name="Copy seed 1235 into the form").click()
    assert page.get_by_label("Seed", exact=True).input_value() == "1235"

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.evaluate("document.activeElement.blur()")
    page.locator("body").screenshot(path=str(SCREENSHOTS / "playground.png"))
    if os.environ.get("IMAGEGEN_UPDATE_SCREENSHOT") == "1":  # the README's picture, on purpose
        shutil.copyfile(SCREENSHOTS / "playground.png", REPO_ROOT / "docs" / "playground.png")


def test_a_running_job_can_be_cancelled(page: Any, stack: Harness) -> None:
    open_playground(page, stack)
    page.evaluate(RECORD_PROGRESS)
    fill_job(page, "a job to cancel", size="128x128", images=2)
    page.get_by_role("button", name="Generate").click()
    cancel = page.get_by_role("button", name="Cancel job")
    cancel.wait_for()

    cancel.click()

    # Stopped while queued it ends at once; stopped while generating it shows "Cancelling" until
    # the worker's run ends (moto applies a stop when the task reports), then turns ABORTED.
    page.wait_for_function(
        "() => document.getElementById('job-stage').textContent === 'Cancelled'"
        " && document.getElementById('cancel').hidden",
        timeout=120_000,
    )
    stages = page.evaluate("window.seen.stage")
    assert stages[-1] == "Cancelled" and "Succeeded" not in stages, stages


def test_validation_errors_are_shown_next_to_the_fields_they_name(
    page: Any, stack: Harness, watch: PageWatch
) -> None:
    watch.expect("POST /generate", 422)
    open_playground(page, stack)
    page.get_by_label("Prompt", exact=True).fill("   ")
    page.get_by_label("Number of images").fill("99")

    page.get_by_role("button", name="Generate").click()

    prompt_error = page.locator("#prompt-error")
    prompt_error.wait_for()
    assert prompt_error.inner_text()
    assert page.get_by_label("Prompt", exact=True).get_attribute("aria-invalid") == "true"
    assert "less than or equal" in page.locator("#num-images-error").inner_text()
    assert page.get_by_label("Number of images").get_attribute("aria-invalid") == "true"
    # The first field in error has the focus, so a keyboard user is at the problem.
    assert page.evaluate("document.activeElement.id") == "prompt"
    assert page.locator("#job").is_hidden()


def test_a_job_is_reopened_from_the_recent_jobs(page: Any, stack: Harness) -> None:
    execution_id = stack.submit(
        {"prompt": "a job from elsewhere", "backend": "gpu", "width": 128, "height": 128}
    )
    stack.wait_until_ended([execution_id], timeout_s=120)
    open_playground(page, stack)

    row = page.get_by_role("button", name=re.compile("^Open job: a job from elsewhere"))
    row.focus()
    page.keyboard.press("Enter")

    page.wait_for_function(IMAGES_LOADED, arg=1)
    assert page.locator("#job-id").inner_text() == execution_id
    assert page.evaluate("document.activeElement.id") == "job-title"
    assert page.url.endswith("#job=" + execution_id)


def test_a_phone_sized_screen_and_the_keyboard_alone_are_enough(page: Any, stack: Harness) -> None:
    page.set_viewport_size({"width": 390, "height": 844})
    open_playground(page, stack)

    page.keyboard.press("Tab")  # the skip link comes first
    assert page.evaluate("document.activeElement.textContent") == "Skip to the prompt"
    page.keyboard.press("Enter")
    page.keyboard.type("a keyboard-only job")
    assert page.evaluate("document.activeElement.id") == "prompt"
    page.keyboard.press("Control+Enter")

    page.wait_for_function(IMAGES_LOADED, arg=1, timeout=120_000)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # no sideways scrolling
    focusable = page.evaluate(
        "() => [...document.querySelectorAll('input, select, textarea, button')]"
        ".filter((element) => !element.closest('[hidden]') && element.offsetParent !== null)"
        ".filter((element) => !element.labels?.length && !element.getAttribute('aria-label')"
        " && !element.textContent.trim()).map((element) => element.outerHTML)"
    )
    assert focusable == [], "controls without an accessible name"


def test_the_api_docs_work_offline_from_the_page_link(page: Any, stack: Harness) -> None:
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    open_playground(page, stack)

    page.get_by_role("link", name="API docs").click()

    page.locator(".swagger-ui .opblock").first.wait_for()
    assert page.url == stack.stack.api_url + "/docs"
    assert page.get_by_text("/generate/{execution_id}").first.is_visible()
    assert all(url.startswith(stack.stack.api_url) for url in requested), requested


def test_a_page_on_another_origin_reaches_the_api_through_cors(
    page: Any, stack: Harness, other_origin: str, watch: PageWatch
) -> None:
    # Before the API URL is set, the file server answers what the page asks of its own origin.
    for path in ("/generate", "/models", "/openapi.json"):
        watch.expect(f"GET {path}", 404)
    page.goto(other_origin + "/")
    page.get_by_text("API settings").click()
    page.get_by_label("API URL").fill(stack.stack.api_url)
    page.get_by_role("button", name="Save").click()
    fill_job(page, "a job across origins", size="128x128", images=1)

    with page.expect_response(lambda response: response.request.method == "POST") as posted:
        page.get_by_role("button", name="Generate").click()

    # The browser sent a preflight first (x-api-key and a JSON body are not "simple"); the
    # function answered it and names this origin on the answer itself.
    assert posted.value.status == 202
    assert posted.value.headers["access-control-allow-origin"] == other_origin
    page.wait_for_function(IMAGES_LOADED, arg=1, timeout=120_000)
    # Images show as they arrive, before the job's end: wait for the end itself.
    page.wait_for_function(
        "() => document.getElementById('job-stage').textContent === 'Succeeded'", timeout=60_000
    )


def test_the_form_offers_what_the_deployment_offers(page: Any, stack: Harness) -> None:
    """The backends, models and sizes come from GET /models, the stages' words from the API's
    OpenAPI document: the page holds no copy of either."""
    catalogue = stack.request("GET", "/models").json()
    by_backend = {offer["backend"]: offer for offer in catalogue["backends"]}
    open_playground(page, stack)

    def suggestions(list_id: str) -> list[str]:
        return page.eval_on_selector_all(f"#{list_id} option", "els => els.map(e => e.value)")

    # Once the page has read GET /models (its size suggestions are filled from it).
    page.wait_for_function("() => document.querySelectorAll('#size-suggestions option').length")
    backends = page.eval_on_selector_all("#backend option", "els => els.map(e => e.value)")
    assert backends == ["", *by_backend]
    default = next(offer for offer in catalogue["backends"] if offer["default"])
    assert suggestions("size-suggestions") == default["sizes"]

    page.get_by_label("Backend").select_option("bedrock")
    assert suggestions("model-suggestions") == [
        m["model_id"] for m in by_backend["bedrock"]["models"]
    ]
    assert suggestions("size-suggestions") == by_backend["bedrock"]["sizes"]
    page.get_by_label("Backend").select_option("gpu")
    assert suggestions("model-suggestions") == []
    assert (
        page.get_by_label("Size").get_attribute("placeholder") == by_backend["gpu"]["default_size"]
    )

    page.wait_for_function("() => Object.keys(STAGES).length > 0")
    words = page.evaluate("() => STAGES")
    stage = stack.request("GET", "/openapi.json").json()["components"]["schemas"]["Stage"]
    assert words == dict(zip(stage["enum"], stage["x-enum-descriptions"], strict=True))


def test_the_controls_follow_the_model_and_a_job_runs_with_them(page: Any, stack: Harness) -> None:
    open_playground(page, stack)
    page.wait_for_function("() => document.querySelectorAll('#size-suggestions option').length")

    page.get_by_label("Backend").select_option("bedrock")
    assert page.get_by_label("Steps").is_disabled()  # Bedrock's models take no steps
    formats = page.eval_on_selector_all("#format option", "els => els.map(e => e.textContent)")
    assert formats == ["png", "jpeg"]

    fill_job(page, "a lantern in the fog", size="128x128", images=1, steps=2)
    page.get_by_label("Format").select_option("webp")
    with page.expect_response(lambda response: response.request.method == "POST") as posted:
        page.get_by_role("button", name="Generate").click()

    assert posted.value.status == 202
    sent = posted.value.request.post_data_json
    assert (sent["steps"], sent["output_format"]) == (2, "webp")
    page.wait_for_function(IMAGES_LOADED, arg=1, timeout=120_000)
    execution_id = posted.value.json()["execution_id"]
    status = stack.status(execution_id)
    assert status["parameters"]["steps"] == 2
    assert status["images"][0]["content_type"] == "image/webp"
