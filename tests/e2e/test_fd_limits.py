"""Running out of file descriptors (DESIGN.md promise 5): mxfront under a low
RLIMIT_NOFILE, flooded with more idle clients than it has descriptors for,
with one worker and with two (threads share one descriptor table). It must
pause accepting instead of spinning, keep its log small, keep serving the
sessions it has, serve the clients that waited in the kernel's backlog once
descriptors free up, and stop on SIGTERM throughout."""
import os
import socket
import time

import pytest

from smtpclient import attempt_delivery, smtp_session
from waits import wait_until

# soft = hard: mxfront raises its soft limit to the hard one at start, so the
# hard limit is what a test must lower.
NOFILE = 256
FLOOD = 400        # more than fit; the rest wait in the listening sockets' backlog
WINDOW = 3.0       # seconds during which CPU and log growth are measured
# CPU mxfront may use in WINDOW while the flood sits: a worker that spins on
# accept burns the whole window; one that pauses wakes a few times a second.
CPU_BOUND = 0.3
LOG_BOUND = 8192   # bytes of log in WINDOW: a few event=limit lines
TICKS = os.sysconf("SC_CLK_TCK")
BODY = b"Subject: fd limits\r\n\r\nsent while descriptors ran out\r\n"


def cpu_seconds(pid):
    """utime + stime of pid (all its threads), from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def open_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def log_bytes(mx):
    return mx.log_path.stat().st_size


class Flood:
    """N clients that connect and sit. Each one's state is "waiting" (no byte
    yet: accepted but not greeted, or still in the backlog), "greeted" (got
    the 220), "closed" (by mxfront: EOF or reset, with or without bytes) or
    "left" (closed by the test)."""

    def __init__(self, port, n):
        self.socks, self.bufs, self.state = [], [], []
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.setblocking(False)
            self.socks.append(s)
            self.bufs.append(b"")
            self.state.append("waiting")

    def poll(self):
        """Reads what arrived; returns {state: count}."""
        for i, s in enumerate(self.socks):
            while self.state[i] in ("waiting", "greeted"):
                try:
                    chunk = s.recv(4096)
                except BlockingIOError:
                    break
                except OSError:
                    chunk = b""
                if not chunk:
                    self.state[i] = "closed"
                    break
                self.bufs[i] += chunk
                if self.bufs[i].startswith(b"220 ") and b"\r\n" in self.bufs[i]:
                    self.state[i] = "greeted"
        counts = {"waiting": 0, "greeted": 0, "closed": 0, "left": 0}
        for st in self.state:
            counts[st] += 1
        return counts

    def leave(self, state):
        """Closes the clients in state; returns how many."""
        n = 0
        for i, s in enumerate(self.socks):
            if self.state[i] == state:
                s.close()
                self.state[i] = "left"
                n += 1
        return n

    def close(self):
        for s in self.socks:
            s.close()


def start_flooded(mxfront, backend, workers):
    """mxfront with NOFILE descriptors, room for every client as far as
    max_clients goes (descriptors are what runs out), and a session that
    opened a transaction before the flood; then the flood, once mxfront has
    used up its descriptors. Returns mxfront, that session, the flood and
    when the flood began."""
    mx = mxfront(backend, nofile=NOFILE,
                 server={"workers": str(workers), "max_clients": "1000",
                         "max_clients_per_ip": "0"})
    early, hello = smtp_session(mx)
    assert hello.code == 250, hello
    assert early.cmd("MAIL FROM:<early@client.example>").code == 250
    began = time.monotonic()
    flood = Flood(mx.port, FLOOD)
    wait_until(lambda: open_fds(mx.pid) >= NOFILE - 4, 20.0,
               f"mxfront to use up its {NOFILE} descriptors")
    return mx, early, flood, began


@pytest.mark.parametrize("workers", [1, 2])
def test_running_out_of_descriptors_pauses_accepting(mxfront, fake_backend, workers):
    fb = fake_backend()
    mx, early, flood, began = start_flooded(mxfront, fb, workers)
    try:
        cpu0, log0 = cpu_seconds(mx.pid), log_bytes(mx)
        time.sleep(WINDOW)  # a measuring window, not a wait for a condition
        cpu = cpu_seconds(mx.pid) - cpu0
        grown = log_bytes(mx) - log0
        assert cpu < CPU_BOUND, f"mxfront used {cpu:.2f}s of CPU in {WINDOW}s while out of fds"
        assert grown < LOG_BOUND, f"log grew by {grown} bytes in {WINDOW}s while out of fds"

        # The session opened before the flood goes on and delivers.
        assert early.cmd("RCPT TO:<alice@a.example>").code == 250
        assert early.cmd("DATA").code == 354
        early.send(BODY + b".\r\n")
        r = early.read_reply()
        assert r.code == 250, r
        assert any(m.endswith(BODY + b".\r\n") for c in fb.connections for m in c.messages)

        # Greeted clients leave; those that waited get their greeting: none
        # is closed or reset unheard.
        counts = flood.poll()
        assert counts["closed"] == 0, f"flood clients closed without a word: {counts}"
        assert 0 < counts["greeted"] < FLOOD, counts
        flood.leave("greeted")
        wait_until(lambda: flood.poll()["waiting"] == 0, 20.0,
                   "every client that waited to be greeted")
        assert flood.poll()["closed"] == 0, "a waiting client was closed without its greeting"

        # After the flood, a new client is greeted and delivers.
        flood.leave("greeted")
        a = attempt_delivery(mx.port, ["bob@a.example"], BODY)
        assert a.any_250_for_message, a

        lines = [ln for ln in mx.log().splitlines() if "event=limit kind=fd " in ln]
        assert lines, "no event=limit kind=fd line"
        elapsed = time.monotonic() - began
        assert len(lines) <= workers * (elapsed + 2), \
            f"{len(lines)} event=limit kind=fd lines in {elapsed:.1f}s"
    finally:
        early.close()
        flood.close()
    assert mx.stop() == 0 and not mx.killed


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_while_out_of_descriptors(mxfront, fake_backend, workers):
    mx, early, flood, _ = start_flooded(mxfront, fake_backend(), workers)
    try:
        mx.wait_log(r"\bevent=limit kind=fd\b")
        # Idle sessions get 421 at once, so the stop does not wait for
        # shutdown_timeout (30 s by default).
        assert early.cmd("RSET").code == 250
        t0 = time.monotonic()
        code = mx.stop()
        took = time.monotonic() - t0
        assert code == 0 and not mx.killed, (code, mx.killed)
        assert took < 5.0, f"SIGTERM took {took:.1f}s"
        r = early.read_reply()
        assert (r.code, r.enhanced) == (421, "4.3.2"), r
    finally:
        early.close()
        flood.close()


@pytest.mark.parametrize("max_clients,fits", [("1000", False), ("100", True)])
def test_descriptor_limit_is_raised_and_checked_at_start(mxfront, fake_backend,
                                                         max_clients, fits):
    mx = mxfront(fake_backend(), nofile=(64, NOFILE),
                 server={"workers": "2", "max_clients": max_clients})
    line = mx.wait_log(r"\bevent=fd_limit soft=\d+ hard=\d+")[0].string
    assert f"soft={NOFILE} hard={NOFILE}" in line, line
    with open(f"/proc/{mx.pid}/limits") as f:
        assert any(ln.startswith("Max open files") and ln.split()[3:5] == [str(NOFILE)] * 2
                   for ln in f), "soft limit not raised to the hard one"
    assert (" warn " in line) != fits, line
