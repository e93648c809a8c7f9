"""Which notification URLs the gateway will call: http(s) only, private addresses by policy."""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit


MAX_URL_LENGTH = 2048


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
    url = url.strip()
    if len(url) > MAX_URL_LENGTH:
        raise UnsafeTarget(f"must be at most {MAX_URL_LENGTH} characters")
    if any(ord(c) < 33 or ord(c) == 127 or 0xD800 <= ord(c) <= 0xDFFF for c in url):
        raise UnsafeTarget("must not contain spaces, control characters or lone surrogates; percent-encode them")
    try:
        parts = urlsplit(url)
        port = parts.port  # raises for a port out of 0-65535 or not a number
    except ValueError as exc:  # e.g. "Invalid IPv6 URL" for http://[::1/
        raise UnsafeTarget(f"is not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UnsafeTarget("must be an absolute http:// or https:// URL")
    if port == 0:
        raise UnsafeTarget("must name a port from 1 to 65535 (or none)")
    if parts.username or parts.password:
        raise UnsafeTarget("must not carry credentials; use webhook signatures instead")
    if allow_private or not resolve:
        return url
    try:
        addresses = _addresses(parts.hostname, port or (443 if parts.scheme == "https" else 80))
    except (socket.gaierror, UnicodeError):
        return url
    bad = [str(a) for a in addresses if is_private(a)]
    if bad:
        raise UnsafeTarget(
            f"resolves to a private or loopback address ({', '.join(sorted(set(bad)))}), "
            "which this gateway is configured not to call (webhook_allow_private)"
        )
    return url
