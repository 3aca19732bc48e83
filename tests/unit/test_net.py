"""The network's pure parts: port specs, resolvers, host addresses, the allow policy."""

from __future__ import annotations

import ipaddress

import pytest

from coopy.errors import ConfigError
from coopy.net import (
    NetSetup,
    PortMap,
    default_gateway,
    helper_argv,
    host_addresses,
    host_resolvers,
    parse_port,
    resolv_conf,
)
from coopy.proxy import Policy, _split_host_port, entry_error


@pytest.mark.parametrize(("spec", "want"), [
    ("8080:80", PortMap("127.0.0.1", 8080, 80, "tcp")),
    ("3000", PortMap("127.0.0.1", 3000, 3000, "tcp")),
    ("5353/udp", PortMap("127.0.0.1", 5353, 5353, "udp")),
    ("0.0.0.0:8080:80", PortMap("0.0.0.0", 8080, 80, "tcp")),
    ("[::1]:8080:80/tcp", PortMap("::1", 8080, 80, "tcp")),
])
def test_port_specs(spec: str, want: PortMap) -> None:
    assert parse_port(spec) == want


@pytest.mark.parametrize("spec", ["80:http", "0:80", "70000:80", "1.2.3:80:80", "80/sctp",
                                  "a:b:c:d"])
def test_bad_port_specs(spec: str) -> None:
    with pytest.raises(ConfigError, match=f"-p {spec}: "):
        parse_port(spec)


def test_resolved_stub_is_followed() -> None:
    stub = "nameserver 127.0.0.53\noptions edns0 trust-ad\nsearch corp.example\n"
    upstream = "nameserver 10.0.0.2\nnameserver 10.0.0.3\n"
    assert host_resolvers(stub, upstream) == (
        ["10.0.0.2", "10.0.0.3"], ["options edns0 trust-ad", "search corp.example"])
    text = resolv_conf("private", stub, upstream, None)
    assert "nameserver 10.0.0.2\nnameserver 10.0.0.3\n" in text and "127.0.0.53" not in text


def test_loopback_only_resolver_goes_through_the_forwarder() -> None:
    text = resolv_conf("private", "nameserver 127.0.0.1\n", None, "192.0.2.1")
    assert "nameserver 192.0.2.1" in text and "127.0.0.1" not in text


def test_other_modes_resolv_conf() -> None:
    assert resolv_conf("host", "nameserver 1.2.3.4\n", None, None) == "nameserver 1.2.3.4\n"
    assert "nameserver" not in resolv_conf("none", "nameserver 1.2.3.4\n", None, None)
    assert "proxy" in resolv_conf("allow", "nameserver 1.2.3.4\n", None, None)


def test_default_gateway() -> None:
    route = ("Iface\tDestination\tGateway \tFlags\n"
             "eth0\t000200C0\t00000000\t0001\neth0\t00000000\t010200C0\t0003\n")
    assert default_gateway(route) == "192.0.2.1"
    assert default_gateway("Iface\n") is None


def test_host_addresses() -> None:
    fib = ("Local:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 127.0.0.1\n        /32 host LOCAL\n"
           "     |-- 192.0.2.2\n        /32 host LOCAL\n     |-- 192.0.2.255\n"
           "        /32 link BROADCAST\n")
    inet6 = ("00000000000000000000000000000001 01 80 10 80 lo\n"
             "fd000000000000000000000000000002 02 40 00 80 eth0\n"
             "fe8000000000000000fc00fffe000001 02 40 20 80 eth0\n")
    assert host_addresses(fib, inet6) == ["192.0.2.2/32", "fd00::2/128"]


def test_pasta_argv_closes_the_host() -> None:
    setup = NetSetup("pasta", "/usr/bin/pasta", (PortMap("127.0.0.1", 8080, 80),))
    argv = helper_argv(setup, 42, 7, 8, None)
    for flags in (["--no-map-gw"], ["-T", "none"], ["-U", "none"], ["-u", "none"],
                  ["-t", "127.0.0.1/8080:80"], ["-P", "/proc/self/fd/7"]):
        i = argv.index(flags[0])
        assert argv[i:i + len(flags)] == flags
    assert argv[-1] == "42"
    slirp = helper_argv(NetSetup("slirp4netns", "/usr/bin/slirp4netns"), 42, 7, 8, "/s")
    assert "--disable-host-loopback" in slirp and slirp[-2:] == ["42", "eth0"]


A = ipaddress.ip_address


@pytest.mark.parametrize(("host", "addrs", "ok", "why"), [
    ("pypi.org", ["151.101.0.223"], True, ""),
    ("files.pythonhosted.org", ["151.101.0.223"], False, "not in the allowlist"),
    ("raw.githubusercontent.com", ["185.199.108.133"], True, ""),
    ("githubusercontent.com", ["185.199.108.133"], False, "not in the allowlist"),
    ("pypi.org", ["127.0.0.1"], False, "loopback or link-local"),
    ("pypi.org", ["169.254.169.254"], False, "loopback or link-local"),
    ("pypi.org", ["::ffff:127.0.0.1"], False, "loopback or link-local"),
    ("pypi.org", ["10.2.0.1"], False, "private address not listed"),
    ("pypi.org", ["10.1.2.3"], True, ""),  # in the listed CIDR
    ("pypi.org", ["127.0.0.1", "151.101.0.223"], True, ""),  # the first that passes
    ("10.1.9.9", [], True, ""),
    ("8.8.8.8", [], False, "not in the allowlist"),
    ("pypi.org", [], False, "does not resolve"),
])
def test_allow_policy(host: str, addrs: list[str], ok: bool, why: str) -> None:
    policy = Policy(["pypi.org", "*.githubusercontent.com", "10.1.0.0/16"])
    addr, reason = policy.check(host, [A(a) for a in addrs])
    assert (addr is not None) == ok
    assert why in reason


def test_authority_parsing() -> None:
    assert _split_host_port("pypi.org:443", 80) == ("pypi.org", 443)
    assert _split_host_port("pypi.org", 80) == ("pypi.org", 80)
    assert _split_host_port("[::1]:8080", 80) == ("::1", 8080)
    assert _split_host_port("pypi.org:http", 80) == (None, 0)
    assert _split_host_port("pypi.org:70000", 80) == (None, 0)


@pytest.mark.parametrize(("entry", "ok"), [("pypi.org", True), ("*.github.com", True),
                                           ("10.0.0.0/8", True), ("::1", True),
                                           ("not a name", False), ("a/b", False)])
def test_allow_entries(entry: str, ok: bool) -> None:
    assert (entry_error(entry) is None) == ok
