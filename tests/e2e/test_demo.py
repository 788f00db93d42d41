"""contrib/demo, the README's first command, run for real: in the background,
with its own directory and ports, the binary under test (MXFRONT_BIN) instead
of a build. The commands it prints are run as printed, and must show the
certificate each name gets by SNI and deliver over TLS into the Maildir."""
import os
import re
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

import procs
from procs import REPO, sanitizer_report
from waits import free_port, refuses, wait_until

DEMO = REPO / "contrib" / "demo"
READY = re.compile(r"^== ready: mxfront \(pid (\d+)\) on 127\.0\.0\.1:(\d+);", re.M)
# What the demo promises: SNI (None: no SNI) -> certs.d/ directory, key type.
SERVED = {
    "mx.customer-a.example": ("customer-a", "ECDSA"),
    "mx.customer-b.example": ("customer-b", "ECDSA"),
    "mx1.hoster.example": ("hoster", "ECDSA"),
    None: ("hoster", "ECDSA"),
}
RSA_ONLY = ("customer-a-rsa", "RSA-PSS")  # mx.customer-a.example with -sigalgs rsa_*
TABLE_ROW = re.compile(r"^    (\S+) +(\S+) +(\S+) +\d{4}-\d\d-\d\d +-?\d+ (\S+)$", re.M)
MATCH = {"mx.customer-a.example": "exact", "mx.customer-b.example": "wildcard",
         "mx1.hoster.example": "exact", None: "default"}

pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason="needs root (the demo runs Dovecot and drops to nobody)")


class Demo:
    def __init__(self, out):
        self.out = out

    def text(self):
        return self.out.read_text(errors="replace")


@pytest.fixture
def demo(request):
    # Short and outside pytest's 0700 tree: Dovecot's sockets live in it
    # (sun_path limit) and user nobody must reach it.
    d = Path(tempfile.mkdtemp(prefix="mxfdemo-", dir="/tmp"))
    out = d.parent / (d.name + ".out")
    env = dict(os.environ, MXFRONT_DEMO_DIR=str(d), MXFRONT_DEMO_PORT=str(free_port()),
               MXFRONT_DEMO_LMTP_PORT=str(free_port()), MXFRONT_DEMO_METRICS_PORT=str(free_port()),
               MXFRONT_BIN=procs.MXFRONT_BIN)
    with open(out, "wb") as f:
        proc = subprocess.Popen([str(DEMO)], stdin=subprocess.DEVNULL, stdout=f,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)
    demo = Demo(out)
    demo.dir, demo.proc, demo.env = d, proc, env
    if not hasattr(request.node, "e2e_logs"):
        request.node.e2e_logs = []
    request.node.e2e_logs.append(("contrib/demo output", demo.text))
    request.node.e2e_logs.append(("demo's dovecot log",
                                  lambda: (d / "dovecot" / "dovecot.log").read_text()))
    yield demo
    if proc.poll() is None:  # the test failed before stopping it
        code, killed = procs.stop_process(proc, deadline=15)
        if killed:
            os.killpg(proc.pid, signal.SIGKILL)
    shutil.rmtree(d, ignore_errors=True)
    out.unlink(missing_ok=True)


def printed_commands(text, program):
    return [ln.strip() for ln in text.splitlines() if ln.startswith(f"    {program} ")]


def sni_of(cmd):
    m = re.search(r"(?:-servername|--tls-sni) (\S+)", cmd)
    return m.group(1) if m else None


def run(cmd):
    return subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=30)


def served_pem(cmd):
    """The leaf certificate the server sends for the same options, as PEM
    (openssl -showcerts instead of -brief)."""
    p = run(cmd.replace("-brief", "-showcerts"))
    m = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", p.stdout, re.S)
    assert m, f"{cmd}: no certificate in\n{p.stdout}{p.stderr}"
    return m.group(0)


def test_demo_serves_a_certificate_per_name_and_delivers_over_tls(demo):
    def ready():
        if demo.proc.poll() is not None:
            raise AssertionError(f"contrib/demo exited with {demo.proc.returncode}")
        return READY.search(demo.text())
    m = wait_until(ready, timeout=120, what="contrib/demo to print '== ready'")
    mxfront_pid, port = int(m.group(1)), int(m.group(2))
    assert port == int(demo.env["MXFRONT_DEMO_PORT"])
    text = demo.text()

    # The table of names it shows before starting: every name, the default marked.
    table = set(TABLE_ROW.findall(text))
    assert {("*.customer-b.example", "customer-b", "ECDSA-P256", "-"),
            ("mx.customer-a.example", "customer-a", "ECDSA-P256", "-"),
            ("mx.customer-a.example", "customer-a-rsa", "RSA-2048", "-"),
            ("mx1.hoster.example", "hoster", "ECDSA-P256", "default")} <= table, table
    assert "cert_error" not in text and "tls_disabled" not in text, text

    # Which certificate each name gets: the printed openssl commands, as printed.
    shows = printed_commands(text, "openssl")
    assert sorted(map(str, (sni_of(c) for c in shows))) == sorted(
        ["mx.customer-a.example", "mx.customer-a.example", "mx.customer-b.example",
         "mx1.hoster.example", "None"]), shows
    for cmd in shows:
        sni = sni_of(cmd)
        label, sigtype = RSA_ONLY if "-sigalgs rsa" in cmd else SERVED[sni]
        name = sni or "mx1.hoster.example"
        cn = "*.customer-b.example" if label == "customer-b" else name
        p = run(cmd)
        out = p.stdout + p.stderr
        assert p.returncode == 0, f"{cmd}\n{out}"
        assert f"Peer certificate: OU = {label}, CN = {cn}\n" in out, f"{cmd}\n{out}"
        assert f"Signature type: {sigtype}\n" in out, f"{cmd}\n{out}"
        assert "Verification: OK\n" in out and f"Verified peername: {cn}\n" in out, out
        # What was served is the file in certs.d/, byte for byte.
        pem = (demo.dir / "certs.d" / label / "fullchain.pem").read_text()
        served = served_pem(cmd)
        assert served == pem.strip(), f"{cmd}: served certificate differs from {label}"

    # A delivery over TLS per name and without SNI: the printed swaks commands.
    sends = printed_commands(text, "swaks")
    assert sorted(map(str, (sni_of(c) for c in sends))) == sorted(
        ["mx.customer-a.example", "mx.customer-b.example", "mx1.hoster.example", "None"]), sends
    for cmd in sends:
        label, _ = SERVED[sni_of(cmd)]
        p = run(cmd)
        assert p.returncode == 0, f"{cmd}\n{p.stdout}{p.stderr}"
        assert "=== TLS started with cipher TLSv1.3" in p.stdout, p.stdout
        assert f'=== TLS peer DN="/OU={label}/CN=' in p.stdout, p.stdout
        assert re.search(r"^<~  250 2\.0\.0 .*\n ~> QUIT", p.stdout, re.M), p.stdout

    # Each message is in the Maildir, its Received header naming the SNI;
    # the printed grep shows the four.
    new = demo.dir / "mail" / "demo" / "Maildir" / "new"
    assert len(list(new.iterdir())) == 4, list(new.iterdir())
    greps = printed_commands(text, "grep")
    assert len(greps) == 1, greps
    p = run(greps[0])
    snis = sorted(re.findall(r"with ESMTPS \(TLS1\.3 \S+ sni=(\S+)\)", p.stdout))
    assert snis == sorted(["mx.customer-a.example", "mx.customer-b.example",
                           "mx1.hoster.example", "none"]), p.stdout

    # The printed monitoring commands, as printed, count what just happened:
    # each of the 5 openssl commands ran twice (as printed, and with
    # -showcerts), each of the 4 swaks commands once; 4 messages.
    curls = printed_commands(text, "curl")
    assert len(curls) == 2, curls
    p = run(curls[0])
    assert p.returncode == 0, p.stderr
    metrics = dict(ln.rsplit(" ", 1) for ln in p.stdout.splitlines())
    assert metrics['mxfront_messages_total{result="delivered"}'] == "4", p.stdout
    assert metrics['mxfront_sni_hits_total{name="mx.customer-a.example"}'] == "5", p.stdout
    assert metrics['mxfront_sni_hits_total{name="*.customer-b.example"}'] == "3", p.stdout
    assert metrics['mxfront_sni_hits_total{name="mx1.hoster.example"}'] == "3", p.stdout
    handshakes = {k: int(v) for k, v in metrics.items() if k.startswith("mxfront_tls_hand")}
    assert sum(handshakes.values()) == 14, p.stdout
    assert handshakes['mxfront_tls_handshakes_total{result="ok",version="TLS1.3",sni="none",'
                      'match="default"}'] == 3, p.stdout
    p = run(curls[1])
    assert (p.returncode, p.stdout) == (0, "ok\n"), p.stdout + p.stderr
    stats = [c for c in printed_commands(text, procs.MXFRONT_BIN) if " stats senders " in c]
    assert len(stats) == 1, text
    p = run(stats[0])
    assert p.returncode == 0, p.stderr
    # openssl says EHLO mail.example.com (5 commands, twice each: 8 with SNI,
    # 2 without); swaks says the machine's own name.
    rows = [ln.split() for ln in p.stdout.splitlines()[1:]]
    assert ["example.com", "10", "8", "0", "2", "0", "0", "10", "20.0"] in rows, p.stdout
    assert sum(int(r[1]) for r in rows) == 14, p.stdout

    # mxfront's log, shown by the demo, says how each was chosen.
    log = demo.text()
    for sni, (label, _) in SERVED.items():
        want = (f"event=tls sni={sni or 'none'} cert={label} match={MATCH[sni]} ")
        assert want in log, f"no '{want}' in the demo's output"
    assert "event=tls sni=mx.customer-a.example cert=customer-a-rsa match=exact " in log

    # Stopped by its PID: mxfront and Dovecot go with it.
    lmtp = int(demo.env["MXFRONT_DEMO_LMTP_PORT"])
    demo.proc.send_signal(signal.SIGTERM)
    code = demo.proc.wait(timeout=20)
    assert code == 143, code
    assert not os.path.exists(f"/proc/{mxfront_pid}"), "mxfront outlived the demo"
    wait_until(lambda: refuses(port) and refuses(lmtp), timeout=5, what="ports to close")
    text = demo.text()
    assert "event=exit" in text and "== stopping Dovecot" in text, text
    assert not sanitizer_report(text), text

