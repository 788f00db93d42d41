"""mxfront behind a real HAProxy (Debian's haproxy 2.6), issue 13 point 2:
each test starts its own haproxy on loopback (mode tcp, send-proxy-v2,
HAProxy's SMTP health check with check-send-proxy) in front of two mxfront
instances with proxy=v2 listeners. Clients connect from 127.0.0.2,
127.0.0.3, ... to HAProxy; mxfront only ever sees HAProxy's 127.0.0.1, and
must still tell them apart: the per-IP limit, the Received header, XCLIENT
to Dovecot. A SIGHUP of one instance while HAProxy spreads load over both
loses nothing."""
import shutil
import signal
import socket
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import procs
import waits
from dovecotlmtp import split_stored
from smtpclient import SmtpClient, attempt_delivery
from waits import wait_until

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"

pytestmark = pytest.mark.skipif(not Path(HAPROXY).exists(),
                                reason="haproxy is not installed (tests/run installs it)")

HAPROXY_CONF = """\
global
    stats socket {sock} mode 600 level admin
    maxconn 2000
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend smtp
    bind 127.0.0.1:{port}
    default_backend mx
backend mx
    balance {balance}
    # HAProxy's SMTP check: a PROXY v2 LOCAL header, then it wants the 220
    # greeting and a 2xx to its EHLO.
    option smtpchk EHLO haproxy.check.example
{servers}
"""


class Haproxy:
    """haproxy -db (foreground) with its own config, stats socket and log."""

    def __init__(self, workdir, servers, balance="roundrobin"):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.sock = self.dir / "stats.sock"
        self.port = waits.free_port()
        lines = [f"    server {name} 127.0.0.1:{port} send-proxy-v2 check check-send-proxy "
                 f"inter 300 fall 2 rise 1" for name, port in servers]
        self.conf = self.dir / "haproxy.cfg"
        self.conf.write_text(HAPROXY_CONF.format(sock=self.sock, port=self.port, balance=balance,
                                                 servers="\n".join(lines)))
        self.log_path = self.dir / "haproxy.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([HAPROXY, "-db", "-f", str(self.conf)],
                                     stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=self._log)
        try:
            wait_until(lambda: self.proc.poll() is not None or waits.port_accepts("127.0.0.1",
                                                                               self.port),
                       procs.START_DEADLINE, "haproxy to listen")
            assert self.proc.poll() is None, f"haproxy exited:\n{self.log()}"
            names = [name for name, _ in servers]
            wait_until(lambda: all(self.status().get(n) == "UP" for n in names),
                       procs.START_DEADLINE, "haproxy's health checks to find every mxfront UP")
        except BaseException:
            self.stop()
            raise

    def stats(self, command):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(str(self.sock))
            s.sendall(command.encode() + b"\n")
            out = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    return out.decode(errors="replace")
                out += chunk

    def status(self):
        """{server name: status} of backend mx (UP, DOWN, ...)."""
        try:
            text = self.stats("show stat")
        except OSError:
            return {}
        head, *rows = [r for r in text.splitlines() if r]
        cols = head.lstrip("# ").split(",")
        out = {}
        for r in rows:
            f = dict(zip(cols, r.split(",")))
            if f.get("pxname") == "mx" and f.get("svname") not in ("BACKEND", "FRONTEND"):
                out[f["svname"]] = f.get("status", "")
        return out

    def log(self):
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self):
        procs.stop_process(self.proc)
        self._log.close()


@pytest.fixture
def fleet(mxfront, tmp_path, request):
    """Factory: two mxfront instances relaying to TARGET, each with a
    proxy=v2 listener trusting 127.0.0.1, and a haproxy in front of them.
    Returns (haproxy, [mxfront a, mxfront b])."""
    started = []

    def make(target, balance="roundrobin", **sections):
        server = {"listen": "127.0.0.1:0 proxy=v2", "proxy_trusted": "127.0.0.1",
                  **sections.pop("server", {})}
        boxes = [mxfront(target, server=server, **sections) for _ in range(2)]
        hp = Haproxy(tmp_path / "haproxy", [("a", boxes[0].port), ("b", boxes[1].port)],
                     balance)
        started.append(hp)
        request.node.e2e_logs = getattr(request.node, "e2e_logs", [])
        request.node.e2e_logs.append(("haproxy log", hp.log))
        return hp, boxes

    yield make
    for hp in started:
        hp.stop()


def test_health_checks_see_both_instances_up(fleet, fake_backend):
    """HAProxy's smtpchk with check-send-proxy (a v2 LOCAL header, then the
    220 and EHLO) marks both instances UP; each instance saw the checks as
    the load balancer's own connections."""
    hp, boxes = fleet(fake_backend())
    assert hp.status() == {"a": "UP", "b": "UP"}
    for m in boxes:
        m.wait_log(r"event=proxy_local client=127\.0\.0\.1 version=2 command=local")
        assert "event=proxy_error" not in m.log(), m.log()


def test_per_ip_limit_tells_clients_behind_haproxy_apart(fleet, fake_backend):
    """balance source: a client address always reaches the same instance,
    whose per-IP limit (2) then counts that address: 127.0.0.2's third
    connection gets 421, while 127.0.0.3 and 127.0.0.4 are served."""
    hp, boxes = fleet(fake_backend(), balance="source", server={"max_clients_per_ip": "2"})
    held = []
    try:
        for _ in range(2):
            c = SmtpClient("127.0.0.1", hp.port, source="127.0.0.2")
            held.append(c)
            assert c.read_reply().code == 220
        c = SmtpClient("127.0.0.1", hp.port, source="127.0.0.2")
        with c:
            r = c.read_reply()
            assert (r.code, r.enhanced) == (421, "4.7.0") and "from your address" in r.text, r
        for source in ("127.0.0.3", "127.0.0.4"):
            c = SmtpClient("127.0.0.1", hp.port, source=source)
            held.append(c)
            assert c.read_reply().code == 220, source
    finally:
        for c in held:
            c.close()
    logs = "".join(m.log() for m in boxes)
    assert "event=limit kind=max_clients_per_ip" in logs
    for source in ("127.0.0.2", "127.0.0.3", "127.0.0.4"):
        assert f"client={source} " in logs and "proxy=127.0.0.1" in logs, source


def test_received_header_and_dovecot_name_each_real_client(fleet, dovecot):
    """Messages from 127.0.0.2 and 127.0.0.3 through HAProxy (round robin,
    so both instances) into one Dovecot: mxfront's Received header names the
    client's own address, and so does Dovecot's, told through XCLIENT."""
    hp, boxes = fleet(dovecot)
    sources = ["127.0.0.2", "127.0.0.3", "127.0.0.2", "127.0.0.3"]
    for i, source in enumerate(sources):
        a = attempt_delivery(hp.port, ["alice@dest.example"],
                             f"Subject: via haproxy {i} from {source}\r\n\r\nhi\r\n".encode(),
                             helo=f"client{i}.example", source=source)
        assert a.any_250_for_message, str(a)
    stored = dovecot.wait_messages("alice", len(sources))
    seen = set()
    for msg in stored:
        subject = [ln for ln in msg.split(b"\n") if ln.startswith(b"Subject: via haproxy")][0]
        i, source = int(subject.split()[3]), subject.split()[-1].decode()
        parts = split_stored(msg, helo=f"client{i}.example", client_ip=source)
        dovecot_received = [b for name, b in parts.above if name == "Received"]
        assert dovecot_received and f"[{source}]".encode() in dovecot_received[0], parts.above
        seen.add(i)
    assert seen == set(range(len(sources)))
    # both instances carried some of them
    for m in boxes:
        m.wait_log(r"event=transaction ")


def test_sighup_of_one_instance_under_load_loses_nothing(fleet, fake_backend):
    """300 or more one-message sessions from 20 threads through HAProxy
    (round robin over both instances) while instance a gets a SIGHUP every
    0.2 s, until it has reloaded at least 3 times:
    every attempt ends in 250, the backend has exactly one message per
    attempt, and both instances reloaded and served."""
    fb = fake_backend()
    hp, (a, b) = fleet(fb, server={"max_clients_per_ip": "0"})
    stop = threading.Event()

    def hupper():
        while not stop.wait(0.2):
            a.proc.send_signal(signal.SIGHUP)

    t = threading.Thread(target=hupper)
    t.start()
    attempts = []

    def reloads():
        return a.log().count("event=reload result=ok")
    try:
        # At least 300 messages, and on until a has reloaded 3 times under
        # them: a fast machine may send 300 in less than three SIGHUPs.
        with ThreadPoolExecutor(20) as pool:
            while len(attempts) < 300 or (reloads() < 3 and len(attempts) < 3000):
                first = len(attempts)
                attempts += list(pool.map(
                    lambda i: attempt_delivery(hp.port, [f"r{i}@dest.example"],
                                               f"Subject: load {i}\r\n\r\nx\r\n".encode(),
                                               source=f"127.0.0.{2 + i % 50}"),
                    range(first, first + 100)))
    finally:
        stop.set()
        t.join()
    total = len(attempts)
    failed = [str(x) for x in attempts if not x.any_250_for_message]
    assert not failed, f"{len(failed)} of {total} failed, e.g. {failed[0]}"
    wait_until(lambda: sum(len(c.messages) for c in fb.connections) == total, 10.0,
               f"{total} messages at the backend")
    subjects = sorted(int(m.split(b"Subject: load ")[1].split(b"\r\n")[0])
                      for c in fb.connections for m in c.messages)
    assert subjects == list(range(total)), "a message is missing or doubled"
    assert reloads() >= 3, f"only {reloads()} reloads during the run"
    for m in (a, b):
        assert len(m.wait_log(r"event=transaction ", count=50)) >= 50
