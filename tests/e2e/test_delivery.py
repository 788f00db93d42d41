"""Messages relayed through mxfront into a real Dovecot LMTP and its Maildirs.

Dovecot stores messages with LF line ends (CRLF -> LF; a bare CR is kept) and
puts Return-Path and its own Received header (naming the HELO and address it
was told with XCLIENT, `by <host> with LMTP`) above mxfront's Received."""
import re
import smtplib
import subprocess

from dovecotlmtp import lf, split_stored
from procs import HOSTNAME
from smtpclient import SmtpClient, attempt_delivery, dot_stuff, open_transaction, smtp_session


# A message exercising what must survive untouched: 8-bit text, trailing white
# space, a tab, empty lines, a line of exactly 998 octets (+CRLF = 1000), lines
# starting with dots, a line that looks like a header in the body.
BODY_LINES = [
    b"From: Sender <sender@client.example>",
    b"To: Alice <alice@dest.example>",
    b"Subject: byte-for-byte check",
    b"Message-ID: <e2e-1@client.example>",
    b"MIME-Version: 1.0",
    b"Content-Type: text/plain; charset=utf-8",
    b"Content-Transfer-Encoding: 8bit",
    b"",
    b"Hello Alice,",
    "Gr\u00fc\u00dfe aus K\u00f6ln \u2014 \u65e5\u672c\u8a9e".encode(),
    b"trailing spaces   ",
    b"\tleading tab",
    b"",
    b"",
    b".a line starting with a dot",
    b"..two dots",
    b".",
    b"Received: not a header, this is the body",
    b"x" * 998,
    b"last line",
]
MESSAGE = b"\r\n".join(BODY_LINES) + b"\r\n"


def assert_stored_exactly(stored, sent, helo="client.example", client_ip="127.0.0.1",
                          proto="ESMTP"):
    parts = split_stored(stored, helo=helo, client_ip=client_ip, proto=proto)
    # Only the backend's own trace headers may sit above mxfront's Received.
    names = [name.lower() for name, _ in parts.above]
    assert set(names) <= {"return-path", "delivered-to", "received"}, names
    assert parts.rest == lf(sent), "message changed on its way through mxfront"
    return parts


def test_smtplib_message_arrives_byte_for_byte(dovecot, mxfront):
    mx = mxfront(dovecot)
    with smtplib.SMTP("127.0.0.1", mx.port, local_hostname="client.example", timeout=10) as s:
        refused = s.sendmail("sender@client.example", ["alice@dest.example"], MESSAGE)
        assert refused == {}
    [stored] = dovecot.wait_messages("alice", 1)
    parts = assert_stored_exactly(stored, MESSAGE)
    assert re.search(rb"^Received: from client\.example \(\[127\.0\.0\.1\]\)\n", parts.received)
    assert dovecot.maildir_messages("bob") == []


def test_swaks_message_arrives_byte_for_byte(dovecot, mxfront, tmp_path):
    mx = mxfront(dovecot)
    data_file = tmp_path / "message.eml"
    # --no-data-fixup: swaks sends the file as it is, so it must be a complete
    # DATA stream (dot-stuffed, with the final dot).
    data_file.write_bytes(dot_stuff(MESSAGE) + b".\r\n")
    p = subprocess.run(
        ["swaks", "--server", f"127.0.0.1:{mx.port}", "--ehlo", "client.example",
         "--from", "sender@client.example", "--to", "alice@dest.example",
         "--data", f"@{data_file}", "--no-data-fixup", "--timeout", "10"],
        capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stdout + p.stderr
    assert re.search(r"^<-  250 2\.0\.0", p.stdout, re.M), p.stdout
    [stored] = dovecot.wait_messages("alice", 1)
    assert_stored_exactly(stored, MESSAGE)


def test_three_messages_in_one_session(dovecot, mxfront):
    mx = mxfront(dovecot)
    sent = [MESSAGE.replace(b"byte-for-byte check", f"message {i}".encode()) for i in range(3)]
    with smtplib.SMTP("127.0.0.1", mx.port, local_hostname="client.example", timeout=10) as s:
        for msg in sent:
            assert s.sendmail("sender@client.example", ["alice@dest.example"], msg) == {}
    stored = dovecot.wait_messages("alice", 3)
    assert len(stored) == 3
    rests = sorted(split_stored(m, helo="client.example").rest for m in stored)
    assert rests == sorted(lf(m) for m in sent)


def test_pipelined_commands_get_replies_in_order(dovecot, mxfront):
    mx = mxfront(dovecot)
    c, hello = smtp_session(mx)
    with c:
        assert "PIPELINING" in hello.keywords
        c.send(b"MAIL FROM:<sender@client.example>\r\n"
               b"RCPT TO:<alice@dest.example>\r\n"
               b"RCPT TO:<nosuchuser@dest.example>\r\n"
               b"RCPT TO:<bob@dest.example>\r\n"
               b"DATA\r\n")
        codes = [c.read_reply() for _ in range(5)]
        assert [r.code for r in codes] == [250, 250, 550, 250, 354], [str(r) for r in codes]
        body = b"Subject: pipelined\r\n\r\nbody\r\n"
        c.send(body + b".\r\nQUIT\r\n")
        eod = c.read_reply()
        assert eod.code == 250 and eod.enhanced == "2.0.0", eod
        assert c.read_reply().code == 221
    for user in ("alice", "bob"):
        [stored] = dovecot.wait_messages(user, 1)
        assert split_stored(stored, helo="client.example").rest == lf(body)
    assert dovecot.maildir_messages("carol") == []


def test_dot_stuffed_lines_arrive_unstuffed(dovecot, mxfront):
    mx = mxfront(dovecot)
    c = open_transaction(mx)
    with c:
        # On the wire (stuffed)  ->  in the message
        c.send(b"Subject: dots\r\n"
               b"\r\n"
               b"..\r\n"            # "."
               b"...\r\n"           # ".."
               b"..leading\r\n"     # ".leading"
               b"middle.dot\r\n"
               b" .space first\r\n"
               b"..\r\n"            # "." as the last line
               b".\r\n")
        r = c.read_reply()
        assert r.code == 250, r
    [stored] = dovecot.wait_messages("alice", 1)
    want = b"Subject: dots\n\n.\n..\n.leading\nmiddle.dot\n .space first\n.\n"
    assert split_stored(stored, helo="client.example").rest == want


def test_helo_client_gets_received_with_smtp(dovecot, mxfront):
    mx = mxfront(dovecot)
    c, hello = smtp_session(mx, helo="old.client.example", ehlo=False)
    with c:
        assert hello.code == 250, hello
        open_transaction(c)
        c.send(b"Subject: helo\r\n\r\nplain SMTP\r\n.\r\n")
        assert c.read_reply().code == 250
    [stored] = dovecot.wait_messages("alice", 1)
    parts = split_stored(stored, helo="old.client.example", proto="SMTP")
    assert parts.rest == b"Subject: helo\n\nplain SMTP\n"


def test_rset_then_new_transaction_delivers(dovecot, mxfront):
    mx = mxfront(dovecot)
    c, _ = smtp_session(mx)
    with c:
        assert c.cmd("MAIL FROM:<first@client.example>").code == 250
        assert c.cmd("RCPT TO:<bob@dest.example>").code == 250
        r = c.cmd("RSET")
        assert r.code == 250 and r.enhanced == "2.0.0", r
        # RSET cleared the transaction: RCPT needs a new MAIL.
        assert c.cmd("RCPT TO:<bob@dest.example>").code == 503
        open_transaction(c, sender="second@client.example")
        c.send(b"Subject: after rset\r\n\r\nhi\r\n.\r\n")
        assert c.read_reply().code == 250
    [stored] = dovecot.wait_messages("alice", 1)
    assert b"Return-Path: <second@client.example>" in stored
    assert dovecot.maildir_messages("bob") == []


def test_unknown_user_refused_at_rcpt_with_dovecots_reply(dovecot, mxfront):
    mx = mxfront(dovecot)
    c, _ = smtp_session(mx)
    with c:
        assert c.cmd("MAIL FROM:<sender@client.example>").code == 250
        r = c.cmd("RCPT TO:<nosuchuser@dest.example>")
        assert r.code == 550 and r.enhanced == "5.1.1", r
        assert "nosuchuser" in r.text   # Dovecot's own text, passed through
        # Only refused recipients: DATA has nobody to deliver to.
        r = c.cmd("DATA")
        assert r.code == 554 and r.enhanced == "5.5.1", r
    assert dovecot.all_messages() == {"alice": [], "bob": [], "carol": []}


def test_too_many_recipients_get_452(dovecot, mxfront):
    mx = mxfront(dovecot, server={"max_recipients": "2"})
    c, _ = smtp_session(mx)
    with c:
        assert c.cmd("MAIL FROM:<sender@client.example>").code == 250
        assert c.cmd("RCPT TO:<alice@dest.example>").code == 250
        assert c.cmd("RCPT TO:<bob@dest.example>").code == 250
        r = c.cmd("RCPT TO:<carol@dest.example>")
        assert r.code == 452 and r.enhanced == "4.5.3", r
        assert c.cmd("DATA").code == 354
        c.send(b"Subject: two of three\r\n\r\nx\r\n.\r\n")
        assert c.read_reply().code == 250
    dovecot.wait_messages("alice", 1)
    dovecot.wait_messages("bob", 1)
    assert dovecot.maildir_messages("carol") == []


def test_declared_size_over_limit_gets_552(dovecot, mxfront):
    mx = mxfront(dovecot, server={"max_message_size": "2k"})
    c, hello = smtp_session(mx)
    with c:
        assert "SIZE 2048" in hello.keywords, hello
        r = c.cmd("MAIL FROM:<sender@client.example> SIZE=2049")
        assert r.code == 552 and r.enhanced == "5.3.4", r
        r = c.cmd("MAIL FROM:<sender@client.example> SIZE=2000")
        assert r.code == 250, r


def test_streamed_message_over_limit_gets_552_and_nothing_delivered(dovecot, mxfront):
    mx = mxfront(dovecot, server={"max_message_size": "2k"})
    c = open_transaction(mx)
    with c:
        c.send(b"Subject: big\r\n\r\n" + (b"y" * 70 + b"\r\n") * 60 + b".\r\n")   # ~4.3 KB
        r = c.read_reply()
        assert r.code == 552 and r.enhanced == "5.3.4", r
        # The session goes on, and a message within the limit still passes.
        assert c.cmd("NOOP").code == 250
        open_transaction(c, "bob@dest.example")
        c.send(b"Subject: small\r\n\r\nok\r\n.\r\n")
        assert c.read_reply().code == 250
    dovecot.wait_messages("bob", 1)
    assert dovecot.maildir_messages("alice") == []


def test_line_over_1000_octets_refused(dovecot, mxfront):
    mx = mxfront(dovecot)
    c = open_transaction(mx)
    with c:
        c.send(b"Subject: long line\r\n\r\n" + b"z" * 999 + b"\r\nend\r\n.\r\n")  # 1001 octets
        r = c.read_reply()
        assert r.code == 554 and r.enhanced == "5.6.0", r
        assert c.cmd("NOOP").code == 250
    # The refusal came after the backend's verdict would have: nothing stored.
    assert dovecot.maildir_messages("alice") == []


def test_bare_lf_or_cr_in_data_refused(dovecot, mxfront):
    mx = mxfront(dovecot)
    c, _ = smtp_session(mx)
    with c:
        for bad in (b"bare\nLF", b"bare\rCR"):
            open_transaction(c)
            c.send(b"Subject: bare\r\n\r\n" + bad + b"\r\n.\r\n")
            r = c.read_reply()
            assert 500 <= r.code < 600, (bad, str(r))
            assert c.cmd("NOOP").code == 250
    assert dovecot.maildir_messages("alice") == []


def test_lone_lf_dot_does_not_end_data(dovecot, mxfront):
    """SMTP smuggling: `\\r\\n.\\n` and `\\n.\\r\\n` are not the end of DATA, so
    the commands after them are message text, never a second transaction."""
    mx = mxfront(dovecot)
    c = open_transaction(mx)
    with c:
        c.send(b"Subject: smuggle\r\n\r\nfirst\r\n.\n"
               b"MAIL FROM:<evil@client.example>\r\nRCPT TO:<bob@dest.example>\r\nDATA\r\n"
               b"smuggled one\n.\r\n"
               b"MAIL FROM:<evil@client.example>\r\nRCPT TO:<carol@dest.example>\r\nDATA\r\n"
               b"smuggled two\r\n.\r\n")
        r = c.read_reply()
        # Exactly one reply, and the next one belongs to NOOP: stream in sync.
        noop = c.cmd("NOOP")
        assert noop.code == 250 and noop.enhanced == "2.0.0", (str(r), str(noop))
    assert dovecot.maildir_messages("bob") == []
    assert dovecot.maildir_messages("carol") == []
    if r.code // 100 == 2:  # accepted: then as one message holding all the text
        [stored] = dovecot.wait_messages("alice", 1)
        assert b"smuggled one" in stored and b"smuggled two" in stored
    else:
        assert 500 <= r.code < 600, r
        assert dovecot.maildir_messages("alice") == []


def test_ehlo_extensions_follow_the_backend(dovecot, mxfront):
    # What does this Dovecot advertise? Ask it directly.
    with SmtpClient("127.0.0.1", dovecot.port) as b:
        assert b.read_reply().code == 220
        lhlo = b.cmd("LHLO probe.example")
        b.cmd("QUIT")
    backend_caps = {k.split()[0] for k in lhlo.keywords}
    mx = mxfront(dovecot, server={"max_message_size": "10M"})
    c, hello = smtp_session(mx)
    with c:
        assert hello.code == 250 and hello.first.split()[0] == f"250-{HOSTNAME}", hello
        caps = {k.split()[0]: k for k in hello.keywords}
        assert caps.get("SIZE") == "SIZE 10485760", hello
        for kw in ("PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES"):
            assert kw in caps, hello
        for kw in ("SMTPUTF8", "DSN"):
            assert (kw in caps) == (kw in backend_caps), (kw, str(hello), str(lhlo))
        # LMTP- and backend-only extensions never leak to SMTP clients.
        for kw in ("XCLIENT", "XRCPTFORWARD", "CHUNKING"):
            assert kw not in caps, hello


def test_xclient_tells_dovecot_the_real_client(dovecot, mxfront):
    mx = mxfront(dovecot)
    with smtplib.SMTP("127.0.0.1", mx.port, local_hostname="client.test.example",
                      source_address=("127.0.0.2", 0), timeout=10) as s:
        assert s.sendmail("sender@client.example", ["alice@dest.example"], MESSAGE) == {}
    [stored] = dovecot.wait_messages("alice", 1)
    parts = assert_stored_exactly(stored, MESSAGE, helo="client.test.example",
                                  client_ip="127.0.0.2")
    dovecot_received = [b for name, b in parts.above if name.lower() == "received"]
    assert len(dovecot_received) == 1, parts.above
    assert dovecot_received[0].startswith(b"Received: from client.test.example ([127.0.0.2])"), \
        dovecot_received[0]
    assert b"with LMTP" in dovecot_received[0]


def test_without_xclient_dovecot_sees_mxfront(dovecot, mxfront):
    mx = mxfront(dovecot, backend={"xclient": "no"})
    with smtplib.SMTP("127.0.0.1", mx.port, local_hostname="client.test.example",
                      source_address=("127.0.0.2", 0), timeout=10) as s:
        assert s.sendmail("sender@client.example", ["alice@dest.example"], MESSAGE) == {}
    [stored] = dovecot.wait_messages("alice", 1)
    parts = assert_stored_exactly(stored, MESSAGE, helo="client.test.example",
                                  client_ip="127.0.0.2")
    [dovecot_received] = [b for name, b in parts.above if name.lower() == "received"]
    assert b"with LMTP" in dovecot_received
    assert b"127.0.0.2" not in dovecot_received, dovecot_received
    assert b"[127.0.0.1]" in dovecot_received, dovecot_received


def test_log_has_connect_transaction_disconnect_with_one_session_id(dovecot, mxfront):
    mx = mxfront(dovecot)
    c, _ = smtp_session(mx)
    with c:
        assert c.cmd("MAIL FROM:<sender@client.example>").code == 250
        assert c.cmd("RCPT TO:<alice@dest.example>").code == 250
        assert c.cmd("RCPT TO:<nosuchuser@dest.example>").code == 550
        assert c.cmd("DATA").code == 354
        c.send(b"Subject: log\r\n\r\nlogged\r\n.\r\n")
        assert c.read_reply().code == 250
        assert c.cmd("QUIT").code == 221
    [disc] = mx.wait_log(r"\bevent=disconnect\b")
    sess = re.search(r"\bsess=(\S+)", disc.string).group(1)
    lines = [ln for ln in mx.log().splitlines() if f"sess={sess} " in ln + " "]
    connect = [ln for ln in lines if re.search(r"\bevent=connect\b", ln)]
    tx = [ln for ln in lines if re.search(r"\bevent=transaction\b", ln)]
    assert len(connect) == 1 and "client=127.0.0.1" in connect[0], lines
    assert len(tx) == 1, lines
    assert "from=<sender@client.example>" in tx[0], tx
    assert re.search(r"\brcpts_ok=1\b", tx[0]) and re.search(r"\brcpts_refused=1\b", tx[0]), tx
    assert re.search(r"\bsize=\d+", tx[0]) and re.search(r"\breply=\"?250", tx[0]), tx
    assert re.search(r"\breason=\S+", disc.string) and re.search(r"\bduration=\S+", disc.string)
    assert re.search(r"\bcommands=\d+", disc.string), disc.string
    order = [lines.index(connect[0]), lines.index(tx[0]), lines.index(disc.string)]
    assert order == sorted(order), lines


def test_client_dropping_mid_data_delivers_nothing(dovecot, mxfront):
    mx = mxfront(dovecot, server={"workers": "1"})
    c = open_transaction(mx)
    c.send(b"Subject: cut\r\n\r\nhalf a message\r\nand no final dot")
    c.close()
    mx.wait_log(r"\bevent=disconnect\b")
    # A short message is held by mxfront until its final dot: Dovecot never
    # got DATA, and the transaction there was reset when the client left.
    # A new session reuses that connection and delivers only its own message.
    a = attempt_delivery(mx.port, ["bob@dest.example"], b"Subject: next\r\n\r\nwhole\r\n")
    assert a.any_250_for_message, a
    dovecot.wait_messages("bob", 1)
    assert dovecot.all_messages()["alice"] == []
    assert "lmtp(alice)" not in dovecot.log()


def test_pipelined_group_with_no_valid_recipient(dovecot, mxfront):
    """Every RCPT of a pipelined group is unknown to Dovecot: DATA, sent on
    behind them, gets Dovecot's refusal, nothing is stored, and the session
    goes on to a transaction that works."""
    mx = mxfront(dovecot)
    c, _ = smtp_session(mx)
    with c:
        c.send(b"MAIL FROM:<sender@client.example>\r\n"
               b"RCPT TO:<nosuchuser@dest.example>\r\n"
               b"RCPT TO:<nobody@dest.example>\r\n"
               b"DATA\r\n")
        replies = [c.read_reply() for _ in range(4)]
        assert [r.code for r in replies[:3]] == [250, 550, 550], [str(r) for r in replies]
        assert replies[3].code // 100 == 5 and replies[3].enhanced, replies[3]
        assert c.cmd("RSET").code == 250
        c.send(b"MAIL FROM:<sender@client.example>\r\nRCPT TO:<carol@dest.example>\r\nDATA\r\n")
        assert [c.read_reply().code for _ in range(3)] == [250, 250, 354]
        body = b"Subject: after\r\n\r\nbody\r\n"
        c.send(body + b".\r\n")
        assert c.read_reply().code == 250
    [stored] = dovecot.wait_messages("carol", 1)
    assert split_stored(stored, helo="client.example").rest == lf(body)
    assert dovecot.maildir_messages("alice") == []
