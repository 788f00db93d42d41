"""Bad bytes from the client: NUL, 8-bit octets where only ASCII is allowed,
over-long command and text lines, malformed paths and ESMTP parameters, and
garbage on the TLS layer (instead of a ClientHello, or an alert in the middle
of DATA). Each is refused with the reply it deserves; the session (or, for TLS,
the daemon) goes on, and the backend never sees the bad bytes."""
import socket
import ssl
import time

import pytest

from certs import install_cert, make_cert
from procs import HOSTNAME, rss_kb, sanitized_build
from smtpclient import SmtpClient, open_transaction, smtp_session
from waits import wait_until

SANITIZED = sanitized_build()


def ascii_only(data):
    return all(b < 0x80 for b in data)


def check_table(c, table):
    """Sends each (line, code, enhanced or None) and collects mismatches."""
    wrong = []
    for line, code, enhanced in table:
        r = c.cmd(line)
        if r.code != code or (enhanced and r.enhanced != enhanced):
            wrong.append((line, f"want {code} {enhanced or ''}", r.first))
    return wrong


# -------------------------------------------------------------------- NUL

def test_nul_in_commands_500_and_session_goes_on(mxfront, fake_backend):
    fb = fake_backend()
    mx = mxfront(fb)
    c, _ = smtp_session(mx)
    with c:
        wrong = check_table(c, [
            (b"NOOP\x00", 500, "5.5.2"),
            (b"\x00", 500, "5.5.2"),
            (b"\x00NOOP", 500, "5.5.2"),
            (b"EHLO a\x00b.example", 500, "5.5.2"),
            (b"MAIL FROM:<a\x00b@client.example>", 500, "5.5.2"),
            (b"MAIL FROM:<sender@client.example>\x00", 500, "5.5.2"),
        ])
        assert wrong == [], wrong
        # None of those MAILs ran: this one is not nested, and is forwarded.
        assert c.cmd("MAIL FROM:<sender@client.example>").code == 250
        r = c.cmd(b"RCPT TO:<alice@dest.example>\x00")
        assert (r.code, r.enhanced) == (500, "5.5.2"), r
        assert c.cmd("RCPT TO:<alice@dest.example>").code == 250
    [conn] = fb.used
    assert b"\x00" not in bytes(conn.received)
    assert [cmd.split(":")[0] for cmd in conn.commands[1:] if cmd != "RSET"] == \
        ["MAIL FROM", "RCPT TO"], \
        conn.commands


def send_message(c, body, rcpt="alice@dest.example"):
    open_transaction(c, rcpt)
    c.send(body + b".\r\n")
    return c.read_reply()


@pytest.mark.parametrize("body", [
    b"Subject: nul\r\n\r\nbefore\x00after\r\n",
    b"Subject: nul\r\n\r\n\x00\r\n",
    b"Subject: nul\x00\r\n\r\nin a header\r\n",
], ids=["in-text", "alone", "in-header"])
def test_nul_in_data_refused_nothing_stored(dovecot, mxfront, body):
    mx = mxfront(dovecot)
    c, _ = smtp_session(mx)
    with c:
        r = send_message(c, body)
        assert (r.code, r.enhanced) == (554, "5.6.0"), r
        assert c.cmd("NOOP").code == 250
        r = send_message(c, b"Subject: clean\r\n\r\nok\r\n", rcpt="bob@dest.example")
        assert r.code == 250, r
    dovecot.wait_messages("bob", 1, timeout=10.0)
    assert dovecot.all_messages()["alice"] == []


def test_nul_in_data_never_reaches_the_backend(mxfront, fake_backend):
    fb = fake_backend()
    mx = mxfront(fb)
    c, _ = smtp_session(mx)
    with c:
        r = send_message(c, b"Subject: nul\r\n\r\n" + b"filler line\r\n" * 100 +
                         b"x\x00y\r\n" + b"more\r\n" * 100)
        assert (r.code, r.enhanced) == (554, "5.6.0"), r
    conn = fb.used[0]
    # A short message is held by mxfront until its end: refused before it,
    # it never reached the backend at all (no DATA), and the transaction
    # there is reset.
    wait_until(lambda: "RSET" in conn.commands, 5.0, "mxfront to drop the backend transaction")
    assert "DATA" not in conn.commands, conn.commands
    assert conn.messages == [] and b"\r\n.\r\n" not in bytes(conn.received)
    assert b"\x00" not in bytes(conn.received)


# ------------------------------------------------------------------ 8-bit

def test_8bit_in_commands_without_smtputf8(mxfront, fake_backend):
    fb = fake_backend()            # no SMTPUTF8: mxfront does not offer it
    mx = mxfront(fb)
    with SmtpClient("127.0.0.1", mx.port) as c:
        assert c.read_reply().code == 220
        wrong = check_table(c, [
            (b"EHLO h\xe9llo.example", 501, "5.5.4"),
            (b"HELO h\xc3\xa9llo.example", 501, "5.5.4"),
        ])
        hello = c.cmd("EHLO client.example")
        assert hello.code == 250 and "SMTPUTF8" not in hello.keywords, hello
        wrong += check_table(c, [
            (b"MAIL FROM:<\xff@client.example>", 553, "5.1.7"),
            (b"MAIL FROM:<j\xc3\xb6rg@client.example>", 553, "5.1.7"),
            (b"MAIL FROM:<sender@cli\xe9nt.example>", 553, "5.1.7"),
            (b"MAIL FROM:<sender@client.example> SMTPUTF8", 555, "5.5.4"),
            (b"MAIL FROM:<sender@client.example> SIZE=1\xff", 555, "5.5.4"),
            (b"NO\xffOP", 500, "5.5.2"),
            (b"\xff\xfe\xfd", 500, "5.5.2"),
            (b"MAIL FROM:<sender@client.example>", 250, None),
            (b"RCPT TO:<\xff@dest.example>", 553, "5.1.3"),
            (b"RCPT TO:<b\xc3\xb6b@dest.example>", 553, "5.1.3"),
            (b"RCPT TO:<bob@d\xc3\xa9st.example>", 553, "5.1.3"),
            (b"RCPT TO:<bob@dest.example>", 250, None),
        ])
        assert wrong == [], wrong
    [conn] = fb.used
    assert ascii_only(bytes(conn.received)), bytes(conn.received)


def test_8bit_addresses_need_the_smtputf8_parameter(mxfront, fake_backend):
    fb = fake_backend(capabilities=["PIPELINING", "ENHANCEDSTATUSCODES", "8BITMIME", "SMTPUTF8"])
    mx = mxfront(fb)
    c, hello = smtp_session(mx)
    with c:
        assert "SMTPUTF8" in hello.keywords, hello
        wrong = check_table(c, [
            (b"MAIL FROM:<j\xc3\xb6rg@client.example>", 553, "5.6.7"),
            (b"MAIL FROM:<\xff@client.example> SMTPUTF8", 553, "5.1.7"),        # not UTF-8
            (b"MAIL FROM:<\xc3\x28@client.example> SMTPUTF8", 553, "5.1.7"),    # bad sequence
            (b"MAIL FROM:<\xed\xa0\x80@client.example> SMTPUTF8", 553, "5.1.7"),  # surrogate
            (b"MAIL FROM:<\xc0\xaf@client.example> SMTPUTF8", 553, "5.1.7"),    # overlong
            (b"MAIL FROM:<sender@client.example> SMTPUTF8=yes", 501, "5.5.4"),
            (b"MAIL FROM:<sender@client.example>", 250, None),
            (b"RCPT TO:<b\xc3\xb6b@dest.example>", 553, "5.6.7"),
            (b"RSET", 250, None),
            (b"MAIL FROM:<j\xc3\xb6rg@client.example> SMTPUTF8", 250, None),
            (b"RCPT TO:<b\xc3\xb6b@dest.example>", 250, None),
        ])
        assert wrong == [], wrong
    [conn] = fb.used
    mails = [cmd for cmd in conn.commands if cmd.startswith("MAIL")]
    # Only the two valid MAILs were forwarded (the RSET dropped the first).
    assert mails == ["MAIL FROM:<sender@client.example>",
                     "MAIL FROM:<j\u00f6rg@client.example> SMTPUTF8"], mails


# ------------------------------------------------------- over-long lines

def test_overlong_command_500_then_resync(mxfront, fake_backend):
    mx = mxfront(fake_backend())
    c, _ = smtp_session(mx)
    with c:
        long_line = b"NOOP " + b"x" * 1995               # 2000 octets + CRLF
        # split over several writes: the framer must resume across reads
        for part in (long_line[:700], long_line[700:1400], long_line[1400:], b"\r\n"):
            c.send(part)
        r = c.read_reply()
        assert (r.code, r.enhanced) == (500, "5.5.2"), r
        r = c.cmd("NOOP")
        assert (r.code, r.enhanced) == (250, "2.0.0"), r
        # ended by a bare LF: still one 500, then back in sync
        c.send(b"MAIL FROM:<" + b"y" * 2000 + b"@client.example>\nNOOP\r\n")
        r = c.read_reply()
        assert (r.code, r.enhanced) == (500, "5.5.2"), r
        assert c.read_reply().code == 250
        # the over-long MAIL did not run
        assert c.cmd("MAIL FROM:<sender@client.example>").code == 250


def test_overlong_commands_repeated_keep_memory_flat(mxfront, fake_backend):
    mx = mxfront(fake_backend(), server={"max_errors": "1000"})
    c, _ = smtp_session(mx)
    line = b"VRFY " + b"z" * 1995 + b"\r\n"
    batch = 25

    def burst(n):
        for _ in range(n // batch):
            c.send(line * batch)
            for _ in range(batch):
                r = c.read_reply()
                assert (r.code, r.enhanced) == (500, "5.5.2"), r
    with c:
        burst(100)
        before = rss_kb(mx.pid)
        burst(800)
        after = rss_kb(mx.pid)
        assert c.cmd("NOOP").code == 250
    # 800 lines of 2 KB: a leak of the line would be 1.6 MB.
    slack = 4096 if SANITIZED else 512
    assert after - before < slack, f"RSS grew {after - before} KiB over 800 over-long commands"


def test_overlong_data_line_refused_nothing_relayed(mxfront, fake_backend):
    fb = fake_backend()
    mx = mxfront(fb)
    c, _ = smtp_session(mx)
    with c:
        r = send_message(c, b"Subject: long\r\n\r\n" + b"w" * 100_000 + b"\r\nend\r\n")
        assert (r.code, r.enhanced) == (554, "5.6.0"), r
        assert c.cmd("NOOP").code == 250
        r = send_message(c, b"Subject: short\r\n\r\n" + b"w" * 998 + b"\r\n")
        assert r.code == 250, r
    messages = [m for conn in fb.connections for m in conn.messages]
    assert len(messages) == 1 and b"Subject: short" in messages[0], messages
    assert all(b"w" * 1000 not in bytes(conn.received) for conn in fb.connections)


# --------------------------------------------- malformed paths and params

NINE = " ".join(["BODY=8BITMIME"] * 9)
BAD_MAIL = [
    ("MAIL FROM:<a@b.example> SIZE=abc", 501, "5.5.4"),
    ("MAIL FROM:<a@b.example> SIZE=-1", 501, "5.5.4"),
    ("MAIL FROM:<a@b.example> SIZE=99999999999999999999", 501, "5.5.4"),
    ("MAIL FROM:<a@b.example> SIZE=", 555, "5.5.4"),
    ("MAIL FROM:<a@b.example> SIZE", 501, "5.5.4"),
    ("MAIL FROM:<a@b.example>x", 501, "5.5.4"),
    ("MAIL FROM:<a@b.example> " + NINE, 555, "5.5.4"),
    ("MAIL FROM:<a@b.example> =x", 555, "5.5.4"),
    ("MAIL FROM:<a@b.example> BODY=BINARYMIME", 555, "5.5.4"),
    ("MAIL FROM:<a@b.example> BODY", 555, "5.5.4"),
    ("MAIL FROM:<a@@b.example>", 553, "5.1.7"),
    ("MAIL FROM:<a@b..example>", 553, "5.1.7"),
    ("MAIL FROM:<a@-b.example>", 553, "5.1.7"),
    ("MAIL FROM:<a@b-.example>", 553, "5.1.7"),
    ("MAIL FROM:<a@b.example.>", 553, "5.1.7"),
    ("MAIL FROM:<.a@b.example>", 553, "5.1.7"),
    ("MAIL FROM:<a..b@b.example>", 553, "5.1.7"),
    ("MAIL FROM:<a b@b.example>", 553, "5.1.7"),
    ('MAIL FROM:<"unterminated@b.example>', 553, "5.1.7"),
    ("MAIL FROM:<a@[1.2.3.4>", 553, "5.1.7"),
    ("MAIL FROM:<a@>", 553, "5.1.7"),
    ("MAIL FROM:<@a.example:>", 553, "5.1.7"),
    ("MAIL FROM:<a@" + "l" * 64 + ".example>", 553, "5.1.7"),
    ("MAIL FROM:<a@" + ("d" * 60 + ".") * 5 + "example>", 553, "5.1.7"),
    ("MAIL FROM:<a@b.example", 501, "5.5.4"),
    ("MAIL FROM:a@b.example", 501, "5.5.4"),
    ("MAIL FROM<a@b.example>", 501, "5.5.4"),
]
BAD_RCPT = [
    ("RCPT TO:<a@@b.example>", 553, "5.1.3"),
    ("RCPT TO:<>", 553, "5.1.3"),
    ("RCPT TO:<a@b.example>x", 501, "5.5.4"),
    ("RCPT TO: a@b.example", 501, "5.5.4"),
    ("RCPT TO:<a@b.example> NOTIFY=NEVER", 555, "5.5.4"),     # no DSN at the backend
    ("RCPT TO:<a@b.example> " + NINE, 555, "5.5.4"),
    ("RCPT TO:<a@" + "l" * 64 + ".example>", 553, "5.1.3"),
    ("RCPT TO:<a@b_c.example>", 553, "5.1.3"),
    ("RCPT FROM:<a@b.example>", 501, "5.5.4"),
]


def test_malformed_paths_and_parameters_get_5xx(mxfront, fake_backend):
    fb = fake_backend()
    mx = mxfront(fb, server={"max_errors": "100"})
    c, _ = smtp_session(mx)
    with c:
        wrong = check_table(c, [(line, code, enh) for line, code, enh in BAD_MAIL])
        assert c.cmd("MAIL FROM:<sender@client.example>").code == 250
        wrong += check_table(c, [(line, code, enh) for line, code, enh in BAD_RCPT])
        assert c.cmd("RCPT TO:<alice@dest.example>").code == 250
        assert wrong == [], "\n".join(map(str, wrong))
    [conn] = fb.used
    # (an RSET follows when the session ends with its transaction open)
    assert [c for c in conn.commands[1:] if c != "RSET"] == \
        ["MAIL FROM:<sender@client.example>", "RCPT TO:<alice@dest.example>"], conn.commands


# -------------------------------------------------------------------- TLS

@pytest.fixture
def certs_dir(tmp_path):
    """certs.d/ with one self-signed ECDSA certificate for HOSTNAME."""
    d = tmp_path / "certs.d"
    install_cert(d, "mx", make_cert(tmp_path / "scratch", [HOSTNAME], 0x501))
    return d


def tls_mx(mxfront, target, certs_dir, **overrides):
    return mxfront(target, tls={"certs_dir": str(certs_dir)},
                   timeouts={"command": "30s", "data": "30s", "handshake": "30s"}, **overrides)


def starttls(mx):
    c, hello = smtp_session(mx)
    assert "STARTTLS" in hello.keywords, hello
    r = c.cmd("STARTTLS")
    assert r.code == 220, r
    return c


def raw_drain(sock, timeout):
    """Reads the raw TCP stream until EOF or reset; returns (bytes, closed)."""
    data = b""
    sock.settimeout(timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = socket.socket.recv(sock, 65536)
        except socket.timeout:
            return data, False
        except ConnectionError:
            return data, True
        if not chunk:
            return data, True
        data += chunk
    return data, False


@pytest.mark.parametrize("garbage", [
    b"EHLO pretend.example\r\nMAIL FROM:<evil@x.example>\r\n",
    b"\x16\x03\x01\xff\xff" + b"\x00" * 64,          # record longer than TLS allows
    b"\x80\x2e\x01\x00\x02" + b"\x00" * 45,           # SSLv2-style hello
    bytes(range(256)) * 4,
], ids=["plaintext-smtp", "oversized-record", "sslv2-hello", "binary"])
def test_garbage_instead_of_client_hello(mxfront, fake_backend, certs_dir, garbage):
    mx = tls_mx(mxfront, fake_backend(), certs_dir)
    c = starttls(mx)
    with c:
        c.send(garbage)
        started = time.monotonic()
        data, closed = raw_drain(c.sock, 5.0)
        took = time.monotonic() - started
        assert closed, f"connection still open {took:.1f}s after garbage (handshake timeout 30s)"
        # At most a TLS alert record: no SMTP reply to the plaintext.
        assert data == b"" or data[:1] == b"\x15", data
    mx.wait_log(r"\bevent=tls_error\b")
    # The daemon is fine: a new client does a real handshake.
    c = starttls(mx)
    with c:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        c.sock = ctx.wrap_socket(c.sock, server_hostname=HOSTNAME)
        assert c.cmd("EHLO client.example").code == 250


@pytest.mark.parametrize("how", ["close_notify", "fatal-alert", "garbage-record"])
def test_tls_alert_mid_data_drops_the_message(mxfront, fake_backend, certs_dir, how):
    fb = fake_backend()
    mx = tls_mx(mxfront, fb, certs_dir)
    c = starttls(mx)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    c.sock = ctx.wrap_socket(c.sock, server_hostname=HOSTNAME)
    with c:
        assert c.cmd("EHLO client.example").code == 250
        open_transaction(c)
        # Longer than what mxfront holds: it is streamed to the backend.
        c.send(b"Subject: tls cut\r\n\r\n" + b"some text\r\n" * 6000)
        [conn] = wait_until(lambda: fb.used, 5.0, "a transaction at the backend")
        wait_until(lambda: b"some text" in bytes(conn.received), 5.0, "data at the backend")
        if how == "close_notify":
            c.sock = c.sock.unwrap()          # TCP stays open
        elif how == "fatal-alert":            # plaintext alert: fatal, handshake_failure
            socket.socket.sendall(c.sock, b"\x15\x03\x03\x00\x02\x02\x28")
        else:                                 # application data that decrypts to nothing
            socket.socket.sendall(c.sock, b"\x17\x03\x03\x00\x40" + b"\xaa" * 64)
        _, closed = raw_drain(c.sock, 5.0)
        assert closed, "connection open 5s after the TLS layer broke (data timeout 30s)"
    wait_until(conn.eof.is_set, 5.0, "mxfront to drop the backend transaction")
    assert conn.messages == [] and b"\r\n.\r\n" not in bytes(conn.received), \
        bytes(conn.received)[-200:]
    # closed because of the TLS layer (the TCP connection was still open)
    [m] = mx.wait_log(r'\bevent=disconnect\b.*\breason="([^"]*)"')
    reason = m.group(1)
    if how == "close_notify":
        assert reason == "client sent close_notify", m.string
    else:
        assert reason not in ("client closed", "timeout"), m.string

