"""A backend that fails at every stage of the LMTP dialogue: it dies in the
middle of a message, refuses connections, hangs after the final dot, answers
garbage or malformed replies, or closes after LHLO. The client always gets a
4xx, never 250 (DESIGN.md promise 1), the log says why, and once the backend
is healthy again a new session on the same running daemon delivers."""
import os
import signal
import time

import pytest

from smtpclient import attempt_delivery, open_transaction
from waits import free_port, wait_until

BODY = b"Subject: backend fault\r\n\r\n" + b"a line of text to make it long enough\r\n" * 8000
BACKOFF_MAX = 10.0   # the pool's longest wait between two tries of a dead backend
SMALL = b"Subject: after the fault\r\n\r\nhealthy again\r\n"

HEALTHY = dict(greeting="220 fake.backend LMTP ready", after_lhlo="ok",
               mail_reply="250 2.1.0 Ok", rcpt_default="250 2.1.5 Ok",
               data_reply="354 Send data", at_eod="reply", eod_replies=None, cut_in_data=None)


def heal(fb):
    for key, value in HEALTHY.items():
        setattr(fb, key, value)


def assert_4xx_never_250(a):
    assert not a.any_250_for_message, a
    assert a.final is not None, f"no decisive reply: {a}"
    assert a.final.code // 100 == 4 and a.final.enhanced and a.final.enhanced.startswith("4."), a


def assert_delivers_now(mx, fb):
    """A new session on the same daemon delivers to the healed backend, as
    soon as the pool's next try finds it healthy (it retries a dead backend
    with backoff, at most BACKOFF_MAX apart); until then MAIL gets a 4xx."""
    before = sum(len(conn.messages) for conn in fb.connections)
    attempts = []

    def delivered():
        attempts.append(attempt_delivery(mx.port, ["r1@dest.example"], SMALL))
        assert not attempts[-1].any_250_for_message or attempts[-1].final.code == 250
        return attempts[-1].any_250_for_message
    wait_until(delivered, BACKOFF_MAX + 2.0, f"a delivery after the backend healed: {attempts[-1:]}")
    messages = [m for conn in fb.connections for m in conn.messages]
    assert len(messages) == before + 1 and messages[-1].endswith(b"\r\nhealthy again\r\n.\r\n"), \
        messages[-1:]


@pytest.mark.parametrize("how", ["close", "reset"])
def test_backend_dying_mid_data(mxfront, fake_backend, how):
    fb = fake_backend(cut_in_data=20_000, cut_how=how)
    mx = mxfront(fb)
    a = attempt_delivery(mx.port, ["r1@dest.example"], BODY)
    assert_4xx_never_250(a)
    assert a.steps[-1][0] == "eod", f"refused before the end of the message: {a}"
    assert fb.used[0].messages == []
    mx.wait_log(r'\bevent=backend_error\b.*\bstage=(?:data|end_of_data)\b.*\breason="'
                r'(?:backend closed the connection|connection reset by peer|broken pipe)"')
    mx.wait_log(r'\bevent=transaction\b.*\bdelivered=0\b.*\breply="4')
    heal(fb)
    assert_delivers_now(mx, fb)


def test_dovecot_lmtp_killed_mid_data(dovecot, mxfront):
    """The real thing: Dovecot's lmtp process is SIGKILLed in the middle of
    a message."""
    mx = mxfront(dovecot)
    c = open_transaction(mx)
    with c:
        c.send(BODY[:100_000])
        victims = wait_until(dovecot.lmtp_pids, 5.0, "an lmtp process")
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        mx.wait_log(r"\bevent=backend_error\b")
        c.send(BODY[100_000:] + b".\r\n")
        c.sock.settimeout(10)
        r = c.read_reply()
        assert r.code // 100 == 4 and r.enhanced and r.enhanced.startswith("4."), r
        assert c.cmd("NOOP").code == 250
    assert dovecot.all_messages() == {"alice": [], "bob": [], "carol": []}
    # Dovecot's master starts a new lmtp: the next session delivers.
    a = attempt_delivery(mx.port, ["bob@dest.example"], SMALL)
    assert a.any_250_for_message, a
    [stored] = dovecot.wait_messages("bob", 1, timeout=10.0)
    assert stored.endswith(b"\nhealthy again\n")
    assert dovecot.maildir_messages("alice") == []


def test_backend_refusing_connections_then_back(mxfront, fake_backend):
    port = free_port()
    mx = mxfront(f"127.0.0.1:{port}")
    a = attempt_delivery(mx.port, ["r1@dest.example"], SMALL)
    assert_4xx_never_250(a)
    stages = [stage for stage, _ in a.steps]
    assert stages == ["greeting", "ehlo", "mail"], a   # EHLO still works, MAIL says 4xx
    assert a.steps[1][1].code == 250, a
    mx.wait_log(r'\bevent=backend_error\b.*\bstage=connecting\b.*\breason="connection refused"')
    fb = fake_backend(port=port)
    assert_delivers_now(mx, fb)


def test_backend_hanging_after_the_final_dot(mxfront, fake_backend):
    fb = fake_backend(at_eod="hang")
    mx = mxfront(fb, backend={"timeout": "1s"})
    started = time.monotonic()
    a = attempt_delivery(mx.port, ["r1@dest.example"], SMALL)
    took = time.monotonic() - started
    assert_4xx_never_250(a)
    assert a.steps[-1][0] == "eod", a
    assert 0.8 <= took <= 3.0, f"4xx after {took:.2f}s, backend timeout is 1s"
    # The backend did get the whole message: the client may retry and
    # duplicate it, but never lose it (DESIGN.md, promise 1).
    assert len(fb.used[0].messages) == 1
    mx.wait_log(r'\bevent=backend_error\b.*\bstage=end_of_data\b.*\breason="timeout"')
    heal(fb)
    assert_delivers_now(mx, fb)


# (id, fake backend script, decisive stage on the client side)
FAULTS = [
    ("greeting-garbage", dict(greeting="HELLO?"), "mail"),
    ("greeting-554", dict(greeting="554 5.3.2 go away"), "mail"),
    ("greeting-bare-lf", dict(greeting="220 fake\nready"), "mail"),
    ("lhlo-garbage", dict(after_lhlo="garbage"), "mail"),
    ("lhlo-close", dict(after_lhlo="close"), "mail"),
    ("mail-garbage", dict(mail_reply="HELLO?"), "mail"),
    ("mail-code-changes", dict(mail_reply="250-2.1.0 Ok\r\n550 5.0.0 changed my mind"), "mail"),
    ("mail-overlong", dict(mail_reply="250 2.1.0 " + "x" * 3000), "mail"),
    ("mail-nul", dict(mail_reply="250 2.1.0 O\x00k"), "mail"),
    ("mail-bare-lf", dict(mail_reply="250 2.1.0 Ok\nand more"), "mail"),
    ("mail-double-reply", dict(mail_reply="250 2.1.0 Ok\r\n250 2.1.0 Ok again"), "rcpt"),
    ("rcpt-garbage", dict(rcpt_default="HELLO?"), "rcpt"),
    ("rcpt-no-code", dict(rcpt_default="Ok"), "rcpt"),
    ("data-garbage", dict(data_reply="HELLO?"), "eod"),   # DATA goes out with the message
    ("data-250-instead-of-354", dict(data_reply="250 2.0.0 Ok"), "eod"),
    ("eod-garbage", dict(at_eod="garbage"), "eod"),
    ("eod-close", dict(at_eod="close"), "eod"),
    ("eod-600", dict(eod_replies=["600 6.0.0 what"]), "eod"),
]


@pytest.mark.parametrize("script,stage", [f[1:] for f in FAULTS], ids=[f[0] for f in FAULTS])
def test_backend_misbehaving_then_healthy(mxfront, fake_backend, script, stage):
    fb = fake_backend(**script)
    mx = mxfront(fb, backend={"timeout": "1s", "connect_timeout": "1s"})
    started = time.monotonic()
    a = attempt_delivery(mx.port, ["r1@dest.example"], SMALL)
    took = time.monotonic() - started
    assert_4xx_never_250(a)
    decisive = [s for s, r in a.steps if r is not None and r.code >= 400]
    assert decisive and decisive[0] == stage, f"first 4xx at {decisive}, want {stage}: {a}"
    assert took < 3.0, f"took {took:.1f}s: an immediate fault waited for a timeout: {a}"
    mx.wait_log(r"\bevent=backend_error\b")
    heal(fb)
    assert_delivers_now(mx, fb)


@pytest.mark.parametrize("script", [dict(greeting=None), dict(after_lhlo="hang")],
                         ids=["no-greeting", "lhlo-hang"])
def test_backend_silent_then_healthy(mxfront, fake_backend, script):
    fb = fake_backend(**script)
    mx = mxfront(fb, backend={"timeout": "1s", "connect_timeout": "1s"})
    a = attempt_delivery(mx.port, ["r1@dest.example"], SMALL)
    assert_4xx_never_250(a)
    assert a.steps[1][1].code == 250, f"EHLO must not fail for the backend: {a}"
    mx.wait_log(r'\bevent=backend_error\b.*\breason="timeout"')
    heal(fb)
    assert_delivers_now(mx, fb)
