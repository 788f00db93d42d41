"""The motivating scenario: a real Postfix relays to mxfront over STARTTLS.

A private Postfix instance (own config and queue directories under /tmp,
every service chroot = n, no smtpd) relays everything to mxfront through
`relayhost`, with `smtp_tls_loglevel = 2` into its own maillog file. Mail is
injected with `sendmail -C DIR`, and must arrive in the real Dovecot with
mxfront's `with ESMTPS (... sni=...)` Received header.

Where the case allows it, Postfix runs at security level `secure` with
`match=` the name the expected certificate serves (a TLS policy entry), so a
wrong certificate makes Postfix defer the message instead of delivering it."""
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

import procs
import tlsclients
import waits

MASTER = "/usr/lib/postfix/sbin/master"
POSTFIX_HELO = "postfix.client.example"
DELIVERY_DEADLINE = 20.0

# every service unprivileged-capable, chroot = n; no smtpd at all
MASTER_CF = """\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""

# queue subdirectories as `postfix set-permissions create-missing` makes
# them (doing it here takes milliseconds instead of 1.6 s)
QUEUE_DIRS = {  # name: (owner, group, mode)
    "active": ("postfix", "root", 0o700), "bounce": ("postfix", "root", 0o700),
    "corrupt": ("postfix", "root", 0o700), "defer": ("postfix", "root", 0o700),
    "deferred": ("postfix", "root", 0o700), "flush": ("postfix", "root", 0o700),
    "hold": ("postfix", "root", 0o700), "incoming": ("postfix", "root", 0o700),
    "private": ("postfix", "root", 0o700), "saved": ("postfix", "root", 0o700),
    "trace": ("postfix", "root", 0o700), "maildrop": ("postfix", "postdrop", 0o730),
    "public": ("postfix", "postdrop", 0o710), "pid": ("root", "root", 0o755),
}


class Postfix:
    """A private Postfix relaying to relay ("[host]:port") with main.cf
    settings main (added to the base ones) and TLS policy lines policy.

    Everything lives in a short directory under /tmp (its unix sockets must
    stay under 107 bytes), removed by cleanup()."""

    def __init__(self, relay, ca_file, main=None, policy=None):
        if os.geteuid() != 0:
            pytest.skip("a private Postfix instance needs root")
        self.dir = Path(tempfile.mkdtemp(prefix="mxfpf-"))
        os.chmod(self.dir, 0o755)
        self.etc, self.spool = self.dir / "etc", self.dir / "spool"
        self.maillog_path = self.dir / "maillog"
        self.etc.mkdir(mode=0o755)
        self.spool.mkdir(mode=0o755)
        data = self.dir / "data"
        data.mkdir(mode=0o700)
        shutil.chown(data, "postfix", "postfix")
        for name, (owner, group, mode) in QUEUE_DIRS.items():
            d = self.spool / name
            d.mkdir()
            shutil.chown(d, owner, group)
            os.chmod(d, mode)
        shutil.copy(ca_file, self.etc / "ca.pem")
        os.chmod(self.etc / "ca.pem", 0o644)
        settings = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.spool),
            "data_directory": str(data),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "myhostname": POSTFIX_HELO,
            "mydomain": "client.example",
            "myorigin": "client.example",
            "mydestination": "",
            "inet_interfaces": "loopback-only",
            "inet_protocols": "ipv4",
            "relayhost": relay,
            "alias_maps": "",
            "alias_database": "",
            "smtp_tls_CAfile": str(self.etc / "ca.pem"),
            "smtp_tls_loglevel": "2",
            "maillog_file": str(self.maillog_path),
            "maillog_file_prefixes": str(self.dir),
            **(main or {}),
        }
        if policy:
            (self.etc / "tls_policy").write_text("".join(f"{ln}\n" for ln in policy))
            settings["smtp_tls_policy_maps"] = f"texthash:{self.etc / 'tls_policy'}"
        (self.etc / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in settings.items()))
        (self.etc / "master.cf").write_text(MASTER_CF)
        # Postfix pauses ~2 s on a main.cf or lookup table written in the last
        # seconds (seen here: posttls-finger, and smtp opening the policy map)
        for f in self.etc.iterdir():
            tlsclients.postfix_backdate(f)
        self.proc = None

    def start(self):
        out = open(self.dir / "master.out", "ab")
        self.proc = subprocess.Popen([MASTER, "-c", str(self.etc), "-d"],
                                     stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                     start_new_session=True)
        out.close()
        waits.wait_until(lambda: self.proc.poll() is not None or
                         "daemon started" in self.maillog(), procs.START_DEADLINE,
                         "Postfix master to start")
        assert self.proc.poll() is None, f"Postfix master exited:\n{self.log()}"

    def sendmail(self, sender, rcpt, message):
        p = subprocess.run(["sendmail", "-C", str(self.etc), "-f", sender, rcpt],
                           input=message, capture_output=True, timeout=20)
        assert p.returncode == 0, f"sendmail: {p.returncode} {p.stdout!r} {p.stderr!r}"

    def flush(self):
        subprocess.run(["postqueue", "-c", str(self.etc), "-f"], capture_output=True, timeout=20)

    def maillog(self):
        try:
            return self.maillog_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_maillog(self, pattern, timeout=5.0):
        rx = re.compile(pattern)
        try:
            return waits.wait_until(lambda: rx.search(self.maillog()), timeout,
                                    f"/{pattern}/ in Postfix's maillog")
        except AssertionError as e:
            raise AssertionError(f"{e}:\n{self.maillog()[-4000:]}") from None

    def log(self):
        out = self.dir / "master.out"
        return (out.read_text(errors="replace") if out.exists() else "") + self.maillog()

    def stop(self):
        """SIGTERM to master (it stops its children), a deadline, then
        SIGKILL to the process group it leads."""
        if self.proc and self.proc.poll() is None:
            procs.stop_process(self.proc)
        if self.proc:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)  # stragglers of our own group
            except ProcessLookupError:
                pass

    def cleanup(self):
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def postfix(request):
    """Factory: postfix(relay, ca_file, main={...}, policy=[...]) -> started
    Postfix; stopped and removed at teardown, its log attached on failure."""
    made = []

    def make(*args, **kwargs):
        pf = Postfix(*args, **kwargs)
        made.append(pf)
        if not hasattr(request.node, "e2e_logs"):
            request.node.e2e_logs = []
        request.node.e2e_logs.append((f"postfix log ({pf.dir})", pf.log))
        pf.start()
        return pf

    yield make
    for pf in made:
        pf.stop()
    for pf in made:
        pf.cleanup()


def message(tag):
    return (f"Subject: via postfix {tag}\nMessage-ID: <{tag}@client.example>\n\n"
            f"relayed by postfix, {tag}\n").encode()


def wait_delivered(dovecot, pf, user, tag):
    """The message tagged tag in user's Maildir (flushing Postfix's queue
    now and then); fails with the Postfix log on the deadline."""
    deadline = time.monotonic() + DELIVERY_DEADLINE
    next_flush = time.monotonic() + 3.0
    while True:
        for m in dovecot.maildir_messages(user):
            if f"<{tag}@client.example>".encode() in m:
                return m
        now = time.monotonic()
        if now >= deadline:
            raise AssertionError(f"message {tag} not delivered to {user} within "
                                 f"{DELIVERY_DEADLINE}s; Postfix log:\n{pf.maillog()[-6000:]}")
        if now >= next_flush:
            pf.flush()
            next_flush = now + 3.0
        time.sleep(waits.POLL)


def mxfront_received(stored, sni):
    m = re.search(rb"Received: from " + re.escape(POSTFIX_HELO.encode()) +
                  rb" \(\[127\.0\.0\.\d+\]\)\n\tby mx\.test\.example \(mxfront\) with ESMTPS "
                  rb"\(TLS1\.[23] [A-Z0-9-]+ sni=" + re.escape(sni.encode()) + rb"\) id ", stored)
    assert m, f"no mxfront Received header with ESMTPS sni={sni}:\n{stored[:1500]!r}"


def postfix_tls_lines(pf, port):
    """(certificate line, connection line) of Postfix's last TLS session."""
    log = pf.maillog()
    cert = re.findall(rf"127\.0\.0\.\d\[127\.0\.0\.\d\]:{port}: subject_CN=(\S+), "
                      r"issuer_CN=([^,]+),", log)
    conn = re.findall(rf"(\w+) TLS connection established to 127\.0\.0\.\d\[127\.0\.0\.\d\]:{port}",
                      log)
    return cert, conn


@pytest.fixture
def setup(mxfront, dovecot, pki, tmp_path):
    certs = pki.install(tmp_path / "certs.d", ["default", "a", "wild-b", "c"])
    m = mxfront(dovecot, server={"listen": "127.0.0.1:0, 127.0.0.2:0 default_cert=mx.c.example"},
                tls={"certs_dir": str(certs)})
    m.port2 = int(m.addresses[1].rsplit(":", 1)[1])
    return m


SNI_SETUPS = {
    # Case A: SNI from main.cf, verified with a policy entry naming the host
    "main.cf-smtp_tls_servername": dict(
        main={"smtp_tls_servername": "mx.a.example"},
        policy=["[127.0.0.1]:{port} secure match=mx.a.example"]),
    # Case A': SNI from the TLS policy entry itself
    "policy-servername": dict(
        policy=["[127.0.0.1]:{port} secure match=mx.a.example servername=mx.a.example"]),
}


@pytest.mark.parametrize("how", list(SNI_SETUPS))
def test_postfix_with_sni_gets_the_named_certificate(setup, dovecot, pki, postfix, how):
    m = setup
    cfg = SNI_SETUPS[how]
    pf = postfix(f"[127.0.0.1]:{m.port}", pki.ca_file, main=cfg.get("main"),
                 policy=[ln.format(port=m.port) for ln in cfg["policy"]])
    pf.sendmail("sender@client.example", "alice@test.example", message("case-a"))
    stored = wait_delivered(dovecot, pf, "alice", "case-a")
    mxfront_received(stored, "mx.a.example")
    m.wait_log(r"event=tls sni=mx\.a\.example cert=a match=exact ")
    cert, conn = postfix_tls_lines(pf, m.port)
    assert cert and cert[-1][0] == "mx.a.example", pf.maillog()[-4000:]
    assert conn and conn[-1] == "Verified", pf.maillog()[-4000:]
    pf.wait_maillog(r"to=<alice@test\.example>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:\d+, .*"
                    r"status=sent \(250 ")


def test_stock_postfix_sends_no_sni_and_gets_the_default(setup, dovecot, pki, postfix):
    """Case B: Postfix as installed (security level may, no servername)."""
    m = setup
    pf = postfix(f"[127.0.0.1]:{m.port}", pki.ca_file,
                 main={"smtp_tls_security_level": "may"})
    pf.sendmail("sender@client.example", "bob@test.example", message("case-b"))
    stored = wait_delivered(dovecot, pf, "bob", "case-b")
    mxfront_received(stored, "none")
    m.wait_log(r"event=tls sni=none cert=default match=default ")
    cert, conn = postfix_tls_lines(pf, m.port)
    assert cert and cert[-1][0] == "mx.test.example", pf.maillog()[-4000:]
    # "Trusted": the chain verified against the test CA (no name check at "may")
    assert conn and conn[-1] == "Trusted", pf.maillog()[-4000:]


def test_postfix_without_sni_on_a_listener_with_its_own_default(setup, dovecot, pki, postfix):
    """One IP address per MX name: Postfix sends no SNI to 127.0.0.2, whose
    listener names mx.c.example as its default, and verifies that name."""
    m = setup
    pf = postfix(f"[127.0.0.2]:{m.port2}", pki.ca_file,
                 main={"smtp_tls_security_level": "may"},
                 policy=[f"[127.0.0.2]:{m.port2} secure match=mx.c.example"])
    pf.sendmail("sender@client.example", "carol@test.example", message("case-c"))
    stored = wait_delivered(dovecot, pf, "carol", "case-c")
    m.wait_log(r"event=tls sni=none cert=c match=listener-default ")
    mxfront_received(stored, "none")
    cert, conn = postfix_tls_lines(pf, m.port2)
    assert cert and cert[-1][0] == "mx.c.example", pf.maillog()[-4000:]
    assert conn and conn[-1] == "Verified", pf.maillog()[-4000:]
