"""Graceful stop on SIGTERM/SIGINT: no new connections; idle sessions get
`421 4.3.2` at once; a transaction in progress may finish within
[server] shutdown_timeout and is cut before its final dot after it; a message
whose final dot was sent is waited for; then exit 0."""
import os
import signal
import threading
import time

import pytest

from dovecotlmtp import lf
from smtpclient import SmtpClient, dot_stuff, open_transaction, smtp_session
from waits import refuses, wait_until


def assert_421_shutdown(r, what):
    assert r.code == 421 and r.enhanced == "4.3.2", f"{what}: expected 421 4.3.2, got {r}"
    assert "shutting down" in r.text.lower(), f"{what}: {r}"


def body_of(token, lines):
    head = [f"Subject: stop test {token}".encode(), f"X-Token: {token}".encode(), b""]
    return b"\r\n".join(head + [f"{token} {i:06d} ".encode() + b"x" * 60
                                for i in range(lines)]) + b"\r\n"


def stored_body(stored, body):
    first = lf(body).split(b"\n", 1)[0]
    i = stored.find(first)
    assert i >= 0, stored[:1000]
    return stored[i:]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_idle_sessions_get_421_at_once_and_exit_0(mxfront, fake_backend, sig):
    mx = mxfront(fake_backend(), server={"shutdown_timeout": "20s"})
    greeted = SmtpClient("127.0.0.1", mx.port)   # only the greeting read
    assert greeted.read_reply().code == 220
    helloed, _ = smtp_session(mx)                # after EHLO
    after_rset, _ = smtp_session(mx)             # after a transaction was started and reset
    assert after_rset.cmd("MAIL FROM:<s@client.example>").code == 250
    assert after_rset.cmd("RSET").code == 250
    t0 = time.monotonic()
    os.kill(mx.pid, sig)
    name = "TERM" if sig == signal.SIGTERM else "INT"
    mx.wait_log(rf"\bevent=stop signal={name} sessions=3\b")
    for c, what in ((greeted, "greeted"), (helloed, "after EHLO"), (after_rset, "after RSET")):
        with c:
            c.sock.settimeout(5)
            assert_421_shutdown(c.read_reply(), what)
            assert c.wait_closed(5), f"{what}: connection left open after the 421"
    # "at once": far sooner than the 20 s a transaction would be given
    assert time.monotonic() - t0 < 3, f"idle sessions waited {time.monotonic() - t0:.1f}s"
    assert mx.wait_exit(5) == 0, mx.log()[-2000:]


def test_transaction_in_progress_finishes_within_shutdown_timeout(dovecot, mxfront):
    mx = mxfront(dovecot, server={"shutdown_timeout": "10s"})
    body = body_of("finishes", 2000)
    wire = dot_stuff(body)
    busy = open_transaction(mx)
    idle, _ = smtp_session(mx)
    with busy, idle:
        busy.send(wire[: len(wire) // 2])
        os.kill(mx.pid, signal.SIGTERM)
        mx.wait_log(r"\bevent=stop signal=TERM sessions=2\b")
        assert_421_shutdown(idle.read_reply(), "idle session")
        # No new connection once the stop began.
        wait_until(lambda: refuses(mx.port), 3, "the listening socket to be closed")
        busy.send(wire[len(wire) // 2:] + b".\r\n")
        r = busy.read_reply()
        assert r.code == 250, f"a transaction in progress was not allowed to finish: {r}"
        # Now idle: the session is closed with the same 421.
        assert_421_shutdown(busy.read_reply(), "after the finished transaction")
        assert busy.wait_closed(5)
    assert mx.wait_exit(5) == 0, mx.log()[-2000:]
    [stored] = dovecot.wait_messages("alice", 1)
    assert stored_body(stored, body) == lf(body)
    assert "event=shutdown_timeout" not in mx.log()


def test_stalled_data_is_cut_before_its_final_dot_after_shutdown_timeout(mxfront, fake_backend):
    fb = fake_backend()
    mx = mxfront(fb, server={"shutdown_timeout": "1s"})
    c = open_transaction(mx, "r1@dest.example")
    with c:
        # Longer than mxfront holds back: the backend is inside DATA.
        c.send(b"Subject: stalled\r\n\r\n" + b"the rest never comes\r\n" * 3000)
        [conn] = wait_until(lambda: fb.used, 5.0, "a transaction at the backend")
        wait_until(lambda: b"the rest never comes" in bytes(conn.received), 5,
                   "the partial message at the backend")
        t0 = time.monotonic()
        os.kill(mx.pid, signal.SIGTERM)
        c.sock.settimeout(8)
        r = c.read_reply()
        waited = time.monotonic() - t0
        assert_421_shutdown(r, "stalled DATA")
        assert 0.8 <= waited < 4, f"cut after {waited:.2f}s with shutdown_timeout = 1s"
        assert c.wait_closed(5)
    mx.wait_log(r"\bevent=shutdown_timeout\b")
    wait_until(conn.eof.is_set, 5, "mxfront to drop its backend connection")
    assert conn.messages == [], conn.messages
    assert b"\r\n.\r\n" not in bytes(conn.received), bytes(conn.received)[-200:]
    assert mx.wait_exit(5) == 0, mx.log()[-2000:]


def test_message_whose_final_dot_was_sent_is_waited_for(mxfront, fake_backend):
    """shutdown_timeout never cuts a message the client has finished sending:
    the backend may be delivering it; the client gets the backend's verdict."""
    backend = fake_backend(at_eod="gate")
    mx = mxfront(backend, server={"shutdown_timeout": "1s"})
    c = open_transaction(mx, "r1@dest.example")
    with c:
        c.send(b"Subject: sent whole\r\n\r\nall of it\r\n.\r\n")
        assert backend.got_dot.wait(5), "the message never reached the backend"
        os.kill(mx.pid, signal.SIGTERM)
        mx.wait_log(r"\bevent=shutdown_timeout\b", timeout=5)
        assert mx.proc.poll() is None, "mxfront exited with a delivery outstanding"
        backend.release()
        c.sock.settimeout(5)
        r = c.read_reply()
        assert r.code == 250, f"the backend's verdict was not passed on: {r}"
        assert_421_shutdown(c.read_reply(), "after the verdict")
    assert mx.wait_exit(5) == 0, mx.log()[-2000:]
    [conn] = [x for x in backend.connections if x.messages]
    assert len(conn.messages) == 1 and conn.messages[0].endswith(b"\r\nall of it\r\n.\r\n"), \
        conn.messages


def test_sigterm_during_transfers_each_message_whole_or_4xx(dovecot, mxfront):
    """Three clients streaming when SIGTERM comes: a fast one finishes (250 and
    stored whole), one that needs longer than shutdown_timeout is cut (421,
    nothing stored), one in between gets either; never a 250 for a message
    that is not stored whole, never a stored message the client got 4xx for."""
    mx = mxfront(dovecot, server={"shutdown_timeout": "2s"})
    # (user, lines, lines per chunk, pause between chunks): fast needs ~0.1 s,
    # middle ~1.5-2.5 s, slow ~5 s after the signal.
    plans = {"alice": (3000, 500, 0.01), "bob": (2000, 100, 0.1), "carol": (2000, 40, 0.1)}
    results, errors = {}, []
    started = threading.Barrier(len(plans) + 1)
    go = threading.Event()

    def client(user, lines, per_chunk, pause):
        body = body_of(user, lines)
        chunks = body.split(b"\r\n")
        try:
            c = open_transaction(mx, f"{user}@dest.example")
            with c:
                c.sock.settimeout(10)
                c.send(dot_stuff(b"\r\n".join(chunks[:per_chunk]) + b"\r\n"))
                started.wait(5)
                go.wait(5)
                rest = chunks[per_chunk:-1]
                try:
                    for i in range(0, len(rest), per_chunk):
                        c.send(dot_stuff(b"\r\n".join(rest[i:i + per_chunk]) + b"\r\n"))
                        time.sleep(pause)
                    c.send(b".\r\n")
                except OSError:
                    pass  # cut while sending: the 421 is already buffered
                results[user] = (c.read_reply(), body)
        except Exception as e:
            errors.append(f"{user}: {e!r}")

    threads = [threading.Thread(target=client, args=(u, *p), daemon=True) for u, p in plans.items()]
    for t in threads:
        t.start()
    started.wait(5)
    os.kill(mx.pid, signal.SIGTERM)
    mx.wait_log(r"\bevent=stop signal=TERM sessions=3\b")
    go.set()
    for t in threads:
        t.join(15)
    assert not errors, errors
    assert mx.wait_exit(8) == 0, mx.log()[-2000:]
    assert set(results) == set(plans), results
    for user, (r, body) in results.items():
        stored = dovecot.maildir_messages(user)
        if r.code == 250:
            assert len(stored) == 1, f"{user}: 250 but {len(stored)} stored"
            assert stored_body(stored[0], body) == lf(body), f"{user}: stored message differs"
        else:
            assert r.code // 100 == 4, f"{user}: {r}"
            assert stored == [], f"{user}: got {r} but a message was stored"
    assert results["alice"][0].code == 250, results["alice"][0]
    assert_421_shutdown(results["carol"][0], "carol (slower than shutdown_timeout)")


def test_stop_while_a_reload_is_being_built_exits_0(mxfront, fake_backend):
    """SIGTERM right behind a SIGHUP: the reload's worker may still be running
    when the listener is gone; the daemon must wait for it, then exit 0."""
    mx = mxfront(fake_backend())
    c, _ = smtp_session(mx)
    with c:
        os.kill(mx.pid, signal.SIGHUP)
        os.kill(mx.pid, signal.SIGTERM)
        assert_421_shutdown(c.read_reply(), "idle session")
    assert mx.wait_exit(5) == 0, mx.log()[-2000:]


def test_sighup_during_a_graceful_stop_is_ignored(mxfront, fake_backend):
    mx = mxfront(fake_backend(), server={"shutdown_timeout": "5s"})
    c = open_transaction(mx, "r1@dest.example")
    with c:
        c.send(b"Subject: x\r\n\r\nbody\r\n")
        os.kill(mx.pid, signal.SIGTERM)
        mx.wait_log(r"\bevent=stop\b")
        os.kill(mx.pid, signal.SIGHUP)
        c.send(b".\r\n")
        assert c.read_reply().code == 250
        assert_421_shutdown(c.read_reply(), "after the transaction")
    assert mx.wait_exit(5) == 0, mx.log()[-2000:]
    assert "event=reload" not in mx.log(), mx.log()
