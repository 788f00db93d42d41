"""Floods against a real Dovecot with its stock lmtp limits (issue 11, point 4).

Stock Dovecot runs one lmtp process per LMTP connection, at most 100
(`service lmtp { process_limit = 100, client_limit = 1 }`). A front that
gives every client session its own LMTP connection is stopped by 100 clients
that say EHLO and sit. With the per-worker backend pool ([backend]
max_connections) a session holds a backend connection only while a
transaction needs one, so none of these floods may stop mail:

  (a) 1,000 clients from 127.0.0.2..127.0.0.30 say EHLO and sit;
  (b) 300 clients finish STARTTLS and EHLO and sit;
  (c) 200 clients send MAIL, RCPT (a real user) and DATA, then trickle their
      message at one byte a second per client.

While each flood is held, a legitimate client on 127.0.0.1 sends one message
a second (a new session each): every reply must be the good one (220, 250,
354, 250); every message must be in alice's Maildir with its own Subject and
Message-ID, Dovecot's Received naming the legitimate client (as XCLIENT told
it; not a flood client whose backend connection was reused); Dovecot must
never run more lmtp processes than max_connections (sampled every 0.1 s from
/proc); and every flood client must still be held at the end (its socket
open, mxfront's log showing its session not closed), so that the test cannot
pass because the flood fell apart.

The pool's configuration keys are in POOL_KEYS. Today's daemon refuses to
start with keys it does not know: FLOOD_TODAY=1 leaves them out, to show
how the floods stop mail without the pool."""
import collections
import errno
import os
import re
import resource
import selectors
import socket
import ssl
import threading
import time

import pytest

import dovecotlmtp
import procs
import smtpclient
from dovecotlmtp import split_stored
from procs import HOSTNAME
from smtpclient import attempt_delivery
from tlsclients import client_context
from waits import wait_until

MAX_CONNECTIONS = 20
POOL_KEYS = {
    "backend": {"max_connections": str(MAX_CONNECTIONS), "idle_timeout": "10s",
                "queue_timeout": "30s"},
    "timeouts": {"idle": "2m"},
}
TODAY = os.environ.get("FLOOD_TODAY") == "1"

SOURCES = [f"127.0.0.{i}" for i in range(2, 31)]   # the flood's addresses
LEGIT_MESSAGES = 8          # one a second while the flood is held
SETTLE = 30.0               # for every flood client to reach its sitting state
OPENING = 100               # flood clients connecting at once (accept backlog)
DESCRIPTORS = 20000         # soft RLIMIT_NOFILE wanted (at most the hard limit)

pytestmark = pytest.mark.parametrize("dovecot", [dovecotlmtp.STOCK_LMTP_LIMITS], indirect=True,
                                     ids=["stock-lmtp-limits"])


@pytest.fixture(autouse=True, scope="module")
def many_descriptors():
    """Raises the soft descriptor limit (inherited by mxfront and Dovecot)
    for a thousand clients on each side; restores it afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = DESCRIPTORS if hard == resource.RLIM_INFINITY else min(hard, DESCRIPTORS)
    if want < 2500:          # 1,000 clients here, 1,000 sessions in mxfront
        pytest.skip(f"hard RLIMIT_NOFILE {hard} is too low for the floods")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def flood_mxfront(mxfront, dovecot, **overrides):
    """mxfront relaying to dovecot with limits that admit every flood client,
    two workers and the pool (unless FLOOD_TODAY=1)."""
    sections = {
        "server": {"workers": "2", "max_clients": "3000", "max_clients_per_ip": "200",
                   "max_connection_rate": "0", "shutdown_timeout": "5s"},
        "timeouts": {"command": "2m", "data": "2m"},
    }
    if not TODAY:
        for section, keys in POOL_KEYS.items():
            sections.setdefault(section, {}).update(keys)
    for section, keys in overrides.items():
        sections.setdefault(section, {}).update(keys)
    return mxfront(dovecot, **sections)


# ------------------------------------------------------------------ flood

def take_reply(buf):
    """(Reply, rest of buf) for the first complete SMTP reply in buf, or
    None while it is incomplete."""
    lines, pos = [], 0
    while True:
        end = buf.find(b"\r\n", pos)
        if end < 0:
            return None
        line = buf[pos:end].decode("utf-8", "replace")
        pos = end + 2
        lines.append(line)
        if not re.match(r"\d{3}([ -]|$)", line):
            return smtpclient.Reply(0, lines), buf[pos:]      # garbage: code 0 never matches
        if len(line) == 3 or line[3] == " ":
            return smtpclient.Reply(int(line[:3]), lines), buf[pos:]


def ehlo_script(i):
    return [("reply", 220), ("send", f"EHLO flood{i}.example"), ("reply", 250)]


def starttls_script(i):
    return [*ehlo_script(i), ("send", "STARTTLS"), ("reply", 220), ("starttls", None),
            ("handshake", None), ("send", f"EHLO flood{i}.example"), ("reply", 250)]


def data_script(i):
    return [*ehlo_script(i), ("send", f"MAIL FROM:<flood{i}@flood.example>"), ("reply", 250),
            ("send", "RCPT TO:<carol@dest.example>"), ("reply", 250),
            ("send", "DATA"), ("reply", 354)]


class FloodClient:
    """One flood connection walking through its script of steps: ("send",
    line), ("reply", expected code), ("starttls", None) + ("handshake",
    None); at its end it is held (it sits, or trickles). States: waiting,
    connecting, running, held; failed (an unexpected reply or error, socket
    closed) or dropped (the server closed it, or spoke, while it was held)."""

    def __init__(self, index, source, script):
        self.index = index
        self.source = source
        self.script = script
        self.pos = 0
        self.state = "waiting"
        self.sock = None
        self.io = None           # the socket, or its TLS wrapper
        self.fd = -1
        self.want = 0            # selector events registered
        self.buf = b""
        self.eof = None          # why reading ended, once it has
        self.outcome = ""        # why it failed or was dropped
        self.replies = []
        self.trickled = 0


class Flood:
    """count clients bound round-robin to SOURCES, all driven by one
    selector loop in a thread; with trickle, every held client sends the
    next byte of its message once a second."""

    def __init__(self, port, count, script, tls_context=None, trickle=False):
        self.port = port
        self.tls_context = tls_context
        self.trickle = trickle
        self.clients = [FloodClient(i, SOURCES[i % len(SOURCES)], script(i))
                        for i in range(count)]
        self.sel = selectors.DefaultSelector()
        self.stop = threading.Event()
        self.opening = 0         # connecting, or not greeted yet
        self.busy = 0            # started and not yet held, failed or dropped
        self.error = None
        self.started = time.monotonic()
        self.settled_after = None
        self.thread = threading.Thread(target=self.run, name="flood", daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(timeout=10)
        for c in self.clients:
            if c.io is not None:
                c.io.close()
        self.sel.close()

    # the loop ------------------------------------------------------------

    def run(self):
        try:
            waiting = collections.deque(self.clients)
            tick = time.monotonic() + 1.0
            while not self.stop.is_set():
                while waiting and self.opening < OPENING:
                    self.open(waiting.popleft())
                for key, mask in self.sel.select(0.05):
                    self.event(key.data, mask)
                if self.settled_after is None and not waiting and self.busy == 0:
                    self.settled_after = time.monotonic() - self.started
                if self.trickle and time.monotonic() >= tick:
                    tick += 1.0
                    for c in self.clients:
                        if c.state == "held":
                            self.trickle_byte(c)
        except Exception as e:  # reported by settled() and check()
            self.error = repr(e)

    def open(self, c):
        c.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        c.sock.setblocking(False)
        c.io, c.fd = c.sock, c.sock.fileno()
        self.opening += 1
        self.busy += 1
        c.state = "connecting"
        try:
            c.sock.bind((c.source, 0))
            err = c.sock.connect_ex(("127.0.0.1", self.port))
        except OSError as e:
            err = e.errno
        if err not in (0, errno.EINPROGRESS):
            self.fail(c, f"connect: {os.strerror(err)}")
            return
        self.wait_for(c, selectors.EVENT_WRITE)

    def wait_for(self, c, events):
        if c.want == events:
            return
        if c.want:
            self.sel.modify(c.fd, events, c)
        else:
            self.sel.register(c.fd, events, c)
        c.want = events

    def end(self, c, state, why):
        if c.state in ("connecting", "running"):
            self.busy -= 1
            if not c.replies:
                self.opening -= 1
        c.state, c.outcome = state, why
        if c.want:
            self.sel.unregister(c.fd)
            c.want = 0
        c.io.close()

    def fail(self, c, why):
        self.end(c, "failed", why)

    def event(self, c, mask):
        if c.state == "connecting":
            err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self.fail(c, f"connect: {os.strerror(err)}")
                return
            c.state = "running"
        elif c.state == "running":
            if c.script[c.pos][0] != "handshake":
                self.read(c)
        elif c.state == "held":
            self.read(c)
            if c.buf or c.eof:
                self.end(c, "dropped", f"while held: {c.buf[:200]!r} {c.eof or ''}".strip())
            return
        self.advance(c)

    def read(self, c):
        while c.eof is None:
            try:
                chunk = c.io.recv(65536)
            except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                return
            except (OSError, ssl.SSLError) as e:
                c.eof = f"{type(e).__name__}: {e}"
                return
            if not chunk:
                c.eof = "closed by the server"
                return
            c.buf += chunk

    def send(self, c, data):
        try:
            n = c.io.send(data)
        except (OSError, ssl.SSLError) as e:
            return f"sending {data[:40]!r}: {type(e).__name__}: {e}"
        return None if n == len(data) else f"short write of {data[:40]!r}"

    def advance(self, c):
        """Runs c's script until it has to wait for the server."""
        while c.pos < len(c.script):
            kind, arg = c.script[c.pos]
            if kind == "send":
                problem = self.send(c, arg.encode() + b"\r\n")
                if problem:
                    self.fail(c, problem)
                    return
            elif kind == "reply":
                got = take_reply(c.buf)
                if got is None:
                    if c.eof:
                        self.fail(c, f"waiting for {arg}: {c.eof}")
                    else:
                        self.wait_for(c, selectors.EVENT_READ)
                    return
                reply, c.buf = got
                c.replies.append(reply)
                if len(c.replies) == 1:
                    self.opening -= 1
                if reply.code != arg:
                    self.fail(c, f"{reply} (step {c.pos}, wanted {arg})")
                    return
            elif kind == "starttls":
                if c.buf:
                    self.fail(c, f"bytes after STARTTLS's 220: {c.buf!r}")
                    return
                c.io = self.tls_context.wrap_socket(c.sock, server_hostname=HOSTNAME,
                                                    do_handshake_on_connect=False)
                c.sock = None     # detached: c.io owns the descriptor now
            elif kind == "handshake":
                try:
                    c.io.do_handshake()
                except ssl.SSLWantReadError:
                    self.wait_for(c, selectors.EVENT_READ)
                    return
                except ssl.SSLWantWriteError:
                    self.wait_for(c, selectors.EVENT_WRITE)
                    return
                except (OSError, ssl.SSLError) as e:
                    self.fail(c, f"handshake: {type(e).__name__}: {e}")
                    return
            c.pos += 1
        c.state = "held"
        self.busy -= 1
        self.wait_for(c, selectors.EVENT_READ)

    def trickle_byte(self, c):
        text = (f"Subject: trickle {c.index}\r\n\r\n".encode()
                + b"one byte a second, never finished\r\n" * 10)
        problem = self.send(c, text[c.trickled % len(text):][:1])
        if problem:
            self.end(c, "dropped", problem)
        else:
            c.trickled += 1

    # what the test asks --------------------------------------------------

    def settled(self):
        """True once every client is held, failed or dropped (or the loop
        died)."""
        return self.error is not None or self.settled_after is not None

    def counts(self):
        return collections.Counter(c.state for c in self.clients)

    def summary(self):
        """States, and the most common reasons for failures and drops."""
        out = [f"states: {dict(self.counts())}"
               + (f", settled after {self.settled_after:.1f}s" if self.settled_after else
                  ", never settled")]
        if self.error:
            out.append(f"flood loop died: {self.error}")
        why = collections.Counter(re.sub(r"flood\d+", "floodN", c.outcome)
                                  for c in self.clients if c.outcome)
        out += [f"  {n} x {text}" for text, n in why.most_common(6)]
        if self.trickle:
            held = [c.trickled for c in self.clients if c.state == "held"]
            if held:
                out.append(f"bytes trickled per held client: {min(held)}..{max(held)}")
        return "\n".join(out)


# -------------------------------------------------------------- measuring

class LmtpSampler:
    """Counts Dovecot's lmtp processes (and the LMTP TCP connections on its
    port) every 0.1 s in a thread while the test runs."""

    def __init__(self, dovecot, every=0.1):
        self.dovecot = dovecot
        self.every = every
        self.samples = []        # (seconds since start, processes, connections)
        self.started = time.monotonic()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, name="lmtp-sampler", daemon=True)

    def __enter__(self):
        self.sample()
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(timeout=5)

    def sample(self):
        self.samples.append((time.monotonic() - self.started, len(self.dovecot.lmtp_pids()),
                             procs.tcp_established(self.dovecot.port)))

    def run(self):
        while not self.stop.wait(self.every):
            self.sample()

    @property
    def max_processes(self):
        return max(p for _, p, _ in self.samples)

    def summary(self):
        procs = [p for _, p, _ in self.samples]
        conns = [c for _, _, c in self.samples]
        first_over = next((f"{t:.1f}s" for t, p, _ in self.samples if p > MAX_CONNECTIONS),
                          "never")
        step = max(1, len(self.samples) // 12)
        timeline = " ".join(f"{t:.0f}s:{p}" for t, p, _ in self.samples[::step])
        return (f"lmtp processes: max {max(procs)} (limit {MAX_CONNECTIONS}), over the limit "
                f"from {first_over}, at the end {procs[-1]}; LMTP TCP connections: max "
                f"{max(conns)}; {len(self.samples)} samples; processes over time: {timeline}")


def flood_sessions_open(mx):
    """Sessions from the flood's addresses that mxfront's log shows opened
    and not closed."""
    flood = set(SOURCES)
    opened = closed = 0
    for line in mx.log().splitlines():
        m = re.search(r"\bevent=(connect|disconnect) client=(\S+)", line)
        if m and m.group(2) in flood:
            if m.group(1) == "connect":
                opened += 1
            else:
                closed += 1
    return opened - closed


def legit_backend_log(mx):
    """mxfront's log lines about the backend in 127.0.0.1's sessions."""
    lines = mx.log().splitlines()
    ids = {m.group(1) for m in (re.search(r"\bsess=(\S+) event=connect client=127\.0\.0\.1 ", ln)
                                for ln in lines) if m}
    return [ln for ln in lines if re.search(r"\bevent=(backend_\w+|limit)\b", ln)
            and (m := re.search(r"\bsess=(\S+)", ln)) and m.group(1) in ids]


def legit_deliveries(mx, tag):
    """One message a second to alice from 127.0.0.1, each in a new session;
    stops at the first that is not delivered. Returns [(subject,
    message-id, smtpclient.Attempt)], each Attempt with .began (seconds after the
    first) and .took (its duration)."""
    results = []
    start = time.monotonic()
    for i in range(LEGIT_MESSAGES):
        time.sleep(max(0.0, start + i - time.monotonic()))   # the pacing, not a wait
        subject = f"legit {tag} {i}"
        msgid = f"<legit-{tag}-{i}-{os.getpid()}@client.example>"
        body = (f"Subject: {subject}\r\nMessage-ID: {msgid}\r\n\r\n"
                f"message {i} of the legitimate client\r\n").encode()
        began = time.monotonic()
        a = attempt_delivery(mx.port, ["alice@dest.example"], body, helo="legit.example",
                             source="127.0.0.1")
        a.began, a.took = began - start, time.monotonic() - began
        results.append((subject, msgid, a))
        if not all_good(a):
            break
    return results


GOOD = {"greeting": 220, "ehlo": 250, "mail": 250, "rcpt": 250, "data": 354, "eod": 250}


def all_good(a):
    return ([stage for stage, _ in a.steps] == list(GOOD)
            and all(r is not None and r.code == GOOD[stage] for stage, r in a.steps))


def describe_legit(results):
    return "\n".join(f"  #{i} at {a.began:.1f}s, took {a.took:.1f}s: "
                     f"{'ok' if all_good(a) else 'FAILED'}: {a}"
                     for i, (_, _, a) in enumerate(results))


def check_flood(name, mx, dovecot, flood, sampler, count):
    """Holds the flood while the legitimate client delivers; returns the
    list of problems (empty when the scenario passed) and a report."""
    problems = []
    try:
        wait_until(flood.settled, SETTLE, f"the {count} flood clients to sit")
    except AssertionError as e:
        problems.append(str(e))
    held_before = flood.counts()["held"]
    results = legit_deliveries(mx, name)
    delivered = [(s, m) for s, m, a in results if all_good(a)]
    if len(delivered) < LEGIT_MESSAGES:
        problems.append(f"the legitimate client was not served: {len(delivered)} of "
                        f"{LEGIT_MESSAGES} messages delivered before the first failure")
    if delivered:
        try:
            stored = dovecot.wait_messages("alice", len(delivered), timeout=10.0)
        except AssertionError as e:
            stored = dovecot.maildir_messages("alice")
            problems.append(str(e))
        if len(stored) != len(delivered):
            problems.append(f"alice has {len(stored)} messages, {len(delivered)} were sent")
        for subject, msgid in delivered:
            hits = [m for m in stored if f"\nSubject: {subject}\n".encode() in m
                    and f"\nMessage-ID: {msgid}\n".encode() in m]
            if len(hits) != 1:
                problems.append(f"{subject} {msgid}: {len(hits)} copies in alice's Maildir")
                continue
            # A pooled connection that served a flood client must not lend
            # that client's XCLIENT identity to this message.
            above = split_stored(hits[0], helo="legit.example").above
            theirs = [b for name, b in above if name.lower() == "received"]
            if not (len(theirs) == 1 and
                    theirs[0].startswith(b"Received: from legit.example ([127.0.0.1])")):
                problems.append(f"{subject}: Dovecot's Received is not the legitimate "
                                f"client's: {theirs}")
    held = flood.counts()["held"]
    if held != count:
        problems.append(f"only {held} of {count} flood clients held at the end "
                        f"({held_before} when the legitimate client began)")
    try:
        wait_until(lambda: flood_sessions_open(mx) == held, 2.0, "mxfront's log to agree")
    except AssertionError:
        problems.append(f"mxfront's log shows {flood_sessions_open(mx)} flood sessions open, "
                        f"the clients {held}")
    sampler.sample()
    if sampler.max_processes > MAX_CONNECTIONS:
        problems.append(f"Dovecot ran {sampler.max_processes} lmtp processes "
                        f"(max_connections = {MAX_CONNECTIONS})")
    return problems, "\n".join([
        f"{name}: {'FLOOD_TODAY=1 (no pool keys)' if TODAY else 'with the pool'}",
        f"flood of {count}: {flood.summary()}",
        f"flood sessions open in mxfront's log: {flood_sessions_open(mx)}",
        "legitimate client:", describe_legit(results),
        *(f"  log: {ln}" for ln in legit_backend_log(mx)[:6]),
        sampler.summary(),
        f"alice's Maildir: {len(dovecot.maildir_messages('alice'))} messages, "
        f"carol's: {len(dovecot.maildir_messages('carol'))}"])


def assert_flood_held_and_mail_flowed(name, mx, dovecot, flood_args, count):
    with LmtpSampler(dovecot) as sampler, Flood(mx.port, count, **flood_args) as flood:
        problems, report = check_flood(name, mx, dovecot, flood, sampler, count)
    print(report)
    assert not problems, "\n".join(problems) + "\n--- report ---\n" + report


# ------------------------------------------------------------------ tests

def test_a_thousand_clients_say_ehlo_and_sit(dovecot, mxfront):
    mx = flood_mxfront(mxfront, dovecot)
    assert_flood_held_and_mail_flowed("a-ehlo", mx, dovecot, {"script": ehlo_script}, 1000)


def test_b_three_hundred_clients_finish_starttls_and_sit(dovecot, mxfront, pki, tmp_path):
    certs = pki.install(tmp_path / "certs.d", labels=["default"])
    mx = flood_mxfront(mxfront, dovecot, tls={"certs_dir": str(certs)},
                       timeouts={"handshake": "1m"})
    context = client_context(pki.ca_file)
    assert_flood_held_and_mail_flowed("b-starttls", mx, dovecot,
                                      {"script": starttls_script, "tls_context": context}, 300)


def test_c_two_hundred_clients_trickle_data_a_byte_a_second(dovecot, mxfront):
    mx = flood_mxfront(mxfront, dovecot)
    assert_flood_held_and_mail_flowed("c-trickle", mx, dovecot,
                                      {"script": data_script, "trickle": True}, 200)
    assert dovecot.maildir_messages("carol") == [], "a trickled message was delivered"
