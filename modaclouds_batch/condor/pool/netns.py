"""The network of a pool with simulated hosts: one bridge on this machine, one network
namespace per host, joined to the bridge by a veth pair (iproute2; root only).

Every name carries the pool's identity on this machine, its collector port (no two running
pools can share one), so one pool's cleanup never touches another pool's links or
namespaces: the bridge ``mbp<port>``, namespaces ``mb<port>-<host>``, the host-side veth
ends ``mb<port>v<n>`` (at most 15 characters, the kernel's limit). The pool's subnet is
``10.<port // 256>.<port % 256>.0/24``: the bridge is ``.1`` (where the pool's collector
and schedd listen), host ``n`` is ``.n``. Nothing is routed or forwarded beyond the bridge:
traffic stays between the pool's own addresses.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import shutil
import subprocess
from dataclasses import dataclass

from . import host
from .commands import run
from .errors import PoolError

log = logging.getLogger(__name__)

# Host addresses .2 to .254 of the pool's /24.
FIRST_HOST, LAST_HOST = 2, 254
# What a namespace calls its end of the veth pair.
HOST_INTERFACE = "eth0"


@dataclass(frozen=True)
class PoolNetwork:
    """Names and addresses of one pool's bridge and hosts, derived from its collector port."""

    collector_port: int

    def __post_init__(self):
        if not 1 <= int(self.collector_port) <= 65535:
            raise ValueError(f"collector_port must be a port number, not {self.collector_port!r}")

    @property
    def subnet(self) -> ipaddress.IPv4Network:
        port = int(self.collector_port)
        return ipaddress.IPv4Network(f"10.{port // 256}.{port % 256}.0/24")

    @property
    def bridge(self) -> str:
        return f"mbp{self.collector_port}"

    @property
    def bridge_address(self) -> str:
        """Where the pool's central manager and schedd listen."""
        return str(self.subnet.network_address + 1)

    @property
    def host_pattern(self) -> str:
        """The subnet as an HTCondor ALLOW host pattern."""
        return ".".join(self.bridge_address.split(".")[:3]) + ".*"

    @property
    def namespace_prefix(self) -> str:
        return f"mb{self.collector_port}-"

    def namespace(self, host_name: str) -> str:
        return f"{self.namespace_prefix}{host_name}"

    def veth(self, number: int) -> str:
        return f"mb{self.collector_port}v{number}"

    def host_address(self, number: int) -> str:
        if not FIRST_HOST <= number <= LAST_HOST:
            raise ValueError(f"host number must be {FIRST_HOST}-{LAST_HOST}, not {number}")
        return str(self.subnet.network_address + number)


def host_tools_present() -> bool:
    """Root with ``ip``: namespaces and links could be listed and removed."""
    return host.is_root() and bool(shutil.which("ip"))


def require_tools(why: str) -> None:
    """Root and iproute2's ``ip`` (and util-linux's ``nsenter``), or a clear error."""
    if not host.is_root():
        raise PoolError(f"{why} needs root (network namespaces and veth pairs)")
    for tool, package in (("ip", "iproute2"), ("nsenter", "util-linux")):
        if not shutil.which(tool):
            raise PoolError(f"{why} needs `{tool}`: apt-get install {package}")


def _links() -> dict[str, dict]:
    out = run(["ip", "-j", "addr", "show"], "listing this machine's network links")
    return {link["ifname"]: link for link in json.loads(out or "[]")}


def _overlapping_routes(subnet: ipaddress.IPv4Network, own_link: str) -> list[str]:
    """Routes of this machine (any table) that reach into ``subnet`` through another link."""
    out = run(["ip", "-j", "-4", "route", "show", "table", "all"], "listing this machine's routes")
    clashes = []
    for route in json.loads(out or "[]"):
        dst = route.get("dst", "")
        if dst in ("default", "") or route.get("dev") == own_link:
            continue
        try:
            network = ipaddress.IPv4Network(dst if "/" in dst else f"{dst}/32", strict=False)
        except ValueError:
            continue
        if network.overlaps(subnet) and not network.is_loopback:
            clashes.append(f"{dst} via {route.get('dev')}")
    return clashes


def routed_elsewhere(net: PoolNetwork) -> list[str]:
    """Routes of this machine into the pool's subnet through a link not the pool's bridge."""
    return _overlapping_routes(net.subnet, net.bridge)


def ensure_bridge(net: PoolNetwork, say) -> None:
    """The pool's bridge, up, holding the pool's address; idempotent. Refuses a subnet that
    some other link of this machine already routes (the pool would shadow a real network)."""
    require_tools("a pool with simulated hosts")
    links = _links()
    address = f"{net.bridge_address}/{net.subnet.prefixlen}"
    if net.bridge not in links:
        clashes = routed_elsewhere(net)
        if clashes:
            raise PoolError(f"the pool's subnet {net.subnet} (from collector_port {net.collector_port}) "
                            f"is already routed on this machine ({', '.join(clashes)}); choose another "
                            f"collector_port")
        run(["ip", "link", "add", net.bridge, "type", "bridge"], f"creating the pool's bridge {net.bridge}")
        say(f"created bridge {net.bridge} for {net.subnet}")
        links = _links()
    present = {f"{a['local']}/{a['prefixlen']}" for a in links[net.bridge].get("addr_info", [])
               if a.get("family") == "inet"}
    if address not in present:
        run(["ip", "addr", "add", address, "dev", net.bridge], f"giving {net.bridge} the pool's address")
    run(["ip", "link", "set", net.bridge, "up"], f"bringing {net.bridge} up")


def remove_bridge(net: PoolNetwork, say) -> None:
    if net.bridge in _links():
        run(["ip", "link", "del", net.bridge], f"deleting the pool's bridge {net.bridge}")
        say(f"deleted bridge {net.bridge}")


def namespaces(net: PoolNetwork) -> list[str]:
    """This pool's namespaces that exist (never another pool's)."""
    out = run(["ip", "-j", "netns", "list"], "listing network namespaces") or "[]"
    names = [entry["name"] for entry in json.loads(out)]
    return sorted(n for n in names if n.startswith(net.namespace_prefix))


def add_namespace(net: PoolNetwork, host_name: str, number: int, say) -> str:
    """A namespace for host ``host_name`` with address ``.number`` on an ``eth0`` whose peer
    is plugged into the pool's bridge, and loopback up. Returns the namespace's name; on
    failure nothing of it is left."""
    ns, veth, address = net.namespace(host_name), net.veth(number), net.host_address(number)
    if ns in namespaces(net):
        raise PoolError(f"network namespace {ns} already exists")
    run(["ip", "netns", "add", ns], f"creating network namespace {ns}")
    try:
        inside = ["ip", "-n", ns]
        run(["ip", "link", "add", veth, "type", "veth", "peer", "name", HOST_INTERFACE, "netns", ns],
            f"creating the veth pair {veth} for {ns}")
        run(["ip", "link", "set", veth, "master", net.bridge], f"plugging {veth} into {net.bridge}")
        run(["ip", "link", "set", veth, "up"], f"bringing {veth} up")
        run([*inside, "addr", "add", f"{address}/{net.subnet.prefixlen}", "dev", HOST_INTERFACE],
            f"giving {ns} its address {address}")
        run([*inside, "link", "set", HOST_INTERFACE, "up"], f"bringing {ns}'s {HOST_INTERFACE} up")
        run([*inside, "link", "set", "lo", "up"], f"bringing {ns}'s loopback up")
    except PoolError:
        remove_namespace(net, host_name, say)
        raise
    say(f"created network namespace {ns} ({address} on {net.bridge})")
    return ns


def pids_in(ns: str) -> list[int]:
    """Processes whose network namespace is ``ns``."""
    done = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, check=False)
    return [int(p) for p in done.stdout.split() if p.isdigit()]


def remove_namespace(net: PoolNetwork, host_name: str, say) -> None:
    """Delete host ``host_name``'s namespace (its veth pair goes with it); idempotent."""
    ns = net.namespace(host_name)
    if ns in namespaces(net):
        run(["ip", "netns", "del", ns], f"deleting network namespace {ns}")
        say(f"deleted network namespace {ns}")


def enter(ns: str, argv: list[str]) -> list[str]:
    """``argv`` run inside namespace ``ns``'s network, with this machine's mounts."""
    return ["nsenter", f"--net=/run/netns/{ns}", *argv]
