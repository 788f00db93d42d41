"""The rules of the backend connection pool (issue 11), one at a time,
against the scripted fake LMTP backend, which records every connection:
no backend connection before MAIL, reuse across sessions, connections in
doubt never reused, the queue's bound, a dead backend noticed once, and the
idle rules that keep a client from holding a slot forever. The floods
against a real Dovecot are in test_backend_pool.py."""
import re
import time

from smtpclient import attempt_delivery, open_transaction, smtp_session
from waits import closed_port_address, wait_until

SMALL = b"Subject: pool\r\n\r\nbody\r\n"


def ready(mxfront, fb, **overrides):
    """One worker whose pool has learnt the backend's capabilities."""
    overrides.setdefault("server", {}).setdefault("workers", "1")
    mx = mxfront(fb, **overrides)
    mx.wait_log(r"\bevent=backend_ready\b")
    return mx


def test_sessions_without_mail_cost_the_backend_nothing(mxfront, fake_backend):
    """EHLO, HELO, NOOP, RSET, VRFY and QUIT from many sessions: the backend
    sees only the pool's own start-up connection, and EHLO still offers what
    the backend offers (answered from the pool's cache)."""
    fb = fake_backend(capabilities=["PIPELINING", "ENHANCEDSTATUSCODES", "8BITMIME", "DSN"])
    mx = ready(mxfront, fb)
    for i in range(20):
        c, hello = smtp_session(mx, helo=f"idle{i}.example", ehlo=i % 2 == 0)
        with c:
            assert hello.code == 250
            if i % 2 == 0:
                assert "DSN" in {k.split()[0] for k in hello.keywords}, hello
            for cmd in ("NOOP", "RSET", "VRFY postmaster", "QUIT"):
                assert c.cmd(cmd).code // 100 == 2
    assert len(fb.connections) == 1, [c.commands for c in fb.connections]
    assert fb.connections[0].commands == ["LHLO mx.test.example"]


def test_ehlo_does_not_wait_for_a_silent_backend(mxfront, fake_backend):
    """A backend that never greets delays nobody's EHLO (it used to take the
    whole connect timeout)."""
    fb = fake_backend(greeting=None)
    mx = mxfront(fb, server={"workers": "1"}, backend={"connect_timeout": "5s"})
    t0 = time.monotonic()
    c, hello = smtp_session(mx)
    with c:
        took = time.monotonic() - t0
        assert hello.code == 250 and took < 1.0, (hello, took)


def test_one_connection_serves_sessions_in_turn(mxfront, fake_backend):
    fb = fake_backend()
    mx = ready(mxfront, fb)
    for i in range(5):
        a = attempt_delivery(mx.port, ["r1@dest.example"], SMALL)
        assert a.final.code == 250, a
    assert len(fb.connections) == 1, "every transaction reused the pooled connection"
    assert len(fb.connections[0].messages) == 5


def test_refused_rset_closes_the_connection(mxfront, fake_backend):
    """A transaction given back at a command boundary is reset; a backend that
    refuses the RSET is in doubt: that connection is closed, the next
    transaction gets a new one."""
    fb = fake_backend(rset_reply="421 4.3.0 confused")
    mx = ready(mxfront, fb)
    c, _ = smtp_session(mx)
    with c:
        assert c.cmd("MAIL FROM:<a@client.example>").code == 250
        assert c.cmd("RCPT TO:<r1@dest.example>").code == 250
        assert c.cmd("RSET").code == 250
    wait_until(lambda: fb.connections[0].eof.is_set(), 5.0, "the refused connection to close")
    mx.wait_log(r'\bevent=backend_error\b.*\bstage=reset\b.*\breason="RSET refused"')
    a = attempt_delivery(mx.port, ["r1@dest.example"], SMALL)
    assert a.final.code == 250, a
    assert len(fb.connections) == 2 and len(fb.connections[1].messages) == 1


def test_busy_pool_queues_then_451_4_3_2(mxfront, fake_backend):
    """max_connections 1: a message being streamed (longer than mxfront holds
    back, then stalled) keeps the only connection; another client's MAIL
    waits queue_timeout, then gets 451 4.3.2 and a log line. When the first
    ends, the next client is served by that same connection."""
    fb = fake_backend()
    mx = ready(mxfront, fb, backend={"max_connections": "1", "queue_timeout": "1s"})
    holder = open_transaction(mx, "r1@dest.example", sender="a@client.example",
                              helo="holder.example")
    with holder:
        holder.send(b"Subject: big\r\n\r\n" + b"x" * 70 + b"\r\n" * 1 + b"line\r\n" * 12000)
        wait_until(lambda: b"line\r\n" in bytes(fb.connections[0].received), 5.0, "streaming")
        c, _ = smtp_session(mx)
        with c:
            t0 = time.monotonic()
            r = c.cmd("MAIL FROM:<b@client.example>")
            took = time.monotonic() - t0
            assert (r.code, r.enhanced) == (451, "4.3.2"), r
            assert 0.8 <= took <= 3.0, took
        mx.wait_log(r"\bevent=limit kind=backend_queue\b")
        holder.send(b".\r\n")
        assert holder.read_reply().code == 250
    a = attempt_delivery(mx.port, ["r1@dest.example"], SMALL)
    assert a.final.code == 250, a
    assert len(fb.connections) == 1


def test_dead_backend_is_noticed_once(mxfront):
    """Nothing listens: the first attempt marks the backend down, and the
    sessions that follow within the backoff get 451 4.4.1 at once, without a
    connection attempt (and a log line) each."""
    mx = mxfront(closed_port_address(), server={"workers": "1"})
    mx.wait_log(r"\bevent=backend_down\b")
    for _ in range(10):
        t0 = time.monotonic()
        a = attempt_delivery(mx.port, ["r1@dest.example"], SMALL)
        assert a.steps[-1][0] == "mail" and (a.final.code, a.final.enhanced) == (451, "4.4.1"), a
        assert time.monotonic() - t0 < 1.0
    errors = len(re.findall(r"event=backend_error", mx.log()))
    # one per try of the pool (backoff 0.25 s doubling), not one per session
    assert errors <= 6, mx.log()
    assert len(re.findall(r"event=backend_down", mx.log())) == 1


def test_silent_client_gives_its_connection_back(mxfront, fake_backend):
    """A client that stops for a while inside its transaction does not keep
    the connection: it is reset and lent to the next client (max_connections
    1 here), and when the silent one goes on, its MAIL and RCPT are said
    again on whatever connection it gets, and its message is delivered."""
    fb = fake_backend()
    mx = ready(mxfront, fb, backend={"max_connections": "1"})
    slow, _ = smtp_session(mx, helo="slow.example")
    with slow:
        assert slow.cmd("MAIL FROM:<slow@client.example>").code == 250
        assert slow.cmd("RCPT TO:<r1@dest.example>").code == 250
        wait_until(lambda: "RSET" in fb.connections[0].commands, 5.0, "the slow one's RSET")
        a = attempt_delivery(mx.port, ["r2@dest.example"], SMALL)
        assert a.final.code == 250, a
        assert slow.cmd("RCPT TO:<r3@dest.example>").code == 250
        assert slow.cmd("DATA").code == 354
        slow.send(b"Subject: slow\r\n\r\nlate\r\n.\r\n")
        assert slow.read_reply().code == 250
    [conn] = fb.connections
    mails = [c for c in conn.commands if c.startswith("MAIL")]
    assert mails == ["MAIL FROM:<slow@client.example>", "MAIL FROM:<sender@client.example>",
                     "MAIL FROM:<slow@client.example>"], conn.commands
    rcpts = [c for c in conn.commands if c.startswith("RCPT")]
    assert rcpts == ["RCPT TO:<r1@dest.example>", "RCPT TO:<r2@dest.example>",
                     "RCPT TO:<r1@dest.example>", "RCPT TO:<r3@dest.example>"], conn.commands
    assert len(conn.messages) == 2 and conn.messages[1].endswith(b"\r\nlate\r\n.\r\n")


def test_idle_session_is_closed_whatever_it_says(mxfront, fake_backend):
    """[timeouts] idle: a session that keeps itself busy without mail (NOOP,
    EHLO) is still closed with 421 4.4.2 once it had no transaction that
    long."""
    mx = mxfront(fake_backend(), timeouts={"idle": "2s"}, server={"max_junk_commands": "1000"})
    c, _ = smtp_session(mx)
    with c:
        t0 = time.monotonic()
        while True:
            r = c.cmd("NOOP")
            if r.code != 250:
                break
            assert time.monotonic() - t0 < 5.0, "never closed"
            time.sleep(0.2)
        took = time.monotonic() - t0
        assert (r.code, r.enhanced) == (421, "4.4.2"), r
        assert 1.7 <= took <= 3.5, took
        assert c.wait_closed(5.0)
    mx.wait_log(r"\bevent=timeout state=idle\b")


def test_ehlo_again_and_again_is_junk(mxfront, fake_backend):
    mx = mxfront(fake_backend(), server={"max_junk_commands": "3"})
    c, hello = smtp_session(mx)
    with c:
        assert hello.code == 250
        codes = [c.cmd("EHLO again.example").code for _ in range(4)]
        assert codes == [250, 250, 250, 421], codes
        assert c.wait_closed(5.0)
    mx.wait_log(r"\bevent=junk_limit\b")
