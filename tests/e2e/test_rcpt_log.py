"""One log line per recipient (issue 14, point 4): accepted or refused, with
the backend's reply, the session and the transaction id, and for a message
Dovecot delivered its id -- the one Dovecot's own log names -- so the two
logs can be joined."""
import re

import smtpclient
from procs import field_of

BODY = b"Subject: rcpt log\r\nMessage-ID: <rcpt-log@client.example>\r\n\r\nhello\r\n"


def rcpt_lines(m):
    return [ln for ln in m.log().splitlines() if " event=rcpt " in ln]


def test_each_recipient_gets_a_line_joinable_with_dovecots_log(mxfront, dovecot):
    m = mxfront(dovecot)
    a = smtpclient.attempt_delivery(m.port, ["alice@test.example", "nobody@test.example",
                                      "bob@test.example"], BODY)
    assert a.final.code == 250, a
    dovecot.wait_messages("alice", 1)
    dovecot.wait_messages("bob", 1)
    tx = m.wait_log(r"sess=(\w+) event=transaction id=(\S+) ")[0]
    sess, txid = tx.group(1), tx.group(2)
    lines = rcpt_lines(m)
    assert len(lines) == 3, lines
    by_rcpt = {field_of(ln, "rcpt"): ln for ln in lines}
    assert set(by_rcpt) == {"<alice@test.example>", "<nobody@test.example>",
                            "<bob@test.example>"}
    for ln in lines:
        assert f"sess={sess} " in ln and f" id={txid} " in ln, ln
    refused = by_rcpt["<nobody@test.example>"]
    assert field_of(refused, "result") == "refused" and field_of(refused, "stage") == "rcpt"
    assert field_of(refused, "reply").startswith("550 5.1.1 "), refused
    assert "queue_id=" not in refused
    log = dovecot.log()
    for user in ("alice", "bob"):
        ln = by_rcpt[f"<{user}@test.example>"]
        assert field_of(ln, "result") == "delivered" and field_of(ln, "stage") == "data", ln
        reply = field_of(ln, "reply")
        qid = field_of(ln, "queue_id")
        assert re.fullmatch(rf"250 2\.0\.0 <{user}@test\.example> {re.escape(qid)} Saved", reply), ln
        # Dovecot names the same id (its LMTP session's, ":R<n>" added after
        # the first recipient) for the same delivery in its own log.
        assert re.search(rf"lmtp\({user}\)<\d+><{re.escape(qid)}(?::R\d+)?>: Info: "
                         r"msgid=<rcpt-log@client\.example>: saved mail to INBOX", log), \
            (qid, log[-3000:])


def test_refused_deferred_and_aborted_recipients(mxfront, fake_backend):
    fb = fake_backend(rcpt_replies={"full@x.example": "452 4.2.2 Mailbox full"},
                      eod_replies=["250 2.0.0 <a@x.example> Ok", "550 5.7.1 Content refused"])
    m = mxfront(fb)
    a = smtpclient.attempt_delivery(m.port, ["a@x.example", "full@x.example", "b@x.example"], BODY)
    assert a.final.code == 451, a  # delivered to a only
    # A transaction reset before DATA: its accepted recipient was not delivered.
    c, _ = smtpclient.smtp_session(m)
    assert c.cmd("MAIL FROM:<s@x.example>").code == 250
    assert c.cmd("RCPT TO:<c@x.example>").code == 250
    assert c.cmd("RSET").code == 250
    c.cmd("QUIT")
    c.close()
    m.wait_log(r"event=disconnect", count=2)
    got = [(field_of(ln, "rcpt"), field_of(ln, "result"), field_of(ln, "stage"),
            field_of(ln, "reply")) for ln in rcpt_lines(m)]
    assert got == [
        ("<full@x.example>", "deferred", "rcpt", "452 4.2.2 Mailbox full"),
        ("<a@x.example>", "delivered", "data", "250 2.0.0 <a@x.example> Ok"),
        ("<b@x.example>", "refused", "data", "550 5.7.1 Content refused"),
        ("<c@x.example>", "not_delivered", "aborted", ""),
    ], got
    # "Ok" is no queue id.
    assert all("queue_id=" not in ln for ln in rcpt_lines(m))
