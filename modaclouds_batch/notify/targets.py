"""Which notification URLs and addresses the gateway will call.

A URL must be ``http``/``https`` without credentials. The addresses its host resolves to
must all be globally routable (``ipaddress`` ``is_global``), with IPv6 forms that embed an
IPv4 address (IPv4-mapped, IPv4-compatible, 6to4, Teredo, NAT64) judged by the address
they embed. Cloud metadata services are refused always, even when an operator allows
private receivers (``webhook_allow_private``): no receiver lives there, and they hand out
credentials.

The delivery resolves a host once (:func:`resolve`) and connects to the very address it
checked (see ``delivery.py``), so a name that answers differently the second time (DNS
rebinding) cannot move the request elsewhere.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Callable
from urllib.parse import urlsplit

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
# getaddrinfo's signature; tests pass a scripted one.
Resolver = Callable[..., list]

# Instance metadata services (AWS, GCP, Azure, OpenStack: 169.254.169.254; AWS ECS task
# metadata: 169.254.170.2; Alibaba Cloud: 100.100.100.200; Oracle: 192.0.0.192; AWS IPv6:
# fd00:ec2::254), refused whatever the policy.
METADATA_ADDRESSES = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254", "169.254.170.2", "169.254.169.253", "100.100.100.200", "192.0.0.192",
    "fd00:ec2::254", "fd00:ec2::23",
))
# Shared address space (carrier-grade NAT, and where some clouds put their services).
SHARED_ADDRESS_SPACE = ipaddress.ip_network("100.64.0.0/10")
NAT64 = ipaddress.ip_network("64:ff9b::/96")
IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


MAX_URL_LENGTH = 2048


class UnsafeTarget(ValueError):
    """The URL may not be called; the message says why."""


class Unresolvable(UnsafeTarget):
    """The host does not resolve (now): nothing is sent, and the delivery is retried."""


@dataclass(frozen=True)
class Target:
    """A parsed notification URL: what to connect to, and what to call it."""

    url: str
    scheme: str
    host: str
    port: int


def parse_url(url: str) -> Target:
    """The URL's parts, or UnsafeTarget when it is no http(s) URL one may call."""
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
    return Target(url, parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80))


def _embedded_v4(address: Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address stands for (mapped, compatible, 6to4, Teredo, NAT64)."""
    if address.version == 4:
        return []
    found = [a for a in (address.ipv4_mapped, address.sixtofour) if a is not None]
    if address.teredo:
        found.extend(address.teredo)
    if address in NAT64 or (address in IPV4_COMPATIBLE and int(address) > 1):
        found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return found


def refusal(address: Address, *, allow_private: bool) -> str | None:
    """Why the gateway will not call this address, or None when it may."""
    if address.version == 6 and address.scope_id:
        address = ipaddress.IPv6Address(str(address).split("%")[0])
    for embedded in _embedded_v4(address):
        why = refusal(embedded, allow_private=allow_private)
        if why:
            return f"embeds {embedded}, which {why}"
    if address in METADATA_ADDRESSES:
        return "is a cloud metadata address"
    if address.is_unspecified or address.is_multicast:
        return "is not a unicast address"
    if allow_private:
        return None
    if address.version == 4 and address in SHARED_ADDRESS_SPACE:
        return "is in the shared address space 100.64.0.0/10"
    if not address.is_global:
        return "is not a globally routable address"
    return None


def resolve(host: str, port: int, *, allow_private: bool, resolver: Resolver | None = None) -> list[Address]:
    """Every address ``host`` resolves to, all of them allowed; else UnsafeTarget.

    Fails closed: a name that does not resolve, or resolves to no address, is refused,
    as is a name with any address the policy refuses (one bad answer among good ones is
    how rebinding attacks start).
    """
    try:
        literal = ipaddress.ip_address(host.strip("[]").split("%")[0])
    except ValueError:
        literal = None
    if literal is not None:
        addresses = [literal]
    else:
        try:
            infos = (resolver or socket.getaddrinfo)(host, port, proto=socket.IPPROTO_TCP)
        except (OSError, UnicodeError) as exc:
            raise Unresolvable(f"host {host!r} does not resolve ({exc})") from None
        addresses = []
        for info in infos:
            address = ipaddress.ip_address(info[4][0].split("%")[0])
            if address not in addresses:
                addresses.append(address)
        if not addresses:
            raise Unresolvable(f"host {host!r} resolves to no address")
    bad = [(a, why) for a in addresses if (why := refusal(a, allow_private=allow_private))]
    if bad:
        address, why = bad[0]
        hint = "" if allow_private or address in METADATA_ADDRESSES else (
            "; private and loopback receivers need the webhook_allow_private setting")
        raise UnsafeTarget(f"resolves to {address}, which {why}{hint}")
    return addresses


def check_url(url: str, *, allow_private: bool, resolver: Resolver | None = None) -> str:
    """Return the URL when it may be called, else raise UnsafeTarget (at submission).

    A host that does not resolve yet is accepted (the receiver may come up later); every
    delivery resolves it again and refuses to send when it still does not.
    """
    target = parse_url(url)
    try:
        resolve(target.host, target.port, allow_private=allow_private, resolver=resolver)
    except Unresolvable:
        pass
    return target.url
