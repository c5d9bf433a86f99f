"""Checks before spawning: refuse what would fail in the first milliseconds anyway.

llama-server exits 1 within ~20 ms when its port is taken (field notes B);
saying so before spawning names the culprit instead of a restart loop.
"""

from __future__ import annotations

import contextlib
import errno
import socket

import psutil

from infersup.errors import InfersupError


class PreflightError(InfersupError):
    exit_code = 1


def check_port_free(host: str, port: int) -> None:
    for one in (h.strip() for h in host.split(",")):
        if not one or one.startswith("/") or one.endswith(".sock"):
            continue  # a UNIX socket path, not a TCP address
        _check_one(one, port)


def _check_one(host: str, port: int) -> None:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise PreflightError(
            f"cannot resolve host {host!r}: {exc.strerror}",
            hint="set `host:` to an IP address such as 127.0.0.1 or 0.0.0.0",
        ) from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PreflightError(
                    f"port {port} on {host} is already in use{_owner(port)}",
                    hint="stop that process or set another `port:` in the profile",
                ) from None
            if exc.errno == errno.EADDRNOTAVAIL:
                raise PreflightError(
                    f"host {host} is not an address of this machine",
                    hint="use 127.0.0.1 (this machine only) or 0.0.0.0 (all interfaces)",
                ) from None


def _owner(port: int) -> str:
    with contextlib.suppress(psutil.Error, OSError):
        for conn in psutil.net_connections(kind="tcp"):
            if conn.laddr and conn.laddr.port == port and conn.status == "LISTEN" and conn.pid:
                with contextlib.suppress(psutil.Error):
                    name = psutil.Process(conn.pid).name()
                    return f" by {name} (pid {conn.pid})"
                return f" by pid {conn.pid}"
    return ""
