"""Which network addresses the service may connect to on a client's behalf.

Shared by the webhook checks (``core.webhooks``: targets the workers POST to) and the
input URLs (``api.fetch``: images the API downloads): a URL given by a client must not
make the service reach its own network (the cloud metadata address, Redis, an admin
page on loopback).

A name is resolved once and every address it resolves to must be allowed; callers
then connect to those very addresses, so that a second lookup cannot be answered
differently (DNS rebinding).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from urllib.parse import SplitResult, urlunsplit

Resolver = Callable[[str, int], list[str]]
"""``(host, port) -> IP addresses`` (tests substitute their own)."""


class HostUnresolved(ValueError):
    """The host name does not resolve (the message says which)."""


class AddressRefused(ValueError):
    """The host is, or resolves to, an address the service does not call (the message says which)."""


def resolve(host: str, port: int) -> list[str]:
    """The system's answer for ``host``, each address once, in its order."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def refused_reason(address: str) -> str | None:
    """Why ``address`` is not a public one (``None``: it is).

    An IPv4-mapped IPv6 address (``::ffff:10.0.0.1``) is judged as the IPv4 address it
    carries: that is where a connection to it goes.
    """
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for reason, refused in (("loopback", ip.is_loopback), ("link-local", ip.is_link_local),
                            ("unspecified", ip.is_unspecified), ("multicast", ip.is_multicast),
                            ("private", ip.is_private), ("reserved", ip.is_reserved),
                            ("non-global", not ip.is_global)):
        if refused:
            return reason
    return None


def allowed_addresses(host: str, port: int, *, allow_private: bool, what: str,
                      resolver: Resolver | None = None) -> list[str]:
    """The addresses of ``host`` to connect to, all of them allowed.

    Args:
        what: Names the host in messages (``"webhook_url host"``).
        resolver: Host name lookup (default: the system's, blocking).

    Raises:
        HostUnresolved: The name does not resolve.
        AddressRefused: One of its addresses is not public, and ``allow_private`` is off.
    """
    try:
        addresses = (resolver or resolve)(host, port)
    except OSError as exc:
        raise HostUnresolved(f"{what} {host!r} does not resolve ({exc})") from None
    if not addresses:
        raise HostUnresolved(f"{what} {host!r} does not resolve")
    if not allow_private:
        for address in addresses:
            reason = refused_reason(address)
            if reason:
                where = "" if address == host else f" (resolves to {address})"
                raise AddressRefused(f"{what} {host!r}{where} is a {reason} address, which this server does not call")
    return addresses


def pinned_url(parts: SplitResult, address: str) -> str:
    """``parts`` (an http(s) URL) with its host replaced by ``address``, fragment and credentials dropped.

    Send it with the ``Host`` header ``host_header(parts)`` and, for https, the TLS server
    name ``parts.hostname`` (httpx: ``extensions={"sni_hostname": ...}``), so that the
    origin sees the name and its certificate is verified against the name, not the address.
    """
    host = f"[{address}]" if ":" in address else address
    return urlunsplit((parts.scheme, f"{host}:{parts.port}" if parts.port else host, parts.path or "/",
                       parts.query, ""))


def host_header(parts: SplitResult) -> str:
    """The ``Host`` header of a URL: its authority without credentials."""
    return parts.netloc.rpartition("@")[2]
