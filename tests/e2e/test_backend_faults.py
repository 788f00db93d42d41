"""mxfront against a misbehaving backend (the scripted fake LMTP server), and
what exactly it says on the LMTP side (XCLIENT, LHLO, dot-stuffing, DATA)."""
import re
import socket
import struct
import time

import pytest

from procs import HOSTNAME
from smtpclient import attempt_delivery, dot_stuff, open_transaction, smtp_session
from waits import closed_port_address, wait_until

BODY = b"Subject: fault test\r\n\r\nsome text\r\n"
TWO = ["r1@dest.example", "r2@dest.example"]


def test_backend_down_gives_4xx_never_250(mxfront):
    mx = mxfront(closed_port_address(), backend={"connect_timeout": "2s"})
    a = attempt_delivery(mx.port, ["alice@dest.example"], BODY)
    assert not a.any_250_for_message, a
    assert a.final is not None and a.final.code // 100 == 4, a
    # no accepted MAIL or RCPT either: nothing to relay to
    assert not any(stage in ("mail", "rcpt") and r is not None and r.code == 250
                   for stage, r in a.steps), a


def test_backend_refusing_mail_is_passed_through(mxfront, fake_backend):
    fb = fake_backend(mail_reply="451 4.3.2 <sender@client.example> try later")
    mx = mxfront(fb)
    a = attempt_delivery(mx.port, ["r1@dest.example"], BODY)
    assert a.final is not None and a.final.first == "451 4.3.2 <sender@client.example> try later", a


# (id, fake backend script, mxfront overrides, recipients, check of the decisive reply)
FAULTS = [
    ("mixed-250-550", dict(eod_replies=["250 2.0.0 ok", "550 5.2.2 mailbox full"]), {}, TWO,
     lambda r: (r.code, r.enhanced) == (451, "4.3.0")),
    ("mixed-550-250", dict(eod_replies=["550 5.2.2 mailbox full", "250 2.0.0 ok"]), {}, TWO,
     lambda r: (r.code, r.enhanced) == (451, "4.3.0")),
    ("all-550", dict(eod_replies=["550 5.2.2 mailbox full", "550 5.2.2 mailbox full"]), {}, TWO,
     lambda r: r.first == "550 5.2.2 mailbox full"),
    ("452-and-550", dict(eod_replies=["452 4.2.2 over quota", "550 5.2.2 mailbox full"]), {}, TWO,
     lambda r: r.code // 100 == 4),
    ("550-and-452", dict(eod_replies=["550 5.2.2 mailbox full", "452 4.2.2 over quota"]), {}, TWO,
     lambda r: r.code // 100 == 4),
    ("single-452", dict(eod_replies=["452 4.2.2 over quota"]), {}, ["r1@dest.example"],
     lambda r: r.first == "452 4.2.2 over quota"),
    ("garbage-at-eod", dict(at_eod="garbage"), {}, ["r1@dest.example"],
     lambda r: r.code // 100 == 4),
    ("close-at-eod", dict(at_eod="close"), {}, ["r1@dest.example"],
     lambda r: r.code // 100 == 4),
    ("hang-at-eod", dict(at_eod="hang"), {"backend": {"timeout": "1s"}}, ["r1@dest.example"],
     lambda r: r.code // 100 == 4),
    ("close-after-lhlo", dict(after_lhlo="close"), {}, ["r1@dest.example"],
     lambda r: r.code // 100 == 4),
    ("garbage-after-lhlo", dict(after_lhlo="garbage"), {"backend": {"timeout": "1s"}},
     ["r1@dest.example"], lambda r: r.code // 100 == 4),
    ("hang-after-lhlo", dict(after_lhlo="hang"), {"backend": {"timeout": "1s"}},
     ["r1@dest.example"], lambda r: r.code // 100 == 4),
    ("no-greeting", dict(greeting=None), {"backend": {"connect_timeout": "1s", "timeout": "1s"}},
     ["r1@dest.example"], lambda r: r.code // 100 == 4),
    ("refusing-greeting", dict(greeting="554 5.3.2 not now"), {}, ["r1@dest.example"],
     lambda r: r.code // 100 == 4),
    ("garbage-to-data", dict(data_reply="HELLO?"), {"backend": {"timeout": "1s"}},
     ["r1@dest.example"], lambda r: r.code // 100 == 4),
]


@pytest.mark.parametrize("script,overrides,rcpts,check", [f[1:] for f in FAULTS],
                         ids=[f[0] for f in FAULTS])
def test_backend_fault_never_gives_250(mxfront, fake_backend, script, overrides, rcpts, check):
    fb = fake_backend(**script)
    mx = mxfront(fb, **overrides)
    started = time.monotonic()
    a = attempt_delivery(mx.port, rcpts, BODY)
    elapsed = time.monotonic() - started
    assert not a.any_250_for_message, a
    assert a.final is not None, f"no decisive reply: {a}"
    assert check(a.final), a
    assert a.final.enhanced is not None, a
    # Timeouts are 1 s here; anything near the client's own 10 s means
    # mxfront did not apply them.
    assert elapsed < 6.0, f"took {elapsed:.1f}s with {overrides}: {a}"


def test_relayed_message_on_the_lmtp_wire(mxfront, fake_backend):
    fb = fake_backend()
    mx = mxfront(fb)
    body = b"Subject: wire\r\n\r\n.dot first\r\n..two\r\n.\r\nend\r\n"
    a = attempt_delivery(mx.port, ["r1@dest.example", "r2@dest.example"], body,
                         sender="sender@client.example")
    eod = a.steps[-1][1]
    assert eod is not None and (eod.code, eod.enhanced) == (250, "2.0.0"), a
    [conn] = fb.used
    verbs = [cmd.split()[0].upper() for cmd in conn.commands]
    assert verbs[0] == "LHLO", verbs
    assert verbs.count("MAIL") == 1, verbs
    start = verbs.index("MAIL")
    assert verbs[start:start + 4] == ["MAIL", "RCPT", "RCPT", "DATA"], verbs
    mail = [cmd for cmd in conn.commands if cmd.upper().startswith("MAIL ")]
    assert len(mail) == 1 and mail[0].startswith("MAIL FROM:<sender@client.example>"), mail
    rcpts = [cmd for cmd in conn.commands if cmd.upper().startswith("RCPT ")]
    assert [r.split()[1] for r in rcpts] == ["TO:<r1@dest.example>", "TO:<r2@dest.example>"], rcpts
    [wire] = conn.messages
    m = re.match(rb"Received: from client\.example \(\[127\.0\.0\.1\]\)\r\n"
                 rb"\tby " + re.escape(HOSTNAME.encode()) + rb" \(mxfront\) with ESMTP id [^\r\n]*"
                 rb"(?:\r\n[ \t][^\r\n]*)*\r\n", wire)
    assert m, wire[:300]
    # dot-stuffed again for LMTP, byte for byte
    assert wire[m.end():] == dot_stuff(body) + b".\r\n", wire


def test_xclient_sent_when_the_backend_offers_it(mxfront, fake_backend):
    fb = fake_backend(capabilities=["PIPELINING", "ENHANCEDSTATUSCODES", "8BITMIME",
                                    "XCLIENT ADDR PORT PROTO HELO LOGIN"])
    mx = mxfront(fb)
    c, hello = smtp_session(mx, helo="client.test.example", source="127.0.0.2")
    with c:
        assert hello.code == 250
        client_port = c.sock.getsockname()[1]
        assert c.cmd("MAIL FROM:<sender@client.example>").code == 250
    [conn] = wait_until(lambda: fb.used, 5.0, "a transaction at the backend")
    cmds = conn.commands
    xclient = [i for i, cmd in enumerate(cmds) if cmd.upper().startswith("XCLIENT ")]
    assert len(xclient) == 1, cmds
    i = xclient[0]
    attrs = dict(kv.split("=", 1) for kv in cmds[i].split()[1:])
    assert attrs.get("ADDR") == "127.0.0.2", cmds[i]
    assert attrs.get("PORT") == str(client_port), cmds[i]
    assert attrs.get("HELO") == "client.test.example", cmds[i]
    assert cmds[0].upper().startswith("LHLO "), cmds
    # after XCLIENT's 220 a new LHLO, with the client's own name
    assert cmds[i + 1] == "LHLO client.test.example", cmds
    assert cmds[i + 2].upper().startswith("MAIL FROM:<SENDER@CLIENT.EXAMPLE>"), cmds


def test_xclient_per_transaction_on_a_shared_connection(mxfront, fake_backend):
    """One pooled connection serves two clients in turn: each transaction
    carries its own client's facts (XCLIENT again when they differ, then LHLO
    with that client's name), and a second transaction of the same client
    does not repeat them."""
    fb = fake_backend(capabilities=["PIPELINING", "ENHANCEDSTATUSCODES", "8BITMIME",
                                    "XCLIENT ADDR PORT PROTO HELO LOGIN"])
    mx = mxfront(fb, server={"workers": "1"})
    for source, helo, messages in (("127.0.0.2", "first.example", 2), ("127.0.0.3", "second.example", 1)):
        c, _ = smtp_session(mx, helo=helo, source=source)
        with c:
            for _ in range(messages):
                open_transaction(c, "r1@dest.example")
                c.send(b"Subject: shared\r\n\r\nbody\r\n.\r\n")
                assert c.read_reply().code == 250
    [conn] = fb.used
    assert len(fb.connections) == 1, "the start-up connection is the one lent"
    cmds = conn.commands
    xclients = [cmd for cmd in cmds if cmd.startswith("XCLIENT ")]
    assert [x.split()[1] for x in xclients] == ["ADDR=127.0.0.2", "ADDR=127.0.0.3"], cmds
    second = cmds.index(xclients[1])
    assert cmds[second + 1] == "LHLO second.example", cmds
    assert [c.split()[0] for c in cmds].count("MAIL") == 3 and len(conn.messages) == 3, cmds


@pytest.mark.parametrize("offered,enabled", [(False, "yes"), (True, "no")],
                         ids=["not-offered", "disabled"])
def test_no_xclient_when_not_offered_or_disabled(mxfront, fake_backend, offered, enabled):
    caps = ["PIPELINING", "ENHANCEDSTATUSCODES", "8BITMIME"]
    if offered:
        caps.append("XCLIENT ADDR PORT PROTO HELO LOGIN")
    fb = fake_backend(capabilities=caps)
    mx = mxfront(fb, backend={"xclient": enabled})
    c, _ = smtp_session(mx, helo="client.test.example", source="127.0.0.2")
    with c:
        assert c.cmd("MAIL FROM:<sender@client.example>").code == 250
    [conn] = wait_until(lambda: fb.used, 5.0, "a transaction at the backend")
    assert not any(cmd.upper().startswith("XCLIENT") for cmd in conn.commands), conn.commands
    assert conn.commands[0].upper().startswith("LHLO "), conn.commands


@pytest.mark.parametrize("how", ["close", "reset"])
@pytest.mark.parametrize("lines", [50, 4000], ids=["held", "streamed"])
def test_client_dropping_mid_data_never_sends_the_final_dot(mxfront, fake_backend, how, lines):
    """A short message is held by mxfront until its end: the backend never
    even got DATA, so its connection is reset and kept. A long one was
    streamed: the backend is inside DATA, so its connection is closed
    (never RSET-and-keep there)."""
    fb = fake_backend()
    mx = mxfront(fb)
    c = open_transaction(mx, "r1@dest.example")
    # Ends with CRLF: all mxfront would need to add is ".\r\n".
    c.send(b"Subject: cut\r\n\r\n" + b"partial line of text\r\n" * lines)
    if lines > 50:
        wait_until(lambda: fb.used and b"partial" in bytes(fb.used[0].received), 5.0,
                   "message bytes at the backend")
    if how == "reset":
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()
    [conn] = wait_until(lambda: fb.used, 5.0, "a transaction at the backend")
    if lines > 50:
        wait_until(conn.eof.is_set, 5.0, "mxfront to close its backend connection")
    else:
        wait_until(lambda: "RSET" in conn.commands, 5.0, "mxfront to reset its backend connection")
        assert "DATA" not in conn.commands and not conn.eof.is_set(), conn.commands
    assert conn.messages == [], conn.messages
    assert b"\r\n.\r\n" not in bytes(conn.received), bytes(conn.received)[-200:]
    mx.wait_log(r"\bevent=disconnect\b")


def test_client_stalling_in_data_times_out(mxfront, fake_backend):
    fb = fake_backend()
    mx = mxfront(fb, timeouts={"data": "1s"})
    c = open_transaction(mx, "r1@dest.example")
    with c:
        c.send(b"Subject: stall\r\n\r\nand then nothing\r\n")
        c.sock.settimeout(6.0)
        r = c.read_reply()
        assert r.code == 421 and r.enhanced and r.enhanced.startswith("4."), r
        assert c.wait_closed(5.0)
    [conn] = fb.used
    # The message was held by mxfront: the backend never got DATA, and the
    # silent client's transaction gave its connection back long before.
    wait_until(lambda: "RSET" in conn.commands, 5.0, "mxfront to reset its backend connection")
    assert "DATA" not in conn.commands, conn.commands
    assert conn.messages == [] and b"\r\n.\r\n" not in bytes(conn.received), bytes(conn.received)


# ------------------------------------------------ pipelining to the backend

PIPELINED_GROUP = (b"MAIL FROM:<s@client.example>\r\n"
                   b"RCPT TO:<a@dest.example>\r\n"
                   b"RCPT TO:<b@dest.example>\r\n"
                   b"DATA\r\n")


def _send_group(c):
    """Sends PIPELINED_GROUP in one write; returns its four replies."""
    c.send(PIPELINED_GROUP)
    return [c.read_reply() for _ in range(4)]


def _ready(mxfront, fb):
    """One worker, whose pool has learnt what the backend offers (EHLO is
    answered from that; until then without pipelining to the backend)."""
    mx = mxfront(fb, server={"workers": "1"})
    mx.wait_log(r"\bevent=backend_ready\b")
    return mx


def _pipelined_transaction(mx):
    c, _ = smtp_session(mx)
    with c:
        codes = [r.code for r in _send_group(c)]
        c.send(b"Subject: p\r\n\r\nbody\r\n.\r\nQUIT\r\n")
        codes.append(c.read_reply().code)
        codes.append(c.read_reply().code)
    return codes


def _backend_writes(conn, until=b"DATA\r\n"):
    """The backend's receive chunks from MAIL up to UNTIL."""
    writes, seen = [], b""
    for chunk in conn.chunks:
        seen += chunk
        if b"MAIL FROM" in seen:
            writes.append(chunk)
        if until in seen:
            break
    return writes


def test_pipelined_group_reaches_a_pipelining_backend_in_one_write(mxfront, fake_backend):
    """RFC 2920 to the backend too: a client's MAIL/RCPT/RCPT/DATA group leaves
    mxfront as one write instead of four round trips."""
    fb = fake_backend()
    mx = _ready(mxfront, fb)
    assert _pipelined_transaction(mx) == [250, 250, 250, 354, 250, 221]
    [conn] = fb.used
    # DATA itself waits for the message (mxfront answers the client's DATA
    # and holds the message until it is complete or large).
    writes = _backend_writes(conn, until=b"RCPT TO:<b@dest.example>\r\n")
    assert len(writes) == 1, writes
    assert writes[0].endswith(b"RCPT TO:<a@dest.example>\r\nRCPT TO:<b@dest.example>\r\n"), writes
    assert _backend_writes(conn)[-1].startswith(b"DATA\r\n"), conn.chunks


def test_backend_without_pipelining_gets_one_command_at_a_time(mxfront, fake_backend):
    fb = fake_backend(capabilities=["ENHANCEDSTATUSCODES", "8BITMIME"])
    mx = _ready(mxfront, fb)
    assert _pipelined_transaction(mx) == [250, 250, 250, 354, 250, 221]
    [conn] = fb.used
    writes = _backend_writes(conn)
    assert [w.split(b" ")[0].rstrip(b"\r\n") for w in writes] == \
        [b"MAIL", b"RCPT", b"RCPT", b"DATA"], writes


def test_pipelined_group_after_a_refused_mail(mxfront, fake_backend):
    """The backend refuses MAIL: the RCPTs and DATA pipelined behind it get
    the backend's own refusals, in order, and nothing is delivered."""
    fb = fake_backend(mail_reply="451 4.3.0 Try again later")
    mx = _ready(mxfront, fb)
    c, _ = smtp_session(mx)
    with c:
        replies = _send_group(c)
        assert [r.code for r in replies] == [451, 503, 503, 503], [str(r) for r in replies]
        assert c.cmd("NOOP").code == 250
    assert fb.used[0].messages == []


def test_backend_dying_under_a_pipelined_group(mxfront, fake_backend):
    """The backend closes after reading the group: every command in it is
    answered 4xx, in order, and the next transaction reconnects."""
    fb = fake_backend(mail_reply="close")
    mx = _ready(mxfront, fb)
    c, _ = smtp_session(mx)
    with c:
        replies = _send_group(c)
        assert [r.code // 100 for r in replies] == [4, 4, 4, 4], [str(r) for r in replies]
        fb.mail_reply = "250 2.1.0 Ok"
        assert [r.code for r in _send_group(c)] == [250, 250, 250, 354]
        c.send(b"Subject: p\r\n\r\nbody\r\n.\r\n")
        assert c.read_reply().code == 250
    assert len(fb.used) == 2 and len(fb.used[1].messages) == 1
