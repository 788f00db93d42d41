"""SIGHUP: the configuration and certs.d/ are reloaded beside the running
generation and installed only if everything needed loaded; new connections get
the new generation, sessions in progress keep theirs to their end; listeners
are opened and closed as the new `listen` says; a certificate that fails to
load keeps the name's last good one."""
import os
import re
import shutil
import signal
import socket
import threading
from collections import Counter

import pytest

from certs import install_cert, make_cert
from dovecotlmtp import lf
from procs import HOSTNAME, field_of, hup, hup_ok, mxfront_config, write_config
from smtpclient import SmtpClient, dot_stuff, open_transaction
from tlsclients import assert_served, served_cert, tls_session
from waits import free_port, refuses, wait_until

DEFAULT_NAME = HOSTNAME  # the default certificate serves [server] hostname


class Certs:
    """A certs.d/ in the test's tmp dir with a default certificate, and every
    certificate the test made (to name what a client was served)."""

    def __init__(self, tmp_path):
        self.dir = tmp_path / "certs.d"
        self.dir.mkdir()
        self.scratch = tmp_path / "scratch"
        self.known = []
        self.serial = 0x100
        self.default = self.make([DEFAULT_NAME])
        self.install("default", self.default)

    def make(self, names):
        self.serial += 1
        c = make_cert(self.scratch, names, self.serial)
        self.known.append(c)
        return c

    def install(self, label, cert, **broken):
        install_cert(self.dir, label, cert, **broken)

    def assert_served(self, mx, sni, want):
        assert_served(mx.port, sni, want, self.known)


@pytest.fixture
def certs(tmp_path):
    return Certs(tmp_path)


def tls_overrides(certs, **tls):
    return {"certs_dir": str(certs.dir), **tls}


def rewrite_config(mx, sections):
    """Replaces mx's configuration file atomically; returns the line numbers
    of its keys (see procs.write_config)."""
    tmp = mx.conf.with_name(".mxfront.conf.new")
    where = write_config(tmp, sections)
    os.replace(tmp, mx.conf)
    return where


def message(token, size_lines=40):
    lines = [f"Subject: reload test {token}".encode(), f"X-Token: {token}".encode(), b""]
    lines += [f"{token} line {i:04d} ................................".encode()
              for i in range(size_lines)]
    return b"\r\n".join(lines) + b"\r\n"


def stored_body(stored, body):
    """The part of a stored message from the first line the client sent; the
    headers the backend and mxfront added come before it."""
    first = lf(body).split(b"\n", 1)[0]
    i = stored.find(first)
    assert i >= 0, f"{first!r} not in stored message:\n{stored[:1500]!r}"
    return stored[i:]


# --------------------------------------------------------------------------
# certificates

def test_replaced_certificate_reaches_new_connections_while_a_tls_session_mid_data_completes(
        dovecot, mxfront, certs):
    a1, a2 = certs.make(["mx.a.example"]), certs.make(["mx.a.example"])
    certs.install("a", a1)
    overrides = {"tls": tls_overrides(certs, default_cert=DEFAULT_NAME)}
    mx = mxfront(dovecot, **overrides)
    sections = mxfront_config(dovecot.address, overrides)
    certs.assert_served(mx, "mx.a.example", a1)

    body = message("midreload", 400)
    half = len(body) // 2
    wire = dot_stuff(body)
    c = tls_session(mx.port, "mx.a.example")
    with c:
        assert c.sock.getpeercert(binary_form=True) == a1.der
        open_transaction(c)
        c.send(wire[:half])

        certs.install("a", a2)
        sections["server"]["hostname"] = "mx.renamed.example"
        rewrite_config(mx, sections)
        line = hup_ok(mx)
        assert field_of(line, "generation") == "2", line
        certs.assert_served(mx, "mx.a.example", a2)
        certs.assert_served(mx, None, certs.default)
        with SmtpClient("127.0.0.1", mx.port) as new:
            assert new.read_reply().first == "220 mx.renamed.example ESMTP mxfront"

        # The old session still holds generation 1 and its TLS session.
        c.send(wire[half:] + b".\r\n")
        r = c.read_reply()
        assert r.code == 250, f"end of data after the reload: {r}"
        assert c.cmd("QUIT").code == 221
    [stored] = dovecot.wait_messages("alice", 1)
    assert stored_body(stored, body) == lf(body), "message changed across the reload"
    # Its Received header comes from the generation the session started with.
    assert re.search(rb"\n\tby mx\.test\.example \(mxfront\) with ESMTPS", stored), \
        stored[:800]


def test_added_directory_is_served_and_removed_directory_is_not(mxfront, fake_backend, certs):
    a = certs.make(["mx.a.example"])
    certs.install("a", a)
    mx = mxfront(fake_backend(), tls=tls_overrides(certs))
    certs.assert_served(mx, "mx.b.example", certs.default)

    b = certs.make(["mx.b.example", "*.b.example"])
    certs.install("b", b)
    line = hup_ok(mx)
    assert field_of(line, "certs") == "3" and field_of(line, "problems") == "0", line
    certs.assert_served(mx, "mx.b.example", b)
    certs.assert_served(mx, "smtp.b.example", b)
    certs.assert_served(mx, "mx.a.example", a)

    shutil.rmtree(certs.dir / "a")
    line = hup_ok(mx)
    assert field_of(line, "certs") == "2", line
    certs.assert_served(mx, "mx.a.example", certs.default)
    certs.assert_served(mx, "mx.b.example", b)


# (what is broken, how to write it) -> the file the error must name
def truncated_fullchain(certs, new):
    certs.install("a", new, fullchain=new.fullchain[: len(new.fullchain) // 2])
    return "fullchain.pem"


def mismatched_key(certs, new):
    other = certs.make(["mx.a.example"])
    certs.install("a", new, privkey=other.privkey)
    return None  # certstore may blame either file of the pair


def missing_key(certs, new):
    certs.install("a", new)
    (certs.dir / "a" / "privkey.pem").unlink()
    return "privkey.pem"


@pytest.mark.parametrize("break_it", [truncated_fullchain, mismatched_key, missing_key])
def test_certificate_failing_on_reload_keeps_the_last_good_one(mxfront, fake_backend, certs,
                                                               break_it):
    """A renewal caught mid-copy (or a key that does not fit) must not take the
    name's certificate away: the old one is still served and the problem is
    logged with the file."""
    a1 = certs.make(["mx.a.example"])
    certs.install("a", a1)
    b = certs.make(["mx.b.example"])
    certs.install("b", b)
    mx = mxfront(fake_backend(), tls=tls_overrides(certs))
    certs.assert_served(mx, "mx.a.example", a1)

    blamed = break_it(certs, certs.make(["mx.a.example"]))
    line = hup(mx)
    errors = mx.wait_log(r"\bevent=cert_error\b.*\bfile=\S*/a(/|\b)")
    if blamed:
        assert any(f"/a/{blamed}" in m.string for m in errors), [m.string for m in errors]
    assert "result=ok" in line, f"one bad certificate must not fail the whole reload: {line}"
    certs.assert_served(mx, "mx.a.example", a1)
    certs.assert_served(mx, "mx.b.example", b)
    certs.assert_served(mx, None, certs.default)


def test_broken_default_certificate_on_reload_keeps_serving_the_old_one(mxfront, fake_backend,
                                                                       certs):
    mx = mxfront(fake_backend(), tls=tls_overrides(certs))
    new = certs.make([DEFAULT_NAME])
    certs.install("default", new, fullchain=new.fullchain[:100])
    hup(mx)
    mx.wait_log(r"\bevent=cert_error\b.*/default/fullchain\.pem")
    certs.assert_served(mx, None, certs.default)
    certs.assert_served(mx, DEFAULT_NAME, certs.default)
    # and once the copy is complete, the new one is taken
    certs.install("default", new)
    hup_ok(mx)
    certs.assert_served(mx, None, new)


# --------------------------------------------------------------------------
# configuration

def test_config_typo_on_reload_keeps_the_running_configuration(mxfront, fake_backend, certs):
    fb = fake_backend()
    # The default certificate is named: renaming the host keeps it valid.
    overrides = {"tls": tls_overrides(certs, default_cert=DEFAULT_NAME)}
    mx = mxfront(fb, **overrides)
    sections = mxfront_config(fb.address, overrides)
    with SmtpClient("127.0.0.1", mx.port) as c:
        assert c.read_reply().first == f"220 {DEFAULT_NAME} ESMTP mxfront"

    sections["server"]["hostname"] = "mx.renamed.example"
    sections["server"]["max_clientz"] = "10"
    where = rewrite_config(mx, sections)
    line = hup(mx)
    assert "result=failed" in line, line
    reason = field_of(line, "reason")
    lineno = where[("server", "max_clientz")]
    assert re.match(rf"{re.escape(str(mx.conf))}:{lineno}: (\[server\] )?max_clientz: ",
                    reason), f"reason should be '{mx.conf}:{lineno}: max_clientz: ...': {line}"
    assert field_of(line, "generation") == "1", line
    assert "kept the running configuration" in line, line
    with SmtpClient("127.0.0.1", mx.port) as c:
        assert c.read_reply().first == f"220 {DEFAULT_NAME} ESMTP mxfront"
        assert c.cmd("EHLO client.example").code == 250
        assert c.cmd("MAIL FROM:<s@client.example>").code == 250
    certs.assert_served(mx, None, certs.default)

    # The same file without the typo is taken: the failed reload really read it.
    del sections["server"]["max_clientz"]
    rewrite_config(mx, sections)
    line = hup_ok(mx)
    assert field_of(line, "generation") == "2", line
    with SmtpClient("127.0.0.1", mx.port) as c:
        assert c.read_reply().first == "220 mx.renamed.example ESMTP mxfront"


@pytest.mark.skipif(os.geteuid() != 0, reason="the tests run as root only with user = root")
def test_user_change_on_reload_is_refused_until_a_restart(mxfront, fake_backend):
    """Privileges were dropped at start; a reload cannot switch users. The
    rest of the configuration is taken, with a warning."""
    fb = fake_backend()
    mx = mxfront(fb)
    sections = mxfront_config(fb.address)
    sections["server"]["user"] = "nobody"
    sections["server"]["hostname"] = "mx.renamed.example"
    rewrite_config(mx, sections)
    hup_ok(mx)
    mx.wait_log(r'\bevent=reload_warning reason="user/group changes need a restart"')
    uid = re.search(r"^Uid:\s+(\d+)", open(f"/proc/{mx.pid}/status").read(), re.M).group(1)
    assert uid == "0", f"uid {uid}"
    with SmtpClient("127.0.0.1", mx.port) as c:
        assert c.read_reply().first == "220 mx.renamed.example ESMTP mxfront"


def test_reload_without_default_certificate_fails_and_keeps_running(mxfront, fake_backend, certs):
    fb = fake_backend()
    overrides = {"tls": tls_overrides(certs)}
    mx = mxfront(fb, **overrides)
    sections = mxfront_config(fb.address, overrides)
    sections["tls"]["default_cert"] = "mx.nowhere.example"
    rewrite_config(mx, sections)
    line = hup(mx)
    assert "result=failed" in line and "mx.nowhere.example" in line, line
    certs.assert_served(mx, None, certs.default)


def test_burst_of_hups_coalesces_and_ends_on_the_newest_files(mxfront, fake_backend, certs):
    """Signals arriving while a reload is being built are not lost: one more
    reload follows, which sees the files as they are at the end."""
    a = [certs.make(["mx.a.example"]) for _ in range(3)]
    certs.install("a", a[0])
    mx = mxfront(fake_backend(), tls=tls_overrides(certs))
    for cert in a[1:]:
        certs.install("a", cert)
        os.kill(mx.pid, signal.SIGHUP)
    os.kill(mx.pid, signal.SIGHUP)
    # However the signals were merged, the last one came after the last
    # change: some reload must end up with a[2].
    wait_until(lambda: served_cert(mx.port, "mx.a.example") == a[2].der, 10,
               "the certificate installed before the last SIGHUP to be served")
    assert "result=failed" not in mx.log()
    certs.assert_served(mx, "mx.a.example", a[2])


# --------------------------------------------------------------------------
# listeners

def address_lines(mx):
    return mx.addr_file.read_text().split()


def greets(port):
    with SmtpClient("127.0.0.1", port, timeout=5) as c:
        return c.read_reply().code == 220


def test_listeners_opened_and_closed_on_reload(mxfront, fake_backend):
    fb = fake_backend()
    mx = mxfront(fb)
    sections = mxfront_config(fb.address)
    first = mx.port
    assert address_lines(mx) == [f"127.0.0.1:{first}"]

    second = free_port()
    sections["server"]["listen"] = f"127.0.0.1:0, 127.0.0.1:{second}"
    rewrite_config(mx, sections)
    line = hup_ok(mx)
    assert field_of(line, "listeners") == "2", line
    mx.wait_log(rf"\bevent=listener_opened listen=127\.0\.0\.1:{second}\b")
    # The unchanged `127.0.0.1:0` kept its socket, hence its port.
    assert address_lines(mx) == [f"127.0.0.1:{first}", f"127.0.0.1:{second}"]
    assert greets(first) and greets(second)

    # A session on the listener about to go away outlives it.
    old = SmtpClient("127.0.0.1", first)
    with old:
        assert old.read_reply().code == 220
        assert old.cmd("EHLO client.example").code == 250
        sections["server"]["listen"] = f"127.0.0.1:{second}"
        rewrite_config(mx, sections)
        line = hup_ok(mx)
        assert field_of(line, "listeners") == "1", line
        mx.wait_log(r"\bevent=listener_closed listen=127\.0\.0\.1:0\b")
        assert address_lines(mx) == [f"127.0.0.1:{second}"]
        wait_until(lambda: refuses(first), 3, f"port {first} to refuse after its listener was removed")
        assert greets(second)
        assert old.cmd("NOOP").code == 250
        open_transaction(old, "r@dest.example", sender="s@client.example")
        old.send(b"Subject: on a closed listener\r\n\r\nbody\r\n.\r\n")
        assert old.read_reply().code == 250
        assert old.cmd("QUIT").code == 221


def test_listener_that_cannot_be_bound_fails_the_reload(mxfront, fake_backend):
    fb = fake_backend()
    mx = mxfront(fb)
    sections = mxfront_config(fb.address)
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    with busy:
        other = free_port()
        sections["server"]["listen"] = f"127.0.0.1:0, 127.0.0.1:{other}, 127.0.0.1:{port}"
        rewrite_config(mx, sections)
        line = hup(mx)
        assert "result=failed" in line and f"127.0.0.1:{port}" in line, line
        assert address_lines(mx) == [f"127.0.0.1:{mx.port}"]
        assert greets(mx.port)
        # Nothing of the failed reload stays open.
        wait_until(lambda: refuses(other), 3, f"port {other} of the failed reload to refuse")


# --------------------------------------------------------------------------
# reloads under load

N_SENDERS = 4
PER_CONNECTION = 5
CONNECTIONS_PER_SENDER = 5
N_RELOADS = 20


def test_twenty_reloads_under_a_steady_stream_lose_nothing(dovecot, mxfront, certs):
    """Every message the client got 250 for is stored exactly once, no reply
    is a 4xx/5xx, no connection is refused, while 20 reloads (each swapping a
    certificate and changing the configuration) happen in between."""
    a = [certs.make(["mx.a.example"]), certs.make(["mx.a.example"])]
    certs.install("a", a[0])
    overrides = {"tls": tls_overrides(certs)}
    mx = mxfront(dovecot, **overrides)
    sections = mxfront_config(dovecot.address, overrides)
    users = ("alice", "bob", "carol")
    total = N_SENDERS * CONNECTIONS_PER_SENDER * PER_CONNECTION
    sent = []           # (user, token, body) that got 250
    failures = []
    lock = threading.Lock()
    progress = threading.Semaphore(0)
    stop = threading.Event()

    def sender(k):
        use_tls = k % 2 == 1
        for conn_no in range(CONNECTIONS_PER_SENDER):
            if stop.is_set():
                return
            try:
                if use_tls:
                    c = tls_session(mx.port, "mx.a.example")
                else:
                    c = SmtpClient("127.0.0.1", mx.port)
                    r = c.read_reply()
                    assert r.code == 220, r
                    assert c.cmd("EHLO client.example").code == 250
            except Exception as e:
                with lock:
                    failures.append(f"sender {k} connection {conn_no}: {e!r}")
                stop.set()
                return
            with c:
                for i in range(PER_CONNECTION):
                    token = f"s{k}c{conn_no}m{i}"
                    user = users[(k + i) % len(users)]
                    body = message(token)
                    steps = []
                    try:
                        for cmd, want in ((f"MAIL FROM:<{token}@client.example>", 250),
                                          (f"RCPT TO:<{user}@dest.example>", 250),
                                          ("DATA", 354)):
                            r = c.cmd(cmd)
                            steps.append(str(r))
                            assert r.code == want, f"{cmd}: {r}"
                        c.send(dot_stuff(body) + b".\r\n")
                        r = c.read_reply()
                        steps.append(str(r))
                        assert r.code == 250, f"end of data: {r}"
                    except Exception as e:
                        with lock:
                            failures.append(f"{token}: {e!r} after {steps}")
                        stop.set()
                        return
                    with lock:
                        sent.append((user, token, body))
                    progress.release()
                try:
                    c.cmd("QUIT")
                except Exception:
                    pass

    probes = []

    def prober():
        """New connections all along the reloads: each must be greeted."""
        while not stop.is_set() and len(probes) < 5000:
            try:
                with SmtpClient("127.0.0.1", mx.port, timeout=5) as c:
                    r = c.read_reply()
                    probes.append(r.code)
                    if r.code != 220:
                        raise AssertionError(f"greeting {r}")
            except Exception as e:
                with lock:
                    failures.append(f"probe connection {len(probes)}: {e!r}")
                stop.set()
                return

    threads = [threading.Thread(target=sender, args=(k,), daemon=True) for k in range(N_SENDERS)]
    for t in threads:
        t.start()
    probe = threading.Thread(target=prober, daemon=True)
    probe.start()
    try:
        # Spread the reloads over the stream: one after every few messages.
        step = max(1, total // (N_RELOADS + 4))
        for n in range(N_RELOADS):
            for _ in range(step):
                assert progress.acquire(timeout=15), f"no message progress; failures: {failures}"
            assert not failures, failures
            certs.install("a", a[(n + 1) % 2])
            sections["server"]["max_errors"] = str(20 + n % 2)
            rewrite_config(mx, sections)
            line = hup_ok(mx)
            assert field_of(line, "generation") == str(n + 2), line
    finally:
        for t in threads:
            t.join(timeout=30)
        stop.set()
        probe.join(timeout=10)
    assert not failures, failures
    assert len(probes) >= N_RELOADS, f"only {len(probes)} probe connections"
    assert len(sent) == total, f"{len(sent)} of {total} messages got 250"
    assert all(not t.is_alive() for t in threads)
    # A new connection gets the certificate of the last reload.
    certs.assert_served(mx, "mx.a.example", a[N_RELOADS % 2])

    for user in users:
        want = sorted(tok for u, tok, _ in sent if u == user)
        stored = dovecot.wait_messages(user, len(want), timeout=15)
        tokens = sorted(re.search(rb"^X-Token: (\S+)$", s, re.M).group(1).decode()
                        for s in stored)
        counts = Counter(tokens)
        assert tokens == want, (f"{user}: stored tokens differ from those that got 250: "
                                f"missing {sorted(set(want) - set(tokens))}, "
                                f"unexpected {sorted(set(tokens) - set(want))}, "
                                f"duplicated {sorted(t for t, n in counts.items() if n > 1)}")
        bodies = {tok: body for u, tok, body in sent if u == user}
        for s in stored:
            tok = re.search(rb"^X-Token: (\S+)$", s, re.M).group(1).decode()
            assert stored_body(s, bodies[tok]) == lf(bodies[tok]), f"{tok} changed"
    assert "event=reload result=failed" not in mx.log()
    assert not re.search(r"\bevent=(accept_error|tls_error)\b", mx.log()), mx.log()[-3000:]
