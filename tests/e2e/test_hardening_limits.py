"""Resource limits under abuse: connection limits (total, per address, per
minute), error and junk-command limits, recipients and message size, the
greeting delay against early talkers, command and data timeouts against slow
clients, and memory under a pipelined flood whose replies are never read."""
import select
import signal
import socket
import time

import pytest

from procs import rss_kb, sanitized_build, tcp_queues
from smtpclient import ConnectionClosed, SmtpClient, open_transaction, smtp_session
from waits import wait_until

SANITIZED = sanitized_build()
# Memory a session may add at most, whatever the client does (DESIGN.md,
# promise 5). An ASan build keeps freed blocks in quarantine: more slack.
RSS_SLACK_KB = (64 if SANITIZED else 20) * 1024


def greeted(mx, source=None):
    c = SmtpClient("127.0.0.1", mx.port, source=source)
    r = c.read_reply()
    return c, r


def assert_refused_421(mx, source=None, words=""):
    c, r = greeted(mx, source)
    with c:
        assert (r.code, r.enhanced) == (421, "4.7.0"), r
        assert words in r.text, r
        assert c.wait_closed(5.0), "refused connection left open"
        assert c.buf == b"", f"more after the 421: {c.buf!r}"


# ------------------------------------------------------------ connections

def test_max_clients_refuses_the_n_plus_first(mxfront, fake_backend):
    mx = mxfront(fake_backend(), server={"max_clients": "3", "max_clients_per_ip": "0"})
    clients = []
    try:
        for _ in range(3):
            c, r = greeted(mx)
            clients.append(c)
            assert r.code == 220, r
        assert_refused_421(mx, words="Too many connections")
        mx.wait_log(r"\bevent=limit kind=max_clients\b")
        # The three admitted ones are unaffected.
        for c in clients:
            assert c.cmd("NOOP").code == 250
        assert clients[0].cmd("QUIT").code == 221
        clients.pop(0).close()

        def a_fourth_is_admitted():
            c, r = greeted(mx)
            if r.code == 220:
                clients.append(c)
                return True
            c.close()
            return False
        wait_until(a_fourth_is_admitted, 5.0, "a slot to free up after one client left")
    finally:
        for c in clients:
            c.close()


def test_max_clients_per_ip_counts_each_address_apart(mxfront, fake_backend):
    mx = mxfront(fake_backend(), server={"max_clients_per_ip": "2"})
    held = []
    try:
        for source in ("127.0.0.2", "127.0.0.3"):
            for _ in range(2):
                c, r = greeted(mx, source)
                held.append(c)
                assert r.code == 220, (source, str(r))
            assert_refused_421(mx, source, words="from your address")
        mx.wait_log(r"\bevent=limit kind=max_clients_per_ip\b", count=2)
        # A third address is not affected by the other two.
        c, r = greeted(mx, "127.0.0.4")
        held.append(c)
        assert r.code == 220, r
        # One of 127.0.0.2's sessions ends: 127.0.0.2 gets a slot again.
        assert held[0].cmd("QUIT").code == 221
        held.pop(0).close()

        def admitted_again():
            c, r = greeted(mx, "127.0.0.2")
            if r.code == 220:
                held.append(c)
                return True
            c.close()
            return False
        wait_until(admitted_again, 5.0, "127.0.0.2 to be admitted after one of its sessions ended")
    finally:
        for c in held:
            c.close()


def test_max_connection_rate_is_per_address(mxfront, fake_backend):
    mx = mxfront(fake_backend(), server={"max_connection_rate": "3"})
    for _ in range(3):
        c, r = greeted(mx, "127.0.0.2")
        with c:
            assert r.code == 220, r
            assert c.cmd("QUIT").code == 221
    # Sequential, never concurrent: it is the rate, not the count.
    assert_refused_421(mx, "127.0.0.2", words="per minute")
    mx.wait_log(r"\bevent=limit kind=max_connection_rate\b")
    c, r = greeted(mx, "127.0.0.3")
    with c:
        assert r.code == 220, r


# ----------------------------------------------------- errors and junk

def test_max_errors_counts_every_kind_of_error(mxfront, fake_backend):
    mx = mxfront(fake_backend(), server={"max_errors": "5"})
    c, _ = smtp_session(mx)
    errors = [("MAIL FROM:bad", 501), ("RCPT TO:<alice@dest.example>", 503),
              (b"NOOP\x00", 500), ("MAIL FROM:<a@b.example> FOO=1", 555), ("EHLO", 501),
              ("DATA x", 501)]
    with c:
        made = 0
        for line, code in errors:
            assert c.cmd("NOOP").code == 250   # successes in between reset nothing
            r = c.cmd(line)
            made += 1
            assert r.code == code, (line, str(r))
            # from the 5th error on, the 421 follows that error's reply
            if made >= 5 and c.wait_closed(0.3):
                break
        # 421 after the 5th error (or at the latest the 6th), then closed.
        assert c.closed and made in (5, 6), f"still open after {made} errors"
        bye = c.read_reply()
        assert (bye.code, bye.enhanced) == (421, "4.7.0"), bye
    mx.wait_log(r"\bevent=error_limit\b")


def test_max_junk_commands_then_421(mxfront, fake_backend):
    mx = mxfront(fake_backend(), server={"max_junk_commands": "5"})
    c, _ = smtp_session(mx)
    with c:
        for line, code in (("NOOP", 250), ("VRFY alice", 252), ("HELP", 214), ("RSET", 250),
                           ("FROBNICATE", 500)):
            r = c.cmd(line)
            assert r.code == code, (line, str(r))
        # Mail moving forward is not junk, nor RSET inside a transaction.
        assert c.cmd("MAIL FROM:<sender@client.example>").code == 250
        assert c.cmd("RSET").code == 250
        r = c.cmd("NOOP")
        assert (r.code, r.enhanced) == (421, "4.7.0"), r
        assert c.wait_closed(5.0)
    mx.wait_log(r"\bevent=junk_limit\b")


def test_max_recipients_452_and_backend_sees_only_the_allowed(mxfront, fake_backend):
    fb = fake_backend()
    mx = mxfront(fb, server={"max_recipients": "3"})
    c, _ = smtp_session(mx)
    with c:
        c.send(b"MAIL FROM:<sender@client.example>\r\n" +
               b"".join(b"RCPT TO:<r%d@dest.example>\r\n" % i for i in range(6)) + b"DATA\r\n")
        replies = [c.read_reply() for _ in range(8)]
        assert [r.code for r in replies] == [250, 250, 250, 250, 452, 452, 452, 354], \
            [str(r) for r in replies]
        assert all(r.enhanced == "4.5.3" for r in replies[4:7]), [str(r) for r in replies]
        c.send(b"Subject: three\r\n\r\nx\r\n.\r\n")
        assert c.read_reply().code == 250
    [conn] = fb.used
    rcpts = [cmd for cmd in conn.commands if cmd.upper().startswith("RCPT")]
    assert rcpts == [f"RCPT TO:<r{i}@dest.example>" for i in range(3)], rcpts
    assert len(conn.messages) == 1


# ------------------------------------------------------------ message size

def body_of(size):
    """A message of exactly size octets as counted on the wire (lines with
    their CRLF, final dot excluded)."""
    head = b"Subject: size\r\n\r\n"
    rest = size - len(head)
    lines = []
    while rest > 0:
        n = min(rest, 1000)
        if rest - n == 1:      # never leave a 1-octet line: CRLF needs 2
            n -= 1
        lines.append(b"a" * (n - 2) + b"\r\n")
        rest -= n
    msg = head + b"".join(lines)
    assert len(msg) == size
    return msg


def test_max_message_size_boundary_declared_and_streamed(mxfront, fake_backend):
    fb = fake_backend()
    mx = mxfront(fb, server={"max_message_size": "1k"})
    c, hello = smtp_session(mx)
    with c:
        assert "SIZE 1024" in hello.keywords, hello
        r = c.cmd("MAIL FROM:<sender@client.example> SIZE=1025")
        assert (r.code, r.enhanced) == (552, "5.3.4"), r
        # declared at the limit and sent; then sent one octet over, undeclared
        for size, mail, want in ((1024, " SIZE=1024", (250, "2.0.0")),
                                 (1025, "", (552, "5.3.4"))):
            assert c.cmd("MAIL FROM:<sender@client.example>" + mail).code == 250
            assert c.cmd("RCPT TO:<alice@dest.example>").code == 250
            assert c.cmd("DATA").code == 354
            c.send(body_of(size) + b".\r\n")
            r = c.read_reply()
            assert (r.code, r.enhanced) == want, (size, str(r))
    # exactly one message reached the backend: the 1024-octet one
    messages = [m for conn in fb.connections for m in conn.messages]
    assert len(messages) == 1 and messages[0].endswith(body_of(1024) + b".\r\n"), messages


def test_huge_streamed_message_refused_with_bounded_memory(mxfront, fake_backend):
    fb = fake_backend()
    mx = mxfront(fb, server={"max_message_size": "1M"})
    base = rss_kb(mx.pid)
    c = open_transaction(mx)
    with c:
        line = b"b" * 998 + b"\r\n"
        chunk = line * 256
        peak = base
        for _ in range(128):                    # 32 MB
            c.send(chunk)
            peak = max(peak, rss_kb(mx.pid))
        c.send(b".\r\n")
        c.sock.settimeout(10)
        r = c.read_reply()
        assert (r.code, r.enhanced) == (552, "5.3.4"), r
        assert c.cmd("NOOP").code == 250
    assert peak - base < RSS_SLACK_KB, f"RSS grew {peak - base} KiB for a 32 MB message"
    assert all(conn.messages == [] for conn in fb.connections)
    assert all(b"\r\n.\r\n" not in bytes(conn.received) for conn in fb.connections)


# ------------------------------------------------------- greeting delay

def test_greeting_delay_early_talker_554_polite_client_served(mxfront, fake_backend):
    mx = mxfront(fake_backend(), server={"greeting_delay": "1s"})
    started = time.monotonic()
    polite = SmtpClient("127.0.0.1", mx.port)
    early = SmtpClient("127.0.0.1", mx.port)
    with polite, early:
        early.send(b"EHLO early.example\r\n")
        r = early.read_reply()
        assert (r.code, r.enhanced) == (554, "5.5.0"), r
        assert early.wait_closed(5.0), "early talker left connected"
        assert early.buf == b"", f"early talker got more: {early.buf!r}"
        greeting = polite.read_reply()
        waited = time.monotonic() - started
        assert greeting.code == 220, greeting
        assert waited >= 0.9, f"greeting after {waited:.2f}s, greeting_delay is 1s"
        assert polite.cmd("EHLO polite.example").code == 250
        assert polite.cmd("MAIL FROM:<sender@client.example>").code == 250
    mx.wait_log(r"\bevent=early_talker\b")


# --------------------------------------------------------------- timeouts

def test_command_timeout_is_not_reset_by_a_byte_dribble(mxfront, fake_backend):
    """Slowloris: one byte every 0.3 s of a command that never ends. The
    command timeout (2 s here) runs from the last complete command, so the
    client is dropped with 421 4.4.2 about 2 s later, not kept forever."""
    mx = mxfront(fake_backend(), timeouts={"command": "2s"})
    c, _ = smtp_session(mx)
    with c:
        started = time.monotonic()
        c.send(b"MAIL FROM:<")
        reply = None
        while time.monotonic() - started < 4.0:
            readable, _, _ = select.select([c.sock], [], [], 0.3)
            if readable:
                try:
                    reply = c.read_reply()
                except (ConnectionClosed, OSError):
                    pass
                break
            try:
                c.send(b"a")
            except OSError:
                break
        elapsed = time.monotonic() - started
        assert reply is not None, \
            f"still connected after {elapsed:.1f}s of one byte per 0.3s (command timeout 2s)"
        assert (reply.code, reply.enhanced) == (421, "4.4.2"), reply
        assert 1.7 <= elapsed <= 3.0, f"dropped after {elapsed:.2f}s, command timeout is 2s"
        assert c.wait_closed(5.0)
    mx.wait_log(r"\bevent=timeout state=command\b")


def test_data_timeout_drops_the_message(dovecot, mxfront):
    mx = mxfront(dovecot, timeouts={"data": "1s"})
    c = open_transaction(mx)
    with c:
        c.send(b"Subject: stalled\r\n\r\nthen nothing\r\n")
        started = time.monotonic()
        c.sock.settimeout(6.0)
        r = c.read_reply()
        elapsed = time.monotonic() - started
        assert (r.code, r.enhanced) == (421, "4.4.2"), r
        assert 0.8 <= elapsed <= 2.5, f"421 after {elapsed:.2f}s, data timeout is 1s"
        assert c.wait_closed(5.0)
    mx.wait_log(r"\bevent=timeout state=data\b")
    mx.wait_log(r"\bevent=disconnect\b")
    assert dovecot.all_messages() == {"alice": [], "bob": [], "carol": []}


# --------------------------------------------------------- pipelined flood

def flood(sock, line, total, stall=0.3):
    """Writes line repeatedly, without reading, until total bytes are sent,
    the peer stops taking them for stall seconds, or the connection breaks.
    Returns (bytes sent, "done" | "stalled" | "cut")."""
    chunk = line * (65536 // len(line))
    sent = 0
    sock.setblocking(False)
    try:
        while sent < total:
            try:
                sent += sock.send(chunk[:total - sent])
            except BlockingIOError:
                _, writable, _ = select.select([], [sock], [], stall)
                if not writable:
                    return sent, "stalled"
            except OSError:
                return sent, "cut"
        return sent, "done"
    finally:
        sock.setblocking(True)


def flooder(mx):
    """A client with a tiny receive window, greeted."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(10.0)
    s.connect(("127.0.0.1", mx.port))
    assert s.recv(100).startswith(b"220 ")
    return s


def assert_served_promptly(mx):
    started = time.monotonic()
    c, _ = smtp_session(mx, helo="bystander.example")
    with c:
        r = c.cmd("NOOP")
        assert r.code == 250, r
    took = time.monotonic() - started
    assert took < 1.0, f"another client waited {took:.2f}s during the flood"


@pytest.mark.parametrize("junk", [None, "100000"], ids=["default-junk-limit", "junk-100000"])
def test_noop_flood_is_cut_by_the_junk_limit(mxfront, fake_backend, junk):
    mx = mxfront(fake_backend(), server={"max_junk_commands": junk} if junk else {})
    limit = int(junk or 100)
    base = rss_kb(mx.pid)
    s = flooder(mx)
    with s:
        sent, how = flood(s, b"NOOP\r\n", 5 * 1024 * 1024)
        # A daemon that stopped reading without closing would stall us.
        assert how != "stalled", f"stalled after {sent} bytes: not cut"
        # Cut by the daemon: either the flood itself failed, or it shows now
        # (the 421 itself is usually lost: the kernel resets a connection
        # closed with unread input).
        closed = how == "cut"
        s.settimeout(5.0)
        while not closed:
            try:
                closed = not s.recv(65536)
            except ConnectionError:
                closed = True
            except socket.timeout:
                break
        assert closed, f"flooder still connected after {sent} bytes of NOOP"
    mx.wait_log(rf"\bevent=junk_limit commands={limit + 1}\b")
    mx.wait_log(r'\bevent=disconnect\b.*reason="junk_limit"')
    assert rss_kb(mx.pid) - base < RSS_SLACK_KB
    assert_served_promptly(mx)


def settled_queues(port, peer_port, timeout=5.0, looks=10):
    """The daemon-side socket queues once they stop changing: LOOKS polls in
    a row (wait_until polls every waits.POLL seconds: 0.2 s) agree."""
    seen = {"value": None, "same": 0}

    def settled():
        now = tcp_queues(port, peer_port)
        seen["same"] = seen["same"] + 1 if now is not None and now == seen["value"] else 0
        seen["value"] = now
        return now if seen["same"] >= looks else None
    return wait_until(settled, timeout, "the daemon's socket queues to settle")


@pytest.mark.parametrize("line,server", [
    (b"EHLO flood.example\r\n", {"max_junk_commands": "100000"}),  # EHLO again is junk
    (b"HELP\r\n", {"max_junk_commands": "100000"}),
], ids=["EHLO", "HELP-junk-100000"])
def test_unread_replies_stop_reading_and_memory_stays_bounded(mxfront, fake_backend, line,
                                                              server):
    """A client pipelines commands and never reads a reply: once its replies
    back up, the daemon stops reading it (its socket's receive queue stays
    full, the client's writes block), its memory stays bounded and other
    clients are served all along."""
    mx = mxfront(fake_backend(), server=server)
    base = rss_kb(mx.pid)
    s = flooder(mx)
    with s:
        # Let the first command reach the backend hello, so the rest is local.
        total = 16 * 1024 * 1024
        sent, how = flood(s, line, total)
        assert how == "stalled", f"{how} after {sent} bytes: the daemon never pushed back"
        me = s.getsockname()[1]
        # The kernel may still grow the client's receive window a little
        # after the first stall (TCP autotuning), letting some replies out
        # and the daemon read on; once both ends are full, nothing moves.
        q1 = settled_queues(mx.port, me)
        assert_served_promptly(mx)
        q2 = tcp_queues(mx.port, me)
        assert q1 and q2 and q1[1] > 0 and q1[1] == q2[1], \
            f"daemon-side receive queue {q1} then {q2}: the daemon kept reading"
        grown = rss_kb(mx.pid) - base
        assert grown < RSS_SLACK_KB, f"RSS grew {grown} KiB with {sent} bytes unanswered"
        # The replies that were queued are intact and in order.
        s.settimeout(5.0)
        first = b""
        while len(first) < 4096:
            first += s.recv(4096)
        want = b"250-" if line.startswith(b"EHLO") else b"214 2.0.0 "
        assert first.startswith(want), first[:200]
    mx.wait_log(r'\bevent=disconnect\b.*reason="(?:client closed|connection reset by peer)"')
    assert rss_kb(mx.pid) - base < RSS_SLACK_KB
    assert_served_promptly(mx)


def test_client_that_never_reads_is_dropped_at_the_command_timeout(mxfront, fake_backend):
    """The flooder of the test above, left alone: it neither reads nor sends.
    Its session must still end at the command timeout (2 s here), although
    the 421 can never be delivered: a slot (and the replies queued for it)
    must not be held forever by a client that stopped reading."""
    mx = mxfront(fake_backend(), timeouts={"command": "2s"},
                 server={"max_junk_commands": "100000"})
    s = flooder(mx)
    with s:
        sent, how = flood(s, b"EHLO flood.example\r\n", 16 * 1024 * 1024)
        assert how == "stalled", (sent, how)
        stalled = time.monotonic()
        [connect] = mx.wait_log(r"\bsess=(\S+) event=connect\b")
        sess = connect.group(1)

        def gone():
            return f"sess={sess} event=disconnect" in mx.log()
        while not gone() and time.monotonic() - stalled < 4.6:
            select.select([], [], [], 0.2)
        took = time.monotonic() - stalled
        assert gone(), (f"session of a client that stopped reading still open {took:.1f}s "
                        f"after it stalled (command timeout 2s); log:\n{mx.log()[-600:]}")
        assert took <= 4.5, f"dropped only after {took:.1f}s, command timeout is 2s"


def test_graceful_stop_is_not_held_up_by_a_client_that_never_reads(mxfront, fake_backend):
    """SIGTERM with a session whose replies can never be delivered: after
    shutdown_timeout (1 s) it is cut like any other, and the daemon exits 0."""
    mx = mxfront(fake_backend(), server={"shutdown_timeout": "1s", "max_junk_commands": "100000"})
    s = flooder(mx)
    with s:
        sent, how = flood(s, b"EHLO flood.example\r\n", 16 * 1024 * 1024)
        assert how == "stalled", (sent, how)
        started = time.monotonic()
        mx.proc.send_signal(signal.SIGTERM)
        code = mx.wait_exit(timeout=4.0)
        took = time.monotonic() - started
        assert code == 0, (f"mxfront still running {took:.1f}s after SIGTERM with "
                           f"shutdown_timeout 1s; log:\n{mx.log()[-600:]}")
