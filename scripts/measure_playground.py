"""Measure the playground in headless Chromium against the local stack (tiny model).

Prints:
- the page's weight: bytes transferred on a first load (headers and bodies of every request
  the page makes before the network is idle, from Playwright's request sizes), the page's own
  files apart from its first API call (the job list), and what gzip would make of the files;
- submit -> image shown: from the form's submit event to the image's load event, in the page's
  own clock, for ``--runs`` jobs one after another (the first one pays the functions' cold
  starts).

    .venv/bin/python scripts/measure_playground.py --runs 5
"""

from __future__ import annotations

import argparse
import gzip
import logging
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

from playwright.sync_api import sync_playwright

from imagegen.local.stack import LocalStack, LocalStackOptions

REPO_ROOT = Path(__file__).resolve().parent.parent
PARAMETERS = {"AllowedSizes": "128x128,512x512", "GpuDefaultSize": "128x128"}
# Times the submit (capture phase, before the page's own handler) and each image's load.
INSTRUMENT = """() => {
  window.timing = { submittedAt: 0, shownAt: 0 };
  document.getElementById("generate-form").addEventListener("submit", () => {
    window.timing = { submittedAt: performance.now(), shownAt: 0 };
  }, true);
  new MutationObserver((records) => {
    for (const record of records) for (const node of record.addedNodes) {
      const img = node.querySelector && node.querySelector("img");
      if (img) img.addEventListener("load", () => { window.timing.shownAt = performance.now(); });
    }
  }).observe(document.getElementById("images"), { childList: true });
}"""
IMAGE_SHOWN = """() => {
  const img = document.querySelector("#images img");
  return window.timing.shownAt > 0 && img && img.naturalWidth > 0;
}"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="jobs to time (default 5)")
    parser.add_argument("--size", default="128x128", help="image size (default 128x128)")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = parser.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's server logs every request

    options = LocalStackOptions(api_port=0, bedrock="fake", parameters=PARAMETERS)
    with LocalStack(options, say=lambda line: None) as stack, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
        page = browser.new_context().new_page()
        finished: list[Any] = []
        page.on("requestfinished", lambda request: finished.append(request))
        page.goto(stack.api_url + "/", wait_until="networkidle")
        report_weight(finished)

        page.evaluate(INSTRUMENT)
        seconds = []
        for run in range(args.runs):
            page.get_by_label("Prompt", exact=True).fill(f"measurement {run}")
            page.get_by_label("Backend").select_option("gpu")
            page.get_by_label("Size").fill(args.size)
            page.get_by_role("button", name="Generate").click()
            page.wait_for_function(IMAGE_SHOWN, timeout=120_000)
            timing = page.evaluate("window.timing")
            seconds.append((timing["shownAt"] - timing["submittedAt"]) / 1000)
            print(f"run {run + 1}: submit -> image shown {seconds[-1]:.2f} s")
        browser.close()
    warm = seconds[1:] or seconds
    print(
        f"submit -> image shown ({args.size}, tiny model, one job at a time): first (cold) "
        f"{seconds[0]:.2f} s; then p50 {statistics.median(warm):.2f} s, "
        f"min {min(warm):.2f} s, max {max(warm):.2f} s over {len(warm)} runs"
    )
    return 0


def report_weight(finished: list[Any]) -> None:
    page_files = 0
    api_calls = 0
    for request in finished:
        sizes = request.sizes()
        transferred = sizes["responseBodySize"] + sizes["responseHeadersSize"]
        if request.resource_type == "fetch":
            api_calls += transferred
        else:
            page_files += transferred
        print(f"  {transferred:>7} B  {request.method} {request.url}")
    files = sorted((REPO_ROOT / "web").glob("*"))
    raw = sum(file.stat().st_size for file in files)
    gzipped = sum(len(gzip.compress(file.read_bytes(), 9)) for file in files)
    print(
        f"page weight, first load: {page_files + api_calls} B transferred in {len(finished)} "
        f"requests ({page_files} B the page's files, {api_calls} B its API calls); web/ is "
        f"{raw} B on disk, {gzipped} B gzipped"
    )


if __name__ == "__main__":
    sys.exit(main())
