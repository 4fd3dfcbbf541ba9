"""moto's server mode on 127.0.0.1, run in this process so the work-arounds apply to it."""

from __future__ import annotations

import errno
import json
import os
import socket
import urllib.request
from dataclasses import dataclass
from typing import Any

from imagegen.local import moto_workarounds


class PortInUseError(RuntimeError):
    """A port the local stack needs is taken."""

    def __init__(self, host: str, port: int, what: str) -> None:
        super().__init__(
            f"port {port} on {host} is already in use, so {what} cannot start there: stop what "
            f"holds it (e.g. `lsof -i :{port}`) or choose another port"
        )
        self.host = host
        self.port = port


def ensure_port_free(host: str, port: int, what: str) -> None:
    """Raise `PortInUseError` if ``host:port`` cannot be bound."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As the servers themselves bind: a port whose last connections linger in TIME_WAIT is
        # free to listen on; only a socket listening there now makes it taken.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            if error.errno in (errno.EADDRINUSE, errno.EACCES):
                raise PortInUseError(host, port, what) from error
            raise


def free_port(host: str = "127.0.0.1") -> int:
    """A port that is free now (the OS's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


@dataclass
class MotoServer:
    """A running ``ThreadedMotoServer``; ``endpoint_url`` is what boto3 clients are given."""

    host: str
    port: int
    _server: object
    _previous_config: dict[str, Any]

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self) -> None:
        from moto.core.config import default_user_config

        self._server.stop()  # type: ignore[attr-defined]
        # moto's backends are process-wide, not per server: without a reset, the next stack in
        # this process (a test's) would find this one's resources, its stack name taken.
        from moto.moto_api import _internal

        _internal.moto_api_backend.reset()
        # The config is process-wide: give later in-process mocks moto's defaults back.
        default_user_config.update(self._previous_config)  # type: ignore[typeddict-item]


def start_moto_server(port: int, host: str = "127.0.0.1") -> MotoServer:
    """Start moto on ``host:port`` with the local stack's config and work-arounds.

    Sets ``MOTO_PORT``: moto's Step Functions interpreter calls Lambda (and the other services
    of its tasks) at ``localhost:$MOTO_PORT``.
    """
    from moto.core.config import default_user_config
    from moto.server import ThreadedMotoServer

    ensure_port_free(host, port, "the moto server")
    moto_workarounds.install()
    os.environ["MOTO_PORT"] = str(port)
    server = ThreadedMotoServer(ip_address=host, port=port, verbose=False)
    server.start()
    previous = {key: default_user_config.get(key) for key in moto_workarounds.MOTO_CONFIG}
    handle = MotoServer(host, port, server, previous)
    request = urllib.request.Request(  # noqa: S310 (a fixed http URL on loopback)
        f"{handle.endpoint_url}/moto-api/config",
        data=json.dumps(moto_workarounds.MOTO_CONFIG).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10):  # noqa: S310
        pass
    return handle
