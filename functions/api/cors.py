"""CORS for pages on other origins (the playground hosted on its own domain): configured ones only.

powertools adds the headers to every route's answer, errors included, when the request's
``Origin`` is one of the configured origins, and answers the browser's preflight (``OPTIONS``,
routed to this function by the template) itself. With no origin configured the API sends no CORS
header at all, so a page on another origin cannot read its answers.
"""

from __future__ import annotations

from collections.abc import Sequence

from aws_lambda_powertools.event_handler import CORSConfig

# What a page sends beyond powertools' own list (Authorization, Content-Type, X-Amz-Date,
# X-Api-Key, X-Amz-Security-Token), and what it may read beyond the CORS-safelisted headers.
REQUEST_HEADERS = ["Prefer", "Idempotency-Key"]
RESPONSE_HEADERS = ["Preference-Applied", "Retry-After", "Location", "x-amzn-RequestId"]
# Browsers cap the preflight cache anyway (Chromium at 2 h); 10 min keeps a changed list quick.
PREFLIGHT_MAX_AGE_SECONDS = 600


def cors_config(allowed_origins: Sequence[str]) -> CORSConfig | None:
    """powertools' CORS configuration for these origins; None (no CORS at all) for none."""
    if not allowed_origins:
        return None
    first, *others = allowed_origins
    return CORSConfig(
        allow_origin=first,
        extra_origins=others,
        allow_headers=REQUEST_HEADERS,
        expose_headers=RESPONSE_HEADERS,
        max_age=PREFLIGHT_MAX_AGE_SECONDS,
    )
