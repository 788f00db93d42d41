"""TLS edge cases answered properly (issue 13 point 5): a TLS 1.2
renegotiation attempt gets a no_renegotiation alert and the session goes on;
a ClientHello larger than mxfront takes gets an alert and a close at once,
not silence until the handshake timeout; the largest one taken is."""
import os
import re
import struct
import subprocess
import time

import pytest

from smtpclient import SmtpClient

# The largest ClientHello mxfront takes (server/tls.c TLS_HELLO_MAX): a
# handshake message of 16 KiB with its 4-byte header, one full record; this
# is the size of its body.
HELLO_MAX = 16 * 1024 - 4


@pytest.fixture
def certs_dir(pki, tmp_path):
    return pki.install(tmp_path / "certs.d", ["default", "a"])


def client_hello(size, record_max=16384):
    """A TLS 1.3 ClientHello (TLS 1.2 offered too) whose handshake body is
    SIZE bytes (a padding extension makes up the rest), cut into records of
    at most RECORD_MAX bytes as a real client does (RFC 8446 5.1: a
    handshake message may span records). Its key share is a real X25519
    public key shape (any 32 bytes are one)."""
    def ext(kind, data):
        return struct.pack("!HH", kind, len(data)) + data

    exts = (ext(0, struct.pack("!HBH", 15, 0, 12) + b"mx.a.example")  # server_name
            + ext(43, b"\x04\x03\x04\x03\x03")                       # supported_versions
            + ext(10, b"\x00\x04\x00\x1d\x00\x17")                   # x25519, secp256r1
            + ext(13, b"\x00\x06\x04\x03\x08\x04\x04\x01")           # signature algorithms
            + ext(51, struct.pack("!HHH", 36, 0x1d, 32) + os.urandom(32))  # key_share
            + ext(45, b"\x01\x01"))                                  # psk_dhe_ke
    body = (b"\x03\x03" + os.urandom(32) + b"\x20" + os.urandom(32)
            + b"\x00\x08\x13\x01\x13\x02\xc0\x2b\xc0\x2f" + b"\x01\x00")
    fixed = len(body) + 2 + len(exts) + 4  # + extensions length + padding header
    pad = size - fixed
    assert pad >= 0, f"a ClientHello of {size} bytes is too small for its extensions"
    exts += ext(21, b"\x00" * pad)
    body += struct.pack("!H", len(exts)) + exts
    assert len(body) == size
    msg = b"\x01" + struct.pack("!I", size)[1:] + body
    out = b""
    for i in range(0, len(msg), record_max):
        frag = msg[i:i + record_max]
        out += b"\x16\x03\x01" + struct.pack("!H", len(frag)) + frag
    return out


def records(data):
    """(content type, payload) of each whole TLS record in data."""
    out, i = [], 0
    while i + 5 <= len(data):
        n = struct.unpack("!H", data[i + 3:i + 5])[0]
        if i + 5 + n > len(data):
            break
        out.append((data[i], data[i + 5:i + 5 + n]))
        i += 5 + n
    return out


def send_hello(port, hello, wait=5.0):
    """STARTTLS, then HELLO; returns (what came back, seconds until the
    server closed or None if it was still open after WAIT)."""
    c = SmtpClient("127.0.0.1", port)
    with c:
        assert c.read_reply().code == 220
        assert c.cmd("EHLO big.example").code == 250
        assert c.cmd("STARTTLS").code == 220
        t0 = time.monotonic()
        try:
            c.sock.sendall(hello)
        except (BrokenPipeError, ConnectionResetError):
            pass
        closed = c.wait_closed(wait)
        return c.buf, (time.monotonic() - t0) if closed else None


@pytest.mark.parametrize("size", [40 * 1024, 65000, HELLO_MAX + 1])
def test_too_large_client_hello_gets_an_alert_and_a_close_at_once(mxfront, fake_backend,
                                                                  certs_dir, size):
    """Tried before issue 13: 40 KB and 65 KB ClientHellos got no answer and
    held the session until the handshake timeout."""
    m = mxfront(fake_backend(), tls={"certs_dir": str(certs_dir)},
                timeouts={"handshake": "30s"})
    got, closed_after = send_hello(m.port, client_hello(size))
    assert closed_after is not None and closed_after < 3.0, \
        f"session still open {closed_after}s after a {size}-byte ClientHello: {got[:60]!r}"
    recs = records(got)
    assert recs and recs[0][0] == 21 and recs[0][1][0] == 2, \
        f"no fatal alert for a {size}-byte ClientHello: {got[:60]!r}"
    m.wait_log(r"event=tls_error .*reason=")


@pytest.mark.parametrize("size,record_max", [(HELLO_MAX, 16384), (HELLO_MAX, 4000),
                                             (2000, 300)])
def test_client_hello_taken_whole_or_in_pieces(mxfront, fake_backend, certs_dir, size,
                                                record_max):
    """The largest ClientHello taken, in one record or in several, and a
    common-sized one cut into small records, is answered with a (retry)
    ServerHello. Before issue 13 a ClientHello spanning records got no
    answer at all when its records arrived together: GnuTLS takes one
    record per call and mxfront did not call it again."""
    m = mxfront(fake_backend(), tls={"certs_dir": str(certs_dir)})
    c = SmtpClient("127.0.0.1", m.port)
    with c:
        assert c.read_reply().code == 220
        assert c.cmd("EHLO big.example").code == 250
        assert c.cmd("STARTTLS").code == 220
        c.sock.sendall(client_hello(size, record_max))
        c.sock.settimeout(5)
        got = b""
        while not records(got):
            chunk = c.sock.recv(65536)
            assert chunk, f"closed after {got!r}"
            got += chunk
        kind, payload = records(got)[0]
        assert (kind, payload[0]) == (22, 2), f"not a ServerHello: {got[:60]!r}"


def test_tls12_renegotiation_gets_no_renegotiation(mxfront, fake_backend, certs_dir):
    """openssl s_client over TLS 1.2 asks for renegotiation (its `R`
    command): mxfront answers with the no_renegotiation warning (RFC 5246
    7.2.2), which OpenSSL then takes as fatal. Before issue 13 the session
    was closed with no alert at all."""
    m = mxfront(fake_backend(), tls={"certs_dir": str(certs_dir)})
    script = ("sleep 1; printf 'R\\n'; sleep 1; printf 'NOOP\\r\\n'; sleep 1")
    p = subprocess.run(
        f"({script}) | openssl s_client -starttls smtp -connect 127.0.0.1:{m.port} "
        "-tls1_2 -msg -crlf -servername mx.a.example", shell=True, capture_output=True,
        timeout=30)
    out = (p.stdout + p.stderr).decode(errors="replace")
    assert "RENEGOTIATING" in out, out[-2000:]
    # -msg's trace (stdout): what the client received after its new ClientHello
    trace = p.stdout.decode(errors="replace").split("ClientHello")[-1]
    assert re.search(r"<<< TLS 1\.2, Alert \[length 0002\], warning no_renegotiation", trace), \
        out[-3000:]
    m.wait_log(r"event=tls_renegotiation action=refused")
    m.wait_log(r'event=disconnect client=127\.0\.0\.1 reason="renegotiation refused"')
