"""STARTTLS as a protocol step (RFC 3207): when it is offered, what happens
to bytes pipelined after it, the SMTP state after it, `require = yes`, the
handshake timeout and a garbage ClientHello (both end only their own
session), resumption, and delivery over TLS into the real Dovecot with
mxfront's `with ESMTPS (...)` Received header."""
import re
import ssl
import subprocess
import time

import pytest

import smtpclient
import tlsclients
import waits
from dovecotlmtp import lf, split_stored
from smtpclient import SmtpClient, dot_stuff, open_transaction


@pytest.fixture
def certs_dir(pki, tmp_path):
    return pki.install(tmp_path / "certs.d", ["default", "a", "wild-b", "c"])


def tls_conf(certs_dir, **tls):
    return {"certs_dir": str(certs_dir), **tls}


def open_session(m, helo="client.example"):
    c, hello = smtpclient.smtp_session(m, helo=helo)
    assert hello.code == 250, hello
    return c, hello


# ---------------------------------------------------------------------------
# offered when, and only once

def test_starttls_offered_with_a_certificate_and_not_again_after_tls(
        mxfront, fake_backend, certs_dir, pki):
    m = mxfront(fake_backend(), tls=tls_conf(certs_dir))
    c, hello = open_session(m)
    with c:
        assert "STARTTLS" in hello.keywords, hello
        r = c.cmd("STARTTLS")
        assert (r.code, r.first) == (220, "220 2.0.0 Ready to start TLS"), r
        c.sock = tlsclients.client_context(pki.ca_file).wrap_socket(
            c.sock, server_hostname="mx.a.example")
        hello = c.cmd("EHLO client.example")
        assert hello.code == 250, hello
        assert "STARTTLS" not in hello.keywords, f"STARTTLS offered inside TLS: {hello}"
        r = c.cmd("STARTTLS")
        assert r.code == 503, f"second STARTTLS: {r}"
        assert c.cmd("NOOP").code == 250  # the session goes on


def test_starttls_with_a_parameter_is_a_syntax_error(mxfront, fake_backend, certs_dir):
    m = mxfront(fake_backend(), tls=tls_conf(certs_dir))
    c, _ = open_session(m)
    with c:
        r = c.cmd("STARTTLS now")
        assert r.code == 501, r  # RFC 3207 4: no parameters
        r = c.cmd("STARTTLS")
        assert r.code == 220, r


@pytest.mark.parametrize("setup", ["certs-dir-empty-on-purpose", "empty-certs-dir",
                                   "only-broken-entries"])
def test_no_usable_certificate_means_no_starttls(mxfront, fake_backend, pki, tmp_path, setup):
    certs = tmp_path / "certs.d"
    certs.mkdir()
    if setup == "only-broken-entries":
        pki.install(certs, [], broken=["bad-mismatch", "bad-expired"])
    m = mxfront(fake_backend(),
                tls={"certs_dir": "" if setup == "certs-dir-empty-on-purpose" else str(certs)})
    c, hello = open_session(m)
    with c:
        assert "STARTTLS" not in hello.keywords, hello
        r = c.cmd("STARTTLS")
        assert r.code in (454, 502, 503), f"STARTTLS without a certificate: {r}"
        assert c.cmd("NOOP").code == 250
    m.wait_log(r"event=tls_disabled")


# ---------------------------------------------------------------------------
# RFC 3207 4.2 / CVE-2011-0411: nothing pipelined after STARTTLS survives

def test_bytes_pipelined_after_starttls_are_discarded(mxfront, fake_backend, certs_dir, pki):
    fb = fake_backend()
    m = mxfront(fb, tls=tls_conf(certs_dir))
    injected = b"MAIL FROM:<evil@x>\r\n"
    c, _ = open_session(m)
    with c:
        c.send(b"STARTTLS\r\n" + injected)  # one write, one segment
        r = c.read_reply()
        assert r.code == 220, r
        # nothing may follow the 220 in plaintext (a reply to the MAIL would
        # also break the handshake below: it would be read as a TLS record)
        assert c.buf == b"", f"plaintext after the 220: {c.buf!r}"
        c.sock = tlsclients.client_context(pki.ca_file).wrap_socket(
            c.sock, server_hostname="mx.a.example")
        # the server forgot everything from before TLS: EHLO first
        r = c.cmd("MAIL FROM:<good@client.example>")
        assert r.code == 503, f"MAIL before EHLO after STARTTLS: {r}"
        r = c.cmd("EHLO client.example")
        assert r.code == 250 and r.first.startswith("250-mx.test.example"), \
            f"the first reply read after the handshake must be EHLO's: {r}"
        # the injected MAIL did not open a transaction
        r = c.cmd("RCPT TO:<alice@test.example>")
        assert r.code == 503, f"RCPT right after EHLO (injected MAIL in effect?): {r}"
        open_transaction(c, "alice@test.example", sender="good@client.example")
        c.send(dot_stuff(b"Subject: after starttls\r\n\r\nhello\r\n") + b".\r\n")
        assert c.read_reply().code == 250
    m.wait_log(rf"event=starttls_discard bytes={len(injected)}\b")
    conn = waits.wait_until(lambda: fb.used, 5.0, "a transaction at the backend")[0]
    waits.wait_until(lambda: any(cmd.startswith("MAIL") for cmd in conn.commands), 5.0,
                     "the MAIL at the backend")
    every = b"".join(bytes(x.received) for x in fb.connections)
    assert b"evil@x" not in every, f"the injected MAIL reached the backend: {every!r}"


# ---------------------------------------------------------------------------
# require = yes

def test_require_tls_refuses_mail_before_starttls(mxfront, fake_backend, certs_dir, pki):
    fb = fake_backend()
    m = mxfront(fb, tls=tls_conf(certs_dir, require="yes"))
    c, hello = open_session(m)
    with c:
        assert "STARTTLS" in hello.keywords
        r = c.cmd("MAIL FROM:<s@client.example>")
        assert (r.code, r.first) == (530, "530 5.7.0 Must issue a STARTTLS command first"), r
        assert c.cmd("NOOP").code == 250
        tlsclients.python_starttls(c, sni="mx.a.example", ca=pki.ca_file)
        assert c.cmd("EHLO client.example").code == 250
        open_transaction(c, "alice@test.example", sender="s@client.example")
        c.send(b"Subject: required\r\n\r\nx\r\n.\r\n")
        assert c.read_reply().code == 250
    waits.wait_until(lambda: sum(len(x.messages) for x in fb.connections) == 1, 5.0,
                     "one message at the backend")


def test_require_tls_with_swaks(mxfront, fake_backend, certs_dir):
    """A second client: swaks without TLS is refused at MAIL, with --tls it
    delivers."""
    fb = fake_backend()
    m = mxfront(fb, tls=tls_conf(certs_dir, require="yes"))
    base = ["swaks", "--server", f"127.0.0.1:{m.port}", "--helo", "swaks.client.example",
            "--from", "s@client.example", "--to", "alice@test.example",
            "--header", "Subject: swaks require"]
    p = subprocess.run(base, capture_output=True, text=True, timeout=20)
    assert re.search(r"<\*\* +530 5\.7\.0 Must issue a STARTTLS command first", p.stdout), p.stdout
    p = subprocess.run([*base, "--tls", "--tls-sni", "mx.a.example"], capture_output=True,
                           text=True, timeout=20)
    assert p.returncode == 0, p.stdout + p.stderr
    assert re.search(r"<~  250 ", p.stdout.split("~> .")[-1]), p.stdout
    waits.wait_until(lambda: sum(len(x.messages) for x in fb.connections) == 1, 5.0,
                     "one message at the backend")


# ---------------------------------------------------------------------------
# sessions that never finish their handshake end alone

def _client_hello():
    """The first flight of a real TLS client: a ClientHello record."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = tlsclients.client_context().wrap_bio(incoming, outgoing, server_hostname="mx.a.example")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def test_handshake_timeout_and_garbage_end_only_their_sessions(
        mxfront, fake_backend, certs_dir, pki):
    """Three sessions say STARTTLS and then: nothing; half a ClientHello;
    an HTTP request. Meanwhile a fourth delivers a message over TLS. The
    garbage session is closed at once (a TLS error, not the timeout), the two
    silent ones by the handshake timeout, and none of them holds up the
    others. Order, not wall-clock bounds, shows "at once": the garbage
    session, which started its handshake last, ends while the silent ones are
    still open."""
    fb = fake_backend()
    handshake = 3.0
    m = mxfront(fb, tls=tls_conf(certs_dir), timeouts={"handshake": f"{handshake:g}s"})

    def after_220(c):
        r = c.cmd("STARTTLS")
        assert r.code == 220, r
        return time.monotonic()

    def still_open(c):
        return not c.wait_closed(0.01)

    silent, _ = open_session(m, "silent.example")
    partial, _ = open_session(m, "partial.example")
    garbage, _ = open_session(m, "garbage.example")
    try:
        t_silent = after_220(silent)
        t_partial = after_220(partial)
        hello = _client_hello()
        partial.send(hello[:len(hello) // 2])
        after_220(garbage)
        garbage.send(b"GET / HTTP/1.1\r\nHost: mx.test.example\r\n\r\n")

        # a normal TLS session completes while the silent ones hang
        c, _ = open_session(m, "normal.example")
        with c:
            tlsclients.python_starttls(c, sni="mx.a.example", ca=pki.ca_file)
            assert c.cmd("EHLO normal.example").code == 250
            open_transaction(c, "alice@test.example", sender="s@client.example")
            c.send(b"Subject: normal\r\n\r\nx\r\n.\r\n")
            assert c.read_reply().code == 250
            assert c.cmd("QUIT").code == 221
        assert still_open(silent) and still_open(partial), \
            "the normal session finished only after the silent ones were dropped"

        assert garbage.wait_closed(handshake + 5), "garbage ClientHello: session still open"
        assert still_open(silent) and still_open(partial), \
            "the garbage session was not closed before the handshake timeout"

        assert silent.wait_closed(handshake + 5), "silent client not dropped by the timeout"
        silent_after = time.monotonic() - t_silent
        assert partial.wait_closed(handshake + 5), "half a ClientHello: not dropped by the timeout"
        partial_after = time.monotonic() - t_partial
        assert silent_after >= handshake - 0.5, f"silent session dropped after {silent_after:.2f}s"
        assert partial_after >= handshake - 0.5, \
            f"partial session dropped after {partial_after:.2f}s"
    finally:
        for x in (silent, partial, garbage):
            x.close()
    m.wait_log(r'event=tls_error reason="handshake timeout"', count=2)
    errors = re.findall(r'event=tls_error client=\S+ sni=\S+ reason="([^"]+)"', m.log())
    assert errors and all(e != "handshake timeout" for e in errors), \
        f"the garbage session should be logged with the TLS error: {errors}"
    # the daemon serves on
    served = tlsclients.openssl(m.port, sni="x.b.example", ca=pki.ca_file)
    assert served.der == pki.leaves["wild-b"].der and served.verified, served


# ---------------------------------------------------------------------------
# resumption

def test_resumption_with_gnutls_cli(mxfront, fake_backend, certs_dir):
    m = mxfront(fake_backend(), tls=tls_conf(certs_dir))
    g = tlsclients.gnutls(m.port, sni="mx.a.example", extra=["--resume"])
    assert "This is a resumed session" in g.output, g
    m.wait_log(r"event=tls sni=mx\.a\.example cert=a match=exact .* resumed=no")
    m.wait_log(r"event=tls sni=mx\.a\.example cert=a match=exact .* resumed=yes")


def _python_connect(port, ctx, sni, session=None):
    with SmtpClient("127.0.0.1", port) as c:
        c.read_reply()
        c.cmd("EHLO python.client.example")
        tlsclients.python_starttls(c, sni=sni, context=ctx, session=session)
        assert c.cmd("EHLO python.client.example").code == 250  # the ticket arrives meanwhile
        result = (c.sock.session_reused, c.sock.session, c.sock.getpeercert(binary_form=True))
        c.cmd("QUIT")
    return result


@pytest.mark.parametrize("version", ["TLSv1_3", "TLSv1_2"])
def test_resumption_with_python(mxfront, fake_backend, certs_dir, pki, version):
    m = mxfront(fake_backend(), tls=tls_conf(certs_dir))
    ctx = tlsclients.client_context(pki.ca_file, minimum_version=getattr(ssl.TLSVersion, version),
                                    maximum_version=getattr(ssl.TLSVersion, version))
    reused, session, der = _python_connect(m.port, ctx, "mx.a.example")
    assert not reused and der == pki.leaves["a"].der
    reused, _, _ = _python_connect(m.port, ctx, "mx.a.example", session)
    assert reused, "session not resumed"
    m.wait_log(r"event=tls sni=mx\.a\.example cert=a match=exact .* resumed=yes")


def test_session_is_not_resumed_under_another_name(mxfront, fake_backend, certs_dir, pki):
    """A TLS 1.3 ticket from a session with SNI mx.a.example (certificate
    a), offered with SNI mx.c.example: resuming it would leave the client
    authenticated by certificate a while mxfront logs `cert=c` and writes
    `sni=mx.c.example` into the Received header. RFC 6066 3 forbids the
    server to resume under a different name; mxfront must do a full
    handshake with certificate c (as it does with TLS 1.2)."""
    m = mxfront(fake_backend(), tls=tls_conf(certs_dir))
    ctx = tlsclients.client_context(pki.ca_file)
    _, session, der = _python_connect(m.port, ctx, "mx.a.example")
    assert der == pki.leaves["a"].der
    reused, _, der = _python_connect(m.port, ctx, "mx.c.example", session)
    line = m.wait_log(r"event=tls sni=mx\.c\.example .*")[0].group(0)
    assert not reused, f"ticket for mx.a.example resumed under SNI mx.c.example; log: {line}"
    assert der == pki.leaves["c"].der, pki.name_of(der)


# ---------------------------------------------------------------------------
# delivery over TLS into Dovecot

def received_proto(stored, helo, sni):
    """mxfront's Received header in stored, which must say ESMTPS with the
    version, cipher and SNI; returns (version, cipher)."""
    m = re.search(rb"Received: from " + re.escape(helo.encode()) +
                  rb" \(\[127\.0\.0\.1\]\)\n\tby mx\.test\.example \(mxfront\) with ESMTPS "
                  rb"\((TLS1\.[23]) ([A-Z0-9-]+) sni=" + re.escape(sni.encode()) + rb"\) id ",
                  stored)
    assert m, f"no mxfront Received header with ESMTPS and sni={sni}:\n{stored[:1500]!r}"
    version, cipher = m.group(1).decode(), m.group(2).decode()
    split_stored(stored, helo, proto=f"ESMTPS ({version} {cipher} sni={sni})")
    return version, cipher


def test_message_over_starttls_arrives_in_dovecot_with_esmtps_header(
        mxfront, dovecot, certs_dir, pki):
    m = mxfront(dovecot, tls=tls_conf(certs_dir))
    # 1: Python ssl, SNI mx.a.example, to alice
    body = (b"Subject: over tls (python)\r\nMessage-ID: <tls-1@client.example>\r\n\r\n"
            b"hello alice\r\n")
    with SmtpClient("127.0.0.1", m.port) as c:
        c.read_reply()
        c.cmd("EHLO tls.client.example")
        tlsclients.python_starttls(c, sni="mx.a.example", ca=pki.ca_file)
        py_cipher = c.sock.cipher()[0]
        assert c.cmd("EHLO tls.client.example").code == 250
        open_transaction(c, "alice@test.example", sender="s@client.example")
        c.send(dot_stuff(body) + b".\r\n")
        assert c.read_reply().code == 250
        c.cmd("QUIT")
    stored = dovecot.wait_messages("alice", 1)[0]
    version, cipher = received_proto(stored, "tls.client.example", "mx.a.example")
    assert lf(body) in stored
    line = m.wait_log(r"event=tls sni=mx\.a\.example cert=a match=exact version=(\S+) "
                      r"cipher=(\S+)")[0]
    assert (line.group(1), line.group(2)) == (version, cipher), line.group(0)
    assert cipher.replace("-", "_") in py_cipher, (cipher, py_cipher)

    # 2: swaks, SNI through the wildcard, to bob
    p = subprocess.run(
        ["swaks", "--server", f"127.0.0.1:{m.port}", "--tls", "--tls-sni", "relay.b.example",
         "--helo", "swaks.client.example", "--from", "s@client.example",
         "--to", "bob@test.example", "--header", "Subject: over tls (swaks)",
         "--body", "hello bob"], capture_output=True, text=True, timeout=20)
    assert p.returncode == 0, p.stdout + p.stderr
    stored = dovecot.wait_messages("bob", 1)[0]
    received_proto(stored, "swaks.client.example", "relay.b.example")
    assert b"hello bob" in stored

    # 3: no SNI, to carol
    with SmtpClient("127.0.0.1", m.port) as c:
        c.read_reply()
        c.cmd("EHLO nosni.client.example")
        tlsclients.python_starttls(c, sni=None, ca=pki.ca_file)
        assert c.sock.getpeercert(binary_form=True) == pki.leaves["default"].der
        assert c.cmd("EHLO nosni.client.example").code == 250
        open_transaction(c, "carol@test.example", sender="s@client.example")
        c.send(b"Subject: no sni\r\n\r\nhello carol\r\n.\r\n")
        assert c.read_reply().code == 250
    stored = dovecot.wait_messages("carol", 1)[0]
    received_proto(stored, "nosni.client.example", "none")
