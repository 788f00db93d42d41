"""SMTP smuggling (CVE-2023-51764 class): the published end-of-data look-alikes,
each followed by a pipelined second transaction. Whatever the sequence, one
client transaction gives the backend one message or none, never a second,
"smuggled" one; with [smtp] bare_newline = normalize the one message reaches
the backend as canonical CRLF lines, and the LMTP wire holds no CRLF.CRLF
before the real end.

The smuggled tail ends with a real CRLF.CRLF: that is where a correct server
ends the DATA of the first (and only) transaction."""
import re

import pytest

from dovecotlmtp import lf, split_stored
from procs import HOSTNAME
from smtpclient import open_transaction

FIRST = b"From: <sender@client.example>\r\nSubject: first\r\n\r\nhello"
SMUGGLED = (b"MAIL FROM:<evil@x.example>\r\n"
            b"RCPT TO:<bob@dest.example>\r\n"
            b"DATA\r\n"
            b"From: <ceo@dest.example>\r\n"
            b"Subject: smuggled\r\n"
            b"\r\n"
            b"x\r\n")
END = b".\r\n"

# (id, end-of-data look-alike). The first nine are the published ones
# (SEC Consult, Postfix's smtp_smuggling page); the last ones are variants of
# them where the dot line follows a real CRLF.
SEQUENCES = [
    ("LF.CRLF", b"\n.\r\n"),
    ("CRLF.LF", b"\r\n.\n"),
    ("CR.CRLF", b"\r.\r\n"),
    ("LF.LF", b"\n.\n"),
    ("CRLF.CR", b"\r\n.\r"),
    ("CR.LF", b"\r.\n"),
    ("LF.CR", b"\n.\r"),
    ("dot-CR-CRLF", b".\r\r\n"),
    ("CRLF-NUL.CRLF", b"\r\n\x00.\r\n"),
    ("CRLF.CR-CRLF", b"\r\n.\r\r\n"),
    ("CR.CR", b"\r.\r"),
]
IDS = [s[0] for s in SEQUENCES]
SEQS = [s[1] for s in SEQUENCES]

RECEIVED_RX = re.compile(
    rb"Received: from client\.example \(\[127\.0\.0\.1\]\)\r\n"
    rb"\tby " + re.escape(HOSTNAME.encode()) + rb" \(mxfront\) with ESMTP id [^\r\n]*"
    rb"(?:\r\n[ \t][^\r\n]*)*\r\n")


def payload(seq):
    """What the client sends after DATA's 354, final dot included."""
    return FIRST + seq + SMUGGLED + END


def normalized_wire(data):
    """The LMTP form of DATA bytes DATA (final dot excluded) under
    bare_newline = normalize: every CRLF, bare CR and bare LF becomes one
    CRLF, and a line that is then a lone dot is stuffed, so that the backend
    sees no end of data that mxfront did not see."""
    text = re.sub(rb"\r\n|\r|\n", b"\r\n", data)
    lines = text.split(b"\r\n")[:-1]
    return b"".join((b".." if ln == b"." else ln) + b"\r\n" for ln in lines)


def unstuffed(wire):
    """What an LMTP server stores for dot-stuffed CRLF lines."""
    return b"".join((ln[1:] if ln.startswith(b".") else ln) + b"\r\n"
                    for ln in wire.split(b"\r\n")[:-1])


def send_smuggling(mx, seq, rcpt="alice@dest.example"):
    """One transaction carrying the look-alike; returns the client (still
    open) and the one reply to the whole DATA."""
    c = open_transaction(mx, rcpt)
    c.send(payload(seq))
    return c, c.read_reply()


def assert_in_sync(c):
    """The next reply belongs to the next command, and no transaction is
    open: nothing of the smuggled tail was taken as a command (a smuggled
    MAIL would make this RCPT go to the backend instead of getting 503)."""
    r = c.cmd("NOOP")
    assert (r.code, r.enhanced) == (250, "2.0.0"), f"stream out of sync: {r}"
    r = c.cmd("RCPT TO:<carol@dest.example>")
    assert (r.code, r.enhanced) == (503, "5.5.1"), f"a transaction is open: {r}"


def send_clean(c, rcpt, subject):
    open_transaction(c, rcpt)
    c.send(b"Subject: " + subject + b"\r\n\r\nclean\r\n.\r\n")
    r = c.read_reply()
    assert r.code == 250, r


def lmtp_payload(conn):
    """Every byte the fake backend received after the (first) DATA command."""
    wire = bytes(conn.received)
    i = wire.find(b"\r\nDATA\r\n")
    assert i >= 0, wire[-300:]
    return wire[i + len(b"\r\nDATA\r\n"):]


def verbs(conn):
    return [cmd.split(" ", 1)[0].upper() for cmd in conn.commands]


# ---------------------------------------------------------------- reject

@pytest.mark.parametrize("seq", SEQS, ids=IDS)
def test_reject_mode_dovecot_gets_nothing(dovecot, mxfront, seq):
    """bare_newline = reject (default): the transaction is refused with
    554 5.6.0, nothing is stored, the session stays in sync and the next
    clean transaction stores exactly one message."""
    mx = mxfront(dovecot)
    c, r = send_smuggling(mx, seq)
    with c:
        assert (r.code, r.enhanced) == (554, "5.6.0"), r
        assert_in_sync(c)
        send_clean(c, "carol@dest.example", b"clean after smuggling")
    [clean] = dovecot.wait_messages("carol", 1, timeout=10.0)
    assert b"Subject: clean after smuggling" in clean
    stored = dovecot.all_messages()
    assert stored["alice"] == [], "refused message was stored"
    assert stored["bob"] == [], "smuggled message was stored"
    assert len(stored["carol"]) == 1, stored["carol"]


@pytest.mark.parametrize("seq", SEQS, ids=IDS)
def test_reject_mode_lmtp_wire_never_ends_the_message(mxfront, fake_backend, seq):
    """What the backend got of the refused message: no end of data anywhere,
    one MAIL and no DATA (mxfront holds a short message until its end, and
    this one was refused before it), never the smuggled MAIL."""
    fb = fake_backend()
    mx = mxfront(fb)
    c, r = send_smuggling(mx, seq)
    with c:
        assert (r.code, r.enhanced) == (554, "5.6.0"), r
        assert_in_sync(c)
    [conn] = fb.used
    wire = bytes(conn.received)
    assert conn.messages == [], conn.messages
    assert b"\r\n.\r\n" not in wire, wire
    assert verbs(conn).count("MAIL") == 1 and verbs(conn).count("DATA") == 0, conn.commands
    assert b"evil@x.example" not in b"".join(c.encode() for c in conn.commands)


# ------------------------------------------------------------- normalize

NORMALIZE = {"smtp": {"bare_newline": "normalize"}}


@pytest.mark.parametrize("seq", SEQS, ids=IDS)
def test_normalize_mode_lmtp_wire_is_one_canonical_message(mxfront, fake_backend, seq):
    """bare_newline = normalize: one message on the LMTP wire, every line
    ending CRLF, no CRLF.CRLF before the real end, byte for byte what the
    client sent with its bare CR/LF made CRLF. A NUL is still refused."""
    fb = fake_backend()
    mx = mxfront(fb, **NORMALIZE)
    c, r = send_smuggling(mx, seq)
    with c:
        if b"\x00" in seq:
            assert (r.code, r.enhanced) == (554, "5.6.0"), r
        else:
            assert (r.code, r.enhanced) == (250, "2.0.0"), r
        assert_in_sync(c)
    [conn] = fb.used
    if b"\x00" in seq:
        assert conn.messages == [] and b"\r\n.\r\n" not in bytes(conn.received), conn.received
        assert verbs(conn).count("MAIL") == 1 and "DATA" not in verbs(conn), conn.commands
        return
    data = lmtp_payload(conn)
    first_end = data.find(b"\r\n.\r\n")
    assert first_end == len(data) - 5, \
        f"CRLF.CRLF at offset {first_end} of {len(data)} on the LMTP wire: {data!r}"
    assert re.search(rb"\r(?!\n)|(?<!\r)\n", data) is None, f"bare CR or LF on the wire: {data!r}"
    assert verbs(conn).count("MAIL") == 1 and verbs(conn).count("DATA") == 1, conn.commands
    m = RECEIVED_RX.match(data)
    assert m, data[:300]
    sent = payload(seq)[:-len(END)]
    assert data[m.end():-3] == normalized_wire(sent), data
    assert len(conn.messages) == 1, conn.messages


@pytest.mark.parametrize("seq", SEQS, ids=IDS)
def test_normalize_mode_dovecot_stores_one_message(dovecot, mxfront, seq):
    mx = mxfront(dovecot, **NORMALIZE)
    c, r = send_smuggling(mx, seq)
    with c:
        accepted = b"\x00" not in seq
        if accepted:
            assert (r.code, r.enhanced) == (250, "2.0.0"), r
        else:
            assert (r.code, r.enhanced) == (554, "5.6.0"), r
        assert_in_sync(c)
        if accepted:
            # checked first: a truncated copy is what a smuggled end leaves
            [message] = dovecot.wait_messages("alice", 1, timeout=10.0)
            rest = split_stored(message, helo="client.example").rest
            want = lf(unstuffed(normalized_wire(payload(seq)[:-len(END)])))
            if rest != want:
                try:    # evidence: did the smuggled message reach bob?
                    smuggled = dovecot.wait_messages("bob", 1, timeout=2.0)
                except AssertionError:
                    smuggled = []
                raise AssertionError(f"alice's copy differs; stored for bob: {smuggled!r}\n"
                                     f"got  {rest!r}\nwant {want!r}")
            assert b"Subject: smuggled" in rest   # as text of the one message
        send_clean(c, "carol@dest.example", b"clean after smuggling")
    dovecot.wait_messages("carol", 1, timeout=10.0)
    stored = dovecot.all_messages()
    assert stored["bob"] == [], "smuggled message was stored"
    assert len(stored["carol"]) == 1, stored["carol"]
    assert len(stored["alice"]) == accepted, stored["alice"]


# ------------------------------------------------------ framing variants

def test_overlong_line_ended_by_bare_lf_does_not_end_data(dovecot, mxfront):
    """An over-long line is discarded up to its LF; when that LF is bare, the
    dot line after it is no end of data either."""
    mx = mxfront(dovecot)
    c = open_transaction(mx)
    with c:
        c.send(b"Subject: long\r\n\r\n" + b"z" * 3000 + b"\n.\r\n" + SMUGGLED + END)
        r = c.read_reply()
        assert (r.code, r.enhanced) == (554, "5.6.0"), r
        assert_in_sync(c)
        send_clean(c, "carol@dest.example", b"clean")
    dovecot.wait_messages("carol", 1, timeout=10.0)
    assert dovecot.all_messages()["bob"] == [] and dovecot.all_messages()["alice"] == []


@pytest.mark.parametrize("mode", ["reject", "normalize"])
def test_lone_dot_split_across_writes_is_one_end(mxfront, fake_backend, mode):
    """CRLF.CRLF split over several TCP segments still ends DATA exactly once
    and the backend gets exactly the lines sent."""
    fb = fake_backend()
    mx = mxfront(fb, smtp={"bare_newline": mode})
    c = open_transaction(mx)
    with c:
        for part in (b"Subject: split\r\n\r\nbody\r", b"\n", b".", b"\r", b"\nNOOP\r\n"):
            c.send(part)
        r = c.read_reply()
        assert (r.code, r.enhanced) == (250, "2.0.0"), r
        assert c.read_reply().code == 250   # the NOOP, as a command
    [conn] = fb.used
    [msg] = conn.messages
    assert msg.endswith(b"\r\nSubject: split\r\n\r\nbody\r\n.\r\n"), msg
