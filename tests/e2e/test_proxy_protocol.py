"""PROXY protocol v1 and v2 on proxy= listeners (issue 13 point 1), sent by
hand: the header's address is the client everywhere (the per-IP limit and
the connection rate, logs, the Received header, XCLIENT to the backend); a
peer not in [server] proxy_trusted, a malformed, oversized or missing
header is closed without a greeting (event=proxy_error), and without a
reset; a v2 LOCAL command (a health check) is served as the load
balancer's own connection. test_haproxy.py does the same through a real
HAProxy."""
import re
import time

import pytest

import procs
import proxyproto
from dovecotlmtp import split_stored
from waits import wait_until

XCLIENT_CAPS = ["PIPELINING", "ENHANCEDSTATUSCODES", "8BITMIME",
                "XCLIENT ADDR PORT PROTO HELO LOGIN"]


def proxied(mxfront, target, proxy="any", trusted="127.0.0.1", **sections):
    server = {"listen": f"127.0.0.1:0 proxy={proxy}", "proxy_trusted": trusted,
              **sections.pop("server", {})}
    return mxfront(target, server=server, **sections)


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_header_address_is_the_client_everywhere(mxfront, dovecot, version):
    """A message from 203.0.113.9:4242 as the header says: mxfront's
    Received header and its log name that address, and Dovecot, told
    through XCLIENT, names it in its own Received header."""
    m = proxied(mxfront, dovecot, proxy=version)
    header = (proxyproto.v1 if version == "v1" else proxyproto.v2)("203.0.113.9", 4242)
    c = proxyproto.client(m.port, header)
    with c:
        assert c.read_reply().code == 220
        assert c.cmd("EHLO proxied.example").code == 250
        assert c.cmd("MAIL FROM:<s@proxied.example>").code == 250
        assert c.cmd("RCPT TO:<alice@dest.example>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(b"Subject: behind a proxy\r\n\r\nhello\r\n.\r\n")
        assert c.read_reply().code == 250
        assert c.cmd("QUIT").code == 221
    [stored] = dovecot.wait_messages("alice", 1)
    parts = split_stored(stored, helo="proxied.example", client_ip="203.0.113.9")
    dovecot_received = [b for name, b in parts.above if name == "Received"]
    assert dovecot_received and b"[203.0.113.9]" in dovecot_received[0], parts.above
    assert b"127.0.0.1" not in parts.received, parts.received
    m.wait_log(r"event=connect client=203\.0\.113\.9 port=4242 proxy=127\.0\.0\.1\b")
    m.wait_log(r"event=disconnect client=203\.0\.113\.9 ")


def test_xclient_carries_the_headers_address_and_port(mxfront, fake_backend):
    fb = fake_backend(capabilities=XCLIENT_CAPS)
    m = proxied(mxfront, fb)
    c = proxyproto.client(m.port, proxyproto.v2("2001:db8::77", 50000))
    with c:
        assert c.read_reply().code == 220
        assert c.cmd("EHLO six.example").code == 250
        assert c.cmd("MAIL FROM:<s@six.example>").code == 250
    [conn] = wait_until(lambda: fb.used, 5.0, "a transaction at the backend")
    xclient = [cmd for cmd in conn.commands if cmd.startswith("XCLIENT ")]
    assert xclient, conn.commands
    attrs = dict(kv.split("=", 1) for kv in xclient[0].split()[1:])
    assert (attrs.get("ADDR"), attrs.get("PORT")) == ("IPV6:2001:db8::77", "50000"), xclient


def test_per_ip_limit_and_rate_count_the_headers_address(mxfront, fake_backend):
    """Every connection comes from 127.0.0.1 (the 'load balancer'); the
    limits count the addresses the headers name."""
    m = proxied(mxfront, fake_backend(),
                server={"max_clients_per_ip": "2", "max_connection_rate": "4"})
    held = []
    try:
        for _ in range(2):
            c = proxyproto.client(m.port, proxyproto.v2("198.51.100.5", 1000 + len(held)))
            held.append(c)
            assert c.read_reply().code == 220
        c = proxyproto.client(m.port, proxyproto.v1("198.51.100.5", 1100))
        with c:
            r = c.read_reply()
            assert (r.code, r.enhanced) == (421, "4.7.0") and "from your address" in r.text, r
            data, end = proxyproto.read_to_eof(c.sock)
            assert end == "eof" and data == b"", (end, data)
        m.wait_log(r"event=limit kind=max_clients_per_ip")
        # Another client behind the same load balancer is not affected.
        for _ in range(2):
            c = proxyproto.client(m.port, proxyproto.v2("198.51.100.6", 2000 + len(held)))
            held.append(c)
            assert c.read_reply().code == 220
        # 198.51.100.6 has used 2 of its 4 a minute: 2 more, then refused.
        for _ in range(2):
            held.pop().close()
        for i in range(2):
            c = proxyproto.client(m.port, proxyproto.v2("198.51.100.6", 3000 + i))
            with c:
                assert c.read_reply().code == 220
                assert c.cmd("QUIT").code == 221
        c = proxyproto.client(m.port, proxyproto.v2("198.51.100.6", 3002))
        with c:
            r = c.read_reply()
            assert r.code == 421 and "per minute" in r.text, r
    finally:
        for c in held:
            c.close()


def _closed_without_a_word(c, seconds=5.0):
    data, end = proxyproto.read_to_eof(c.sock, seconds)
    assert data == b"", f"mxfront said something: {data!r}"
    assert end == "eof", f"connection ended by {end}"


@pytest.mark.parametrize("listener,header,reason", [
    ("any", b"EHLO client.example\r\n", "not a PROXY protocol header"),
    ("any", b"PROXY TCP4 203.0.113.9 192.0.2.25 4242\r\n", "malformed v1 header (fields)"),
    ("any", b"PROXY TCP4 203.0.113.9 192.0.2.25 4242 25 extra " + b"x" * 80 + b"\r\n",
     "v1 header longer than 107 bytes"),
    ("v2", proxyproto.V2_SIG + b"\x21\x11\x0f\xa0" + b"\x00" * 4000, "v2 header longer than"),
    ("v2", proxyproto.V2_SIG + b"\x21\x12\x00\x0c" + b"\x00" * 12,
     "v2 header for a protocol other than TCP"),
    ("v2", proxyproto.v1("203.0.113.9", 4242), "v1 header on a listener for v2 only"),
    ("v1", proxyproto.v2("203.0.113.9", 4242), "v2 header on a listener for v1 only"),
], ids=["smtp", "v1-fields", "v1-too-long", "v2-too-long", "v2-udp", "v1-on-v2", "v2-on-v1"])
def test_bad_header_is_closed_without_a_greeting(mxfront, fake_backend, listener, header,
                                                 reason):
    """Closed without a word and without a reset, although the peer goes on
    sending (its bytes are read and dropped until it closes)."""
    m = proxied(mxfront, fake_backend(), proxy=listener)
    c = proxyproto.client(m.port, header + b"EHLO more.example\r\n" * 50)
    with c:
        _closed_without_a_word(c)
    m.wait_log(r"event=proxy_error client=127\.0\.0\.1 reason=\"" + re.escape(reason))
    assert "event=connect" not in m.log()


def test_untrusted_peer_is_closed_without_a_greeting(mxfront, fake_backend):
    m = proxied(mxfront, fake_backend(), trusted="127.0.0.2, 10.0.0.0/8")
    c = proxyproto.client(m.port, proxyproto.v2("203.0.113.9", 4242) + b"EHLO x\r\n",
                          source="127.0.0.3")
    with c:
        _closed_without_a_word(c)
    m.wait_log(r"event=proxy_error client=127\.0\.0\.3 reason=\"not in \[server\] proxy_trusted")
    c = proxyproto.client(m.port, proxyproto.v2("203.0.113.9", 4242), source="127.0.0.2")
    with c:
        assert c.read_reply().code == 220


def test_no_header_in_time_is_closed(mxfront, fake_backend):
    m = proxied(mxfront, fake_backend(), timeouts={"proxy_header": "1s"})
    t0 = time.monotonic()
    silent = proxyproto.client(m.port, b"")
    half = proxyproto.client(m.port, proxyproto.v2("203.0.113.9", 4242)[:20])
    with silent, half:
        _closed_without_a_word(silent)
        _closed_without_a_word(half)
    waited = time.monotonic() - t0
    assert 0.9 <= waited < 4.0, f"closed after {waited:.2f}s, proxy_header is 1s"
    m.wait_log(r"event=proxy_error client=127\.0\.0\.1 reason=\"no PROXY header in time\"",
               count=2)


def test_v2_local_is_the_load_balancers_own_connection(mxfront, fake_backend):
    """HAProxy's health checks (check-send-proxy) say LOCAL: served as the
    load balancer's own connection; one that closes at once ends cleanly."""
    m = proxied(mxfront, fake_backend())
    c = proxyproto.client(m.port, proxyproto.v2_local())
    with c:
        assert c.read_reply().code == 220
        assert c.cmd("EHLO check.example").code == 250
        assert c.cmd("QUIT").code == 221
        data, end = proxyproto.read_to_eof(c.sock)
        assert end == "eof", end
    m.wait_log(r"event=proxy_local client=127\.0\.0\.1 version=2 command=local")
    m.wait_log(r"event=connect client=127\.0\.0\.1 port=\d+$")
    # a check that only connects, sends LOCAL and closes
    c = proxyproto.client(m.port, proxyproto.v2_local())
    c.close()
    m.wait_log(r"event=proxy_local", count=2)
    m.wait_log(r"event=disconnect client=127\.0\.0\.1 ", count=2)


def test_bytes_after_the_header_are_the_clients(mxfront, fake_backend):
    """A client's first bytes may ride in the header's segment: without a
    greeting delay they are its first command; with one, it talked before
    the greeting (554)."""
    m = proxied(mxfront, fake_backend())
    c = proxyproto.client(m.port, proxyproto.v2("203.0.113.9", 4242) + b"NOOP\r\n")
    with c:
        assert c.read_reply().code == 220
        assert c.read_reply().code == 250
    m2 = proxied(mxfront, fake_backend(), server={"greeting_delay": "1s"})
    c = proxyproto.client(m2.port, proxyproto.v1("203.0.113.9", 4242) + b"EHLO early\r\n")
    with c:
        data, end = proxyproto.read_to_eof(c.sock)
        assert data.startswith(b"554 5.5.0 "), data
        assert end == "eof", end
    m2.wait_log(r"event=early_talker client=203\.0\.113\.9 bytes=12")


def test_plain_and_proxy_listeners_side_by_side(mxfront, fake_backend):
    """One listener for the load balancer, one for direct clients."""
    m = mxfront(fake_backend(), server={"listen": "127.0.0.1:0 proxy=v2, 127.0.0.1:0",
                                        "proxy_trusted": "127.0.0.0/8"})
    proxy_port = int(m.addresses[0].rsplit(":", 1)[1])
    plain_port = int(m.addresses[1].rsplit(":", 1)[1])
    c = proxyproto.client(plain_port, b"")
    with c:
        assert c.read_reply().code == 220
    c = proxyproto.client(proxy_port, proxyproto.v2("203.0.113.9", 4242))
    with c:
        assert c.read_reply().code == 220
    m.wait_log(r"event=connect client=127\.0\.0\.1 port=\d+$")
    m.wait_log(r"event=connect client=203\.0\.113\.9 port=4242 proxy=127\.0\.0\.1")


def test_a_listener_without_proxy_trusted_is_a_configuration_error(tmp_path):
    conf = tmp_path / "mxfront.conf"
    where = procs.write_config(conf, procs.mxfront_config(
        "127.0.0.1:24", {"server": {"listen": "127.0.0.1:0 proxy=v2"}}))
    p = procs.run_mxfront("-t", "-c", str(conf))
    assert p.returncode == 1, p.stderr
    line = where[("server", "listen")]
    assert f"{conf}:{line}: listen: 127.0.0.1:0 takes a PROXY header: [server] " \
           "proxy_trusted must name" in p.stderr, p.stderr
