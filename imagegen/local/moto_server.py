"""Ports on 127.0.0.1 for the local stack's servers: a clear error when one is taken, a free one.

moto's server itself is started by ``moto_aws.local_aws(server=True)``.
"""

from __future__ import annotations

import errno
import socket


class PortInUseError(RuntimeError):
    """A port the local stack needs is taken."""

    def __init__(self, host: str, port: int, what: str) -> None:
        super().__init__(
            f"port {port} on {host} is already in use, so {what} cannot start there: stop what "
            f"holds it (e.g. `lsof -i :{port}`) or choose another port: `imagegen local --port N` "
            "(`make run PORT=N`, `make demo PORT=N`), `--moto-port N` for the moto server"
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
