"""Which notification URLs the gateway will call: http(s) only, private addresses by policy."""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit


class UnsafeTarget(ValueError):
    """The URL may not be called; the message says why."""


def _addresses(host: str, port: int) -> list[ipaddress._BaseAddress]:
    infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    return [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]


def is_private(address: ipaddress._BaseAddress) -> bool:
    return (address.is_private or address.is_loopback or address.is_link_local
            or address.is_multicast or address.is_reserved or address.is_unspecified)


def check_url(url: str, *, allow_private: bool, resolve: bool = True) -> str:
    """Return the URL when it may be called, else raise UnsafeTarget.

    A host that does not resolve yet is accepted at submission (the receiver may come up
    later); delivery checks again with ``resolve`` and refuses private addresses then.
    """
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UnsafeTarget("must be an absolute http:// or https:// URL")
    if parts.username or parts.password:
        raise UnsafeTarget("must not carry credentials; use webhook signatures instead")
    if allow_private or not resolve:
        return url.strip()
    try:
        addresses = _addresses(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
    except (socket.gaierror, UnicodeError):
        return url.strip()
    bad = [str(a) for a in addresses if is_private(a)]
    if bad:
        raise UnsafeTarget(
            f"resolves to a private or loopback address ({', '.join(sorted(set(bad)))}), "
            "which this gateway is configured not to call (webhook_allow_private)"
        )
    return url.strip()
