"""Session tickets (issue 13 point 4): when the TLS 1.3 NewSessionTicket
leaves (after the client's Finished, never in the server's first flight:
the timing Microsoft's senders trip over), [tls] session_tickets globally,
per listener and per client network (no_tickets_for), and a ticket key file
shared by two instances (a fleet): a ticket issued by one resumes on the
other, and no longer once the key file changed and was reloaded."""
import os
import signal
import socket
import ssl

import pytest

import procs
import tlsclients
from smtpclient import SmtpClient


@pytest.fixture
def certs_dir(pki, tmp_path):
    return pki.install(tmp_path / "certs.d", ["default", "a"])


def _starttls_bio(port, source=None, tls13=True):
    """EHLO and STARTTLS, then a client TLS object over memory BIOs, its
    ClientHello sent. Returns (client, sslobj, incoming, outgoing)."""
    c = SmtpClient("127.0.0.1", port, source=source)
    assert c.read_reply().code == 220
    assert c.cmd("EHLO tickets.example").code == 250
    assert c.cmd("STARTTLS").code == 220
    ctx = tlsclients.client_context()
    if tls13:
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname="mx.a.example")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    c.sock.sendall(out.read())
    return c, obj, inc, out


def _drain(sock, inc, seconds):
    """Feeds whatever the server sends within SECONDS into INC."""
    sock.settimeout(seconds)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return
            inc.write(data)
    except socket.timeout:
        pass


def _has_ticket(obj):
    """Processes buffered records; True once a NewSessionTicket was read."""
    try:
        obj.read(1)
    except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
        pass
    s = obj.session
    return bool(s and s.has_ticket)


def ticket_timing(port, source=None):
    """(before, after): whether the client holds a ticket from what the
    server sent before it saw the client's Finished (the client's Finished
    is withheld for 0.5 s), and after it."""
    c, obj, inc, out = _starttls_bio(port, source)
    with c:
        c.sock.settimeout(10)
        while True:
            inc.write(c.sock.recv(65536))
            try:
                obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                c.sock.sendall(out.read())  # a second ClientHello after a HelloRetryRequest
        finished = out.read()  # the client's Finished: not sent yet
        _drain(c.sock, inc, 0.5)
        before = _has_ticket(obj)
        c.sock.sendall(finished)
        _drain(c.sock, inc, 0.5)
        after = _has_ticket(obj)
        return before, after


def test_new_session_ticket_leaves_after_the_clients_finished(mxfront, fake_backend, certs_dir):
    """GnuTLS 3.7 on its own sends the ticket of a full TLS 1.3 handshake
    with its Finished, before the client's ("early start" for
    unauthenticated sessions, lib/handshake-tls13.c), the timing that made
    Microsoft's senders drop STARTTLS against Go servers (golang/go#70232).
    mxfront sends it once the client's Finished is in, as OpenSSL does."""
    m = mxfront(fake_backend(), tls={"certs_dir": str(certs_dir)})
    before, after = ticket_timing(m.port)
    assert not before, "a NewSessionTicket came before the client's Finished"
    assert after, "no NewSessionTicket after the client's Finished"


# ---------------------------------------------------------------------------
# who gets tickets: [tls] session_tickets, per listener, per client network

def python_session(port, ctx, session=None, source=None, header=None):
    """One STARTTLS session with Python's ssl (optionally from SOURCE, or
    behind a PROXY HEADER): (resumed, the session to resume next time or
    None if no ticket came)."""
    c = SmtpClient("127.0.0.1", port, source=source)
    with c:
        if header:
            c.send(header)
        assert c.read_reply().code == 220
        assert c.cmd("EHLO tickets.example").code == 250
        tlsclients.python_starttls(c, sni="mx.a.example", context=ctx, session=session)
        assert c.cmd("EHLO tickets.example").code == 250  # the ticket arrives meanwhile
        s = c.sock.session
        result = (c.sock.session_reused, s if s is not None and s.has_ticket else None)
        c.cmd("QUIT")
    return result


def tls13_context():
    return tlsclients.client_context(minimum_version=ssl.TLSVersion.TLSv1_3)


@pytest.mark.parametrize("where", ["global", "listener"])
def test_session_tickets_off(mxfront, fake_backend, certs_dir, where):
    """[tls] session_tickets = no, or session_tickets=no on the listener:
    no NewSessionTicket at all (TLS 1.3), none in the TLS 1.2 handshake,
    and a full handshake every time."""
    if where == "global":
        m = mxfront(fake_backend(), tls={"certs_dir": str(certs_dir), "session_tickets": "no"})
    else:
        m = mxfront(fake_backend(), tls={"certs_dir": str(certs_dir)},
                    server={"listen": "127.0.0.1:0 session_tickets=no"})
    before, after = ticket_timing(m.port)
    assert not before and not after, "a ticket was sent"
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        ctx = tlsclients.client_context(minimum_version=version, maximum_version=version)
        _, session = python_session(m.port, ctx)
        assert session is None, f"{version.name}: got a ticket"
    m.wait_log(r"event=tls .* resumed=no tickets=no", count=3)


def test_session_tickets_per_listener_override_the_default(mxfront, fake_backend, certs_dir):
    m = mxfront(fake_backend(), tls={"certs_dir": str(certs_dir), "session_tickets": "no"},
                server={"listen": "127.0.0.1:0, 127.0.0.1:0 session_tickets=yes"})
    off, on = (int(a.rsplit(":", 1)[1]) for a in m.addresses)
    ctx = tls13_context()
    assert python_session(off, ctx)[1] is None
    reused, session = python_session(on, ctx)
    assert session is not None and not reused
    assert python_session(on, ctx, session)[0], "not resumed on the listener with tickets"


def test_no_tickets_for_a_client_network(mxfront, fake_backend, certs_dir):
    """no_tickets_for = 127.0.0.2/32 (one sender's network): that client
    gets no ticket, others do, and a ticket another client got is not
    honoured for it either."""
    m = mxfront(fake_backend(), tls={"certs_dir": str(certs_dir),
                                     "no_tickets_for": "127.0.0.2/32, 2001:db8::/32"})
    ctx = tls13_context()
    reused, session = python_session(m.port, ctx, source="127.0.0.3")
    assert session is not None
    before, after = ticket_timing(m.port, source="127.0.0.2")
    assert not before and not after, "127.0.0.2 got a ticket"
    reused, again = python_session(m.port, ctx, session, source="127.0.0.2")
    assert not reused and again is None, "a ticket was honoured for 127.0.0.2"
    assert python_session(m.port, ctx, session, source="127.0.0.3")[0]


def test_no_tickets_for_counts_the_proxy_headers_address(mxfront, fake_backend, certs_dir):
    import proxyproto
    m = mxfront(fake_backend(), tls={"certs_dir": str(certs_dir),
                                     "no_tickets_for": "203.0.113.0/24"},
                server={"listen": "127.0.0.1:0 proxy=v2", "proxy_trusted": "127.0.0.1"})
    _, session = python_session(m.port, tls13_context(),
                                header=proxyproto.v2("203.0.113.9", 4242))
    assert session is None, "203.0.113.9 (behind the load balancer) got a ticket"
    _, session = python_session(m.port, tls13_context(),
                                header=proxyproto.v2("198.51.100.9", 4242))
    assert session is not None, "198.51.100.9 got no ticket"


# ---------------------------------------------------------------------------
# a fleet: one ticket key file, several instances

def test_a_ticket_from_one_instance_resumes_on_another(mxfront, fake_backend, certs_dir,
                                                       tmp_path):
    """Two instances with the same ticket_key_file: a ticket issued by one
    resumes on the other (TLS 1.3 and 1.2). The key file changes and the
    second instance reloads: the old ticket gets a full handshake there, a
    new one works again. Two instances without a key file do not share."""
    key = tmp_path / "ticket.key"
    key.write_bytes(os.urandom(64))
    key.chmod(0o600)
    fb = fake_backend()
    tls = {"certs_dir": str(certs_dir), "ticket_key_file": str(key)}
    a, b = mxfront(fb, tls=tls), mxfront(fb, tls=tls)
    ids = {x.wait_log(r"event=ticket_key file=\S+ id=(\w+)")[0].group(1) for x in (a, b)}
    assert len(ids) == 1, ids
    for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
        ctx = tlsclients.client_context(minimum_version=version, maximum_version=version)
        reused, session = python_session(a.port, ctx)
        assert not reused and session is not None
        assert python_session(b.port, ctx, session)[0], f"{version.name}: not resumed on b"
    ctx = tls13_context()
    _, old = python_session(a.port, ctx)
    key.write_bytes(os.urandom(64))
    b.proc.send_signal(signal.SIGHUP)
    b.wait_log(r"event=reload result=ok")
    b.wait_log(r"event=ticket_key file=\S+ id=(?!" + ids.pop() + r")\w+")
    reused, new = python_session(b.port, ctx, old)
    assert not reused, "a ticket under the old key was accepted after the key file changed"
    assert python_session(b.port, ctx, new)[0], "a ticket under the new key did not resume"
    # without a key file each process has its own key
    c, d = mxfront(fb, tls={"certs_dir": str(certs_dir)}), mxfront(fb, tls={"certs_dir": str(certs_dir)})
    _, session = python_session(c.port, ctx)
    assert not python_session(d.port, ctx, session)[0], "two processes share a random key?"


def test_a_bad_ticket_key_file(mxfront, fake_backend, certs_dir, tmp_path):
    """A missing or short key file stops the start (and -t) naming it; a
    reload with one keeps the running generation and its key."""
    key = tmp_path / "ticket.key"
    conf = tmp_path / "t.conf"
    procs.write_config(conf, procs.mxfront_config(
        "127.0.0.1:24", {"tls": {"certs_dir": str(certs_dir), "ticket_key_file": str(key)}}))
    p = procs.run_mxfront("-t", "-c", str(conf))
    assert p.returncode == 1 and f"ticket_key_file: {key}: No such file or directory" in p.stderr, \
        p.stderr
    key.write_bytes(b"short")
    p = procs.run_mxfront("-t", "-c", str(conf))
    assert p.returncode == 1 and "5 bytes; a ticket key file holds 32 to 4096" in p.stderr, \
        p.stderr
    key.write_bytes(os.urandom(64))
    m = mxfront(fake_backend(), tls={"certs_dir": str(certs_dir), "ticket_key_file": str(key)})
    ctx = tls13_context()
    _, session = python_session(m.port, ctx)
    key.write_bytes(b"")
    m.proc.send_signal(signal.SIGHUP)
    m.wait_log(r"event=reload result=failed .*ticket_key_file: .* 0 bytes")
    assert python_session(m.port, ctx, session)[0], "the running key was lost"
