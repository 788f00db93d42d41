"""mxfront against a misbehaving backend (the scripted fake LMTP server), and
what exactly it says on the LMTP side (XCLIENT, LHLO, dot-stuffing, DATA)."""
import re
import socket
import struct
import time

import pytest

from lib import (HOSTNAME, attempt_delivery, closed_port_address, dot_stuff, smtp_session,
                 wait_until)

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
    [conn] = fb.connections
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
    [conn] = fb.wait_connections(1)
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
    [conn] = fb.wait_connections(1)
    assert not any(cmd.upper().startswith("XCLIENT") for cmd in conn.commands), conn.commands
    assert conn.commands[0].upper().startswith("LHLO "), conn.commands


@pytest.mark.parametrize("how", ["close", "reset"])
def test_client_dropping_mid_data_never_sends_the_final_dot(mxfront, fake_backend, how):
    fb = fake_backend()
    mx = mxfront(fb)
    c, _ = smtp_session(mx)
    assert c.cmd("MAIL FROM:<sender@client.example>").code == 250
    assert c.cmd("RCPT TO:<r1@dest.example>").code == 250
    assert c.cmd("DATA").code == 354
    # Ends with CRLF: all mxfront would need to add is ".\r\n".
    c.send(b"Subject: cut\r\n\r\n" + b"partial line of text\r\n" * 50)
    if how == "reset":
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()
    [conn] = fb.wait_connections(1)
    # mxfront must drop the backend connection (no RSET-and-keep: the
    # backend would still be inside DATA).
    wait_until(conn.eof.is_set, 5.0, "mxfront to close its backend connection")
    assert conn.messages == [], conn.messages
    assert b"\r\n.\r\n" not in bytes(conn.received), bytes(conn.received)[-200:]
    mx.wait_log(r"\bevent=disconnect\b")


def test_client_stalling_in_data_times_out(mxfront, fake_backend):
    fb = fake_backend()
    mx = mxfront(fb, timeouts={"data": "1s"})
    c, _ = smtp_session(mx)
    with c:
        assert c.cmd("MAIL FROM:<sender@client.example>").code == 250
        assert c.cmd("RCPT TO:<r1@dest.example>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(b"Subject: stall\r\n\r\nand then nothing\r\n")
        c.sock.settimeout(6.0)
        r = c.read_reply()
        assert r.code == 421 and r.enhanced and r.enhanced.startswith("4."), r
        assert c.wait_closed(5.0)
    [conn] = fb.connections
    wait_until(conn.eof.is_set, 5.0, "mxfront to close its backend connection")
    assert conn.messages == [] and b"\r\n.\r\n" not in bytes(conn.received), bytes(conn.received)
