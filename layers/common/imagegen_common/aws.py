"""AWS clients with the project's settings (timeouts, retries, signature version).

Handlers call :func:`client` at module level, so each client is built once per cold start and
reused by every invocation of that execution environment.
"""

from __future__ import annotations

from typing import Any

import boto3
import botocore.session
from botocore.config import Config
from botocore.loaders import create_loader

_CONFIG = Config(
    retries={"total_max_attempts": 3, "mode": "standard"},
    user_agent_extra="imagegen",
    connect_timeout=5,
    read_timeout=60,
)
_SERVICE_CONFIG = {
    # The state machine's Retry owns backoff for Bedrock's throttling, with jitter across all
    # images of a job; retrying inside botocore too would multiply the attempts and sit out the
    # Lambda timeout. Image models can take a while to answer.
    "bedrock-runtime": Config(retries={"total_max_attempts": 1}, read_timeout=120),
    # Pre-signed URLs must be SigV4: it is what every region accepts for temporary credentials.
    "s3": Config(signature_version="s3v4"),
}


# One loader of botocore's service models for the process: each client still gets a session of
# its own (sessions are not thread-safe), but the JSON of a service model, the endpoint rules and
# the partitions are read from disk once, not once per client (~50-150 ms each).
_DATA_LOADER = create_loader()


def client(service_name: str, region_name: str | None = None) -> Any:
    """A boto3 client for ``service_name`` with the project's configuration.

    ``region_name`` lets Bedrock be called in another region than the function's (the Stability
    models are offered in fewer regions than Lambda).
    """
    config = _CONFIG
    if service_name in _SERVICE_CONFIG:
        config = config.merge(_SERVICE_CONFIG[service_name])
    session = botocore.session.get_session()
    session.register_component("data_loader", _DATA_LOADER)
    return boto3.session.Session(botocore_session=session).client(
        service_name,
        region_name=region_name,
        config=config,
    )
