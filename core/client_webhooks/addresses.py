"""Where a webhook may be posted: never into the platform's own network (SSRF).

An endpoint's URL is checked when it is registered and its host resolved again at every delivery,
because DNS can change between the two: the delivery connects to the very address it checked
(`resolve_deliverable`), never to a second lookup's answer. Loopback, link-local, private,
shared (CGNAT), multicast, reserved and unspecified addresses are refused, also when they hide in
an IPv6 address (IPv4-mapped ::ffff:a.b.c.d, NAT64 64:ff9b::/96, 6to4, Teredo), unless
CLIENT_WEBHOOKS_ALLOW_PRIVATE is set, for development.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

MAX_URL_LENGTH = 2000
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
NAT64 = ipaddress.ip_network("64:ff9b::/96")


class AddressRefused(ValueError):
    """The URL or an address it resolves to may not be posted to; the message says why."""


def _tunnelled_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address a 6to4 or Teredo address carries."""
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    return None


def address_problem(ip: IPAddress) -> str | None:
    """Why `ip` is no place to post a webhook to, or None if it is a public address."""
    if isinstance(ip, ipaddress.IPv6Address):
        # An IPv4-mapped or NAT64 address reaches the IPv4 address inside: that one decides.
        inner = ip.ipv4_mapped or (ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF) if ip in NAT64 else None)
        if inner is not None:
            problem = address_problem(inner)
            return f"{problem} (inside {ip})" if problem else None
        tunnelled = _tunnelled_ipv4(ip)
        if tunnelled is not None and (problem := address_problem(tunnelled)):
            return f"{problem} (inside {ip})"
    for attribute, name in (
        ("is_unspecified", "an unspecified address"),
        ("is_loopback", "a loopback address"),
        ("is_link_local", "a link-local address"),
        ("is_multicast", "a multicast address"),
        ("is_private", "a private address"),
        ("is_reserved", "a reserved address"),
    ):
        if getattr(ip, attribute):
            return f"{ip} is {name}"
    if not ip.is_global:  # e.g. 100.64.0.0/10, shared address space
        return f"{ip} is not a public address"
    return None


@dataclass(frozen=True)
class Target:
    """A URL taken apart for a delivery: connect to `address`, say `host` (Host header, TLS SNI)."""

    scheme: str
    host: str
    port: int
    path: str
    address: str

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


def parse_url(url: str, *, allow_http: bool) -> SplitResult:
    """Check the form of `url`: http(s) (http only if `allow_http`), a host, no credentials or
    fragment, at most MAX_URL_LENGTH characters. Raises AddressRefused."""
    if len(url) > MAX_URL_LENGTH:
        raise AddressRefused(f"A URL is at most {MAX_URL_LENGTH} characters.")
    if any(ch.isspace() or not ch.isprintable() for ch in url):
        raise AddressRefused("A URL has no spaces or control characters.")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError for a port out of range)
    except ValueError as exc:
        raise AddressRefused(f"Not a URL: {exc}.") from None
    schemes = ("https", "http") if allow_http else ("https",)
    if parts.scheme not in schemes:
        raise AddressRefused(f"The URL must start with {' or '.join(s + '://' for s in schemes)}.")
    if not parts.hostname:
        raise AddressRefused("The URL names no host.")
    if parts.username is not None or parts.password is not None:
        raise AddressRefused("The URL may not carry credentials: sign with the endpoint's secret instead.")
    if parts.fragment:
        raise AddressRefused("The URL may not have a fragment (#…).")
    return parts


def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address `host` resolves to (an IP literal: itself). Raises AddressRefused if none."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise AddressRefused(f"The host {host} does not resolve ({exc}).") from None
    # A scoped IPv6 address (fe80::1%eth0) comes with its zone: drop it, the address decides.
    return list(dict.fromkeys(ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos))


def resolve_deliverable(url: str, *, allow_http: bool, allow_private: bool) -> Target:
    """Check `url` and resolve its host; every address it resolves to must be public (one private
    answer among public ones is how DNS rebinding gets in) unless `allow_private`. Returns the
    first address to connect to. Raises AddressRefused."""
    parts = parse_url(url, allow_http=allow_http)
    host = parts.hostname
    assert host is not None  # parse_url refuses a URL without one
    port = parts.port or (443 if parts.scheme == "https" else 80)
    addresses = resolve(host, port)
    if not allow_private:
        for ip in addresses:
            if problem := address_problem(ip):
                raise AddressRefused(f"The URL reaches a network webhooks may not: {problem}.")
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    return Target(scheme=parts.scheme, host=host, port=port, path=path, address=str(addresses[0]))
