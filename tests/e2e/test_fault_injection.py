"""Fault injection with a ledger: thousands of unique messages go through a
running mxfront into a real Dovecot LMTP while Dovecot is hurt and clients
misbehave; every client keeps a ledger of what it saw, and at the end every
Maildir is read and confronted with it (DESIGN.md, "Promises" and "LMTP's
one-reply-per-recipient").

Faults, all at once:
- every 0.5-2 s SIGKILL of about half of Dovecot's lmtp processes, of all of
  them, or of the whole Dovecot (master and children), restarted on the same
  port after 0-0.3 s (ledger.ChaosThread);
- every 1-3 s one user's Maildir/new is read-only for 0.3-1 s, so that a
  message to several users is delivered to some only and mxfront must say
  451 4.3.0 (ledger.MailboxFaults);
- about one client attempt in five drops its connection on purpose: after
  MAIL, after RCPT, after the 354, in the middle of the message, or right
  after the final dot without reading the reply (FIN or RST).
Clients retry a message after a 4xx or a dropped connection (up to 3 tries,
0.5-2 s later), as a sending MTA would.

Checks (a message carries an X-Ledger id and ends with a checksum line):
- a 250 means a whole copy in each accepted recipient's Maildir (lost = 0);
- no stored copy is truncated or altered;
- a message whose attempts never sent the final dot is stored nowhere;
- more copies than 250s only where an attempt was ambiguous: the client
  dropped after the final dot, mxfront answered 451 4.3.0 (delivered to some
  recipients only) and the client retried, or the backend died after the final
  dot (451 4.4.2 "... after the message": the reply was lost, the message may
  be stored). Each stored copy is also traced, by the id in mxfront's Received
  header, to the transaction that stored it, which must be one of those;
- each 451 4.3.0 has mxfront's partial_delivery log lines, and the copies of
  that transaction are where they say delivered=yes (or where the reply was
  lost);
- mxfront answers every command in time and closes no connection itself.
The figures (sent, 250, 4xx, 5xx, dropped, stored, duplicates by cause) are
printed at the end, also when the test passes.

Size of the run. The suite's run plans 2,000 messages but starts no new one
after 40 s (1,100-1,650 got sent per run on this 2-core machine under a
load of 3-7 from other work; the whole test takes about 45 s). For a longer, separate run:
    MXFRONT_FAULT_MESSAGES=20000   messages to send (then no time budget)
    MXFRONT_FAULT_SECONDS=600      budget for new messages (0: none)
    MXFRONT_FAULT_CLIENTS=8        client threads
    MXFRONT_FAULT_SEED=N           the same random choices (printed; timing differs)
e.g. MXFRONT_FAULT_MESSAGES=20000 /usr/bin/python3 -m pytest -s \
         tests/e2e/test_fault_injection.py
Run it alone or with its own --basetemp: another pytest session resets
/tmp/pytest-of-<user> to 0700, which locks Dovecot's users out mid-run."""
import os
import queue
import random
import re
import socket
import struct
import threading
import time
import uuid

import ledger
from dovecotlmtp import DOVECOT_USERS, lf
from ledger import Attempt, ChaosThread, DovecotChaos, MailboxFaults
from smtpclient import ConnectionClosed, SmtpClient, dot_stuff
from waits import wait_until

MESSAGES = int(os.environ.get("MXFRONT_FAULT_MESSAGES", "2000"))
# New messages stop after this many seconds (0: no limit); what was sent is
# checked all the same. Without MXFRONT_FAULT_MESSAGES the suite's budget.
BUDGET = float(os.environ.get("MXFRONT_FAULT_SECONDS",
                              "0" if "MXFRONT_FAULT_MESSAGES" in os.environ else "40"))
CLIENTS = int(os.environ.get("MXFRONT_FAULT_CLIENTS", "8"))
SEED = int(os.environ.get("MXFRONT_FAULT_SEED", str(random.SystemRandom().randrange(1 << 32))))
MAX_TRIES = 3
RETRY_SHARE = 0.8     # a failed attempt is tried again with this probability
RETRY_DELAY = (0.5, 2.0)  # seconds before a retry
PAUSE_AFTER_4XX = (0.05, 0.2)  # seconds a client waits after a 4xx before the message
REPLY_TIMEOUT = 30.0  # mxfront must answer long before: backend timeout 5 s per reply
SETTLE_DEADLINE = 60.0
MIN_SIZE, MAX_SIZE = 200, 200_000
UNKNOWN = "nosuchuser@dest.example"
SENDER = "sender@client.example"
PLANS = [("complete", 0.80), ("drop_after_mail", 0.02), ("drop_after_rcpt", 0.04),
         ("drop_after_data", 0.03), ("drop_mid_data", 0.06), ("drop_after_dot", 0.05)]
MX_CONFIG = {"backend": {"timeout": "5s", "connect_timeout": "2s"}}


# --------------------------------------------------------------------------
# the checker checks itself on a fabricated Maildir

def _store(root, user, name, data):
    d = root / user / "Maildir" / "new"
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(b"Return-Path: <sender@client.example>\n" + lf(data))


def _store_by(root, user, name, data, tx):
    """Stores data as Dovecot would, below a Received header naming mxfront
    transaction tx."""
    _store(root, user, name, f"Received: from x ([127.0.0.1])\r\n\tby mx.test.example "
           f"(mxfront) with ESMTP id {tx}\r\n\tfor <{user}@d>; date\r\n".encode() + data)


def _alter_body(message):
    head, body = message.split(b"\r\n\r\n", 1)
    i = next(i for i, b in enumerate(body) if chr(b).isalnum())
    return head + b"\r\n\r\n" + body[:i] + (b"0" if body[i:i + 1] != b"0" else b"1") + body[i + 1:]


def _attempt(msg_id, rcpts, code=None, reply=None, dot=True, by=None, accepted=None, number=1):
    a = Attempt(msg_id=msg_id, number=number, plan="complete", rcpts=rcpts,
                accepted=list(rcpts if accepted is None else accepted), dot_sent=dot,
                code=code, reply=reply, dropped=code is None, dropped_by=by)
    return a


def test_ledger_checker_finds_lost_truncated_and_unexplained_copies(tmp_path):
    rng = random.Random(1)
    ids = [str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(9)]
    msg = {i: ledger.make_message(rng, i, ["alice@d"], rng.choice((300, 5000, 150_000)))
           for i in ids}
    ok, lost, trunc, ghost, mixed, dup, altered, dropped_dot, backend_dot = ids
    A, AB = ["alice@d"], ["alice@d", "bob@d"]
    attempts = [
        _attempt(ok, A, 250, "250 2.0.0 Ok: delivered"),
        _attempt(lost, AB, 250, "250 2.0.0 Ok: delivered"),
        _attempt(trunc, A, 250, "250 2.0.0 Ok: delivered"),
        _attempt(ghost, A, None, dot=False, by="client"),
        _attempt(mixed, AB, 451, "451 4.3.0 Delivered to some recipients only, try again later"),
        _attempt(mixed, AB, 250, "250 2.0.0 Ok: delivered", number=2),
        _attempt(dup, A, 250, "250 2.0.0 Ok: delivered"),
        _attempt(altered, A, 250, "250 2.0.0 Ok: delivered"),
        _attempt(dropped_dot, A, None, by="client"),
        _attempt(dropped_dot, A, 250, "250 2.0.0 Ok: delivered", number=2),
        _attempt(backend_dot, A, 451, "451 4.4.2 Backend connection lost after the message, "
                 "try again later"),
    ]
    _store(tmp_path, "alice", "1", msg[ok])
    _store(tmp_path, "alice", "2", msg[lost])                # bob's copy is missing
    body = msg[trunc]
    _store(tmp_path, "alice", "3", body[:len(body) // 2])      # cut in the middle
    _store(tmp_path, "alice", "4", msg[ghost])                 # never had a final dot
    _store(tmp_path, "alice", "5a", msg[mixed])                # 451 4.3.0, then 250: allowed
    _store(tmp_path, "alice", "5b", msg[mixed])
    _store(tmp_path, "bob", "5", msg[mixed])
    _store(tmp_path, "alice", "6a", msg[dup])                  # one 250, two copies
    _store(tmp_path, "alice", "6b", msg[dup])
    _store(tmp_path, "alice", "7", _alter_body(msg[altered]))    # one byte changed
    _store(tmp_path, "alice", "8a", msg[dropped_dot])          # dropped after the dot, then 250
    _store(tmp_path, "alice", "8b", msg[dropped_dot])
    _store(tmp_path, "alice", "9", msg[backend_dot])           # reply lost, message kept
    _store(tmp_path, "bob", "x", b"Subject: not from the ledger\r\n\r\nhi\r\n")
    copies, _ = ledger.read_maildirs(tmp_path, ["alice", "bob"])
    v = ledger.check(attempts, copies)
    kinds = sorted((k, t.split(" ")[0].rstrip(":")) for k, t, *_ in v.violations)
    assert kinds == sorted([("lost", lost), ("truncated", "alice"), ("truncated", "alice"),
                            ("ghost", ghost), ("duplicate", dup), ("stray", "bob")]), \
        "\n".join(t for _, t, *_ in v.violations)
    problems = sorted(t for k, t, *_ in v.violations if k == "truncated")
    assert any("checksum mismatch" in p for p in problems), problems
    assert v.duplicates == {"451 4.3.0 mixed": 1,
                            "no reply after the final dot (client ended it)": 1}, v.duplicates
    # a whole message survives Dovecot's LF storage and extra headers
    assert ledger.verify_stored(b"Received: x\n" + lf(msg[ok])) == (ok, None)


def test_ledger_trace_finds_a_copy_stored_by_the_wrong_transaction(tmp_path):
    # The count matches (one 250, one copy), but the copy came from the
    # attempt that never sent its final dot: only tracing sees it.
    rng = random.Random(2)
    ids = [str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(4)]
    ok, swapped, twice, elsewhere = ids
    msg = {i: ledger.make_message(rng, i, ["alice@d"], 2000) for i in ids}
    A = ["alice@d"]
    attempts = [_attempt(ok, A, 250, "250 2.0.0 Ok: delivered"),
                _attempt(swapped, A, None, dot=False, by="client"),
                _attempt(swapped, A, 250, "250 2.0.0 Ok: delivered", number=2),
                _attempt(twice, A, 250, "250 2.0.0 Ok: delivered"),
                _attempt(elsewhere, A, 250, "250 2.0.0 Ok: delivered")]
    for n, a in enumerate(attempts):
        a.tx_id = f"s{n}.1"
    _store_by(tmp_path, "alice", "1", msg[ok], "s0.1")
    _store_by(tmp_path, "alice", "2", msg[swapped], "s1.1")    # the dropped attempt's
    _store_by(tmp_path, "alice", "3a", msg[twice], "s3.1")
    _store_by(tmp_path, "alice", "3b", msg[twice], "s3.1")
    _store_by(tmp_path, "alice", "4", msg[elsewhere], "s4.1")
    _store_by(tmp_path, "bob", "4", msg[elsewhere], "s4.1")    # bob was no recipient
    _store_by(tmp_path, "alice", "5", msg[ok], "s9.1")         # no such transaction
    copies, _ = ledger.read_maildirs(tmp_path, ["alice", "bob"])
    found, traced = trace_copies(attempts, copies)
    got = sorted((kind, text.split(" ")[0].rstrip(":")) for kind, text, *_ in found)
    assert got == sorted([("ghost", "alice"), ("lost", "s2.1"), ("duplicate", "alice"),
                          ("ghost", "bob"), ("untraced", "alice")]), \
        "\n".join(text for _, text, *_ in found)
    assert traced == 6


def test_ledger_checks_the_partial_delivery_log_of_a_451_430(tmp_path):
    rng = random.Random(3)
    ids = [str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(3)]
    msg = {i: ledger.make_message(rng, i, ["alice@d", "bob@d"], 2000) for i in ids}
    AB = ["alice@d", "bob@d"]
    mixed = "451 4.3.0 Delivered to some recipients only, try again later"
    attempts = [_attempt(i, AB, 451, mixed) for i in ids]
    log = []
    for n, (a, (alice, bob)) in enumerate(zip(attempts, [("yes", "no"), ("yes", "no"),
                                                          ("no", "yes")])):
        a.tx_id = f"s{n}.1"
        log += [f"sess=s{n} event=partial_delivery id=s{n}.1 rcpt=alice@d delivered={alice} "
                f'reply="x"', f"sess=s{n} event=partial_delivery id=s{n}.1 rcpt=bob@d "
                f'delivered={bob} reply="4.2.0 <bob@d> failed"']
    _store_by(tmp_path, "alice", "0", msg[ids[0]], "s0.1")    # as logged
    _store_by(tmp_path, "alice", "1", msg[ids[1]], "s1.1")    # bob: logged no, stored
    _store_by(tmp_path, "bob", "1", msg[ids[1]], "s1.1")
    copies, _ = ledger.read_maildirs(tmp_path, ["alice", "bob"])  # s2: bob logged yes, none
    found, checked = check_partial_log(attempts, copies, "\n".join(log))
    assert sorted((k, t.split(":")[0]) for k, t, *_ in found) == [("ghost", "s1.1"),
                                                                  ("lost", "s2.1")], found
    assert checked == 3


# --------------------------------------------------------------------------
# the clients

class Client(threading.Thread):
    """Sends messages from the shared work queue, several per connection,
    each attempt dropped per its plan, and retries failures; records every
    attempt."""

    def __init__(self, n, port, work, rng, until=None):
        super().__init__(daemon=True, name=f"client{n}")
        self.until = until      # time.monotonic() after which no new message starts
        self.port = port
        self.work = work
        self.rng = rng
        self.attempts = []
        self.connections = []   # (client port, start time), in order
        self.conn = None        # the current connection's entry in connections
        self.error = None
        self.c = None
        self.mails_on_conn = 0
        self.left_on_conn = 0

    def run(self):
        try:
            self._run()
        except BaseException as e:   # reported by the test
            import traceback
            self.error = traceback.format_exc()
            raise

    def _next(self, retries):
        """The next job: a retry that is due, else a new message, else the
        earliest retry once it is due (a sending MTA's back-off)."""
        now = time.monotonic()
        if retries and retries[0][0] <= now and self.rng.random() < 0.5:
            return retries.pop(0)[1]
        try:
            if self.until is None or now < self.until:
                return self.work.get_nowait()
        except queue.Empty:
            pass
        if not retries:
            return None
        due, job = retries.pop(0)
        if due > now:
            time.sleep(due - now)   # back-off, not a wait for a condition
        return job

    def _run(self):
        retries = []
        while True:
            job = self._next(retries)
            if job is None:
                break
            msg_id, rcpts, size, number = job
            plan = self.rng.choices([p for p, _ in PLANS], [w for _, w in PLANS])[0]
            a = Attempt(msg_id=msg_id, number=number, plan=plan, rcpts=rcpts,
                        started=time.time())
            self.attempts.append(a)
            msg_rng = random.Random(f"{msg_id}")   # the same bytes on every try
            wire = dot_stuff(ledger.make_message(msg_rng, msg_id, rcpts, size, SENDER))
            t0 = time.monotonic()
            self._attempt(a, wire)
            a.elapsed = time.monotonic() - t0
            if a.code is not None and a.code // 100 == 4 and not a.dot_sent:
                # refused before the message (backend down): like a sending
                # MTA, defer this destination for a moment instead of running
                # through the whole queue in the second Dovecot is away
                time.sleep(self.rng.uniform(*PAUSE_AFTER_4XX))
            failed = a.effect()[0] != "confirmed" and (a.code is None or a.code // 100 == 4)
            again = [r for r, rep in zip(a.rcpts, self._rcpt_replies(a))
                     if not (rep and rep.startswith("5"))]
            if failed and again and number < MAX_TRIES and self.rng.random() < RETRY_SHARE:
                retries.append((time.monotonic() + self.rng.uniform(*RETRY_DELAY),
                                (msg_id, again, size, number + 1)))
                retries.sort(key=lambda r: r[0])
        self._close(quit=True)

    @staticmethod
    def _rcpt_replies(a):
        replies = [r for stage, r in a.replies if stage == "rcpt"]
        return replies + [None] * (len(a.rcpts) - len(replies))

    # connection handling

    def _connect(self, a):
        """A greeted, EHLO'd connection, or None (recorded in a)."""
        if self.c is not None and self.left_on_conn > 0:
            a.client_port, a.conn = self.conn[0], self.conn
            return self.c
        self._close(quit=True)
        try:
            self.c = SmtpClient("127.0.0.1", self.port, timeout=REPLY_TIMEOUT)
        except OSError as e:
            a.replies.append(("connect", repr(e)))
            a.stage, a.dropped, a.dropped_by = "connect", True, "server"
            return None
        self.conn = (self.c.sock.getsockname()[1], time.time())
        self.connections.append(self.conn)
        a.client_port, a.conn = self.conn[0], self.conn
        self.mails_on_conn = 0
        self.left_on_conn = self.rng.randint(1, 4)
        if self._step(a, "greeting", None) is None or a.code:
            return None
        r = self._step(a, "ehlo", "EHLO ledger.client.example")
        if r is None or a.code:
            return None
        return self.c

    def _close(self, quit=False, reset=False):
        if self.c is None:
            return
        if quit:
            try:
                self.c.send("QUIT\r\n")
            except OSError:
                pass
        if reset:  # RST instead of FIN
            try:
                self.c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       struct.pack("ii", 1, 0))
            except OSError:
                pass
        self.c.close()
        self.c = None

    def _drop(self, a):
        """The client goes away on purpose: FIN or, one time in three, RST."""
        a.dropped, a.dropped_by = True, "client"
        self._close(reset=self.rng.random() < 0.33)

    def _step(self, a, stage, line, data=None):
        """Sends line (or data) and reads the reply; returns its first line,
        or None when the connection ended (recorded in a). A 4xx/5xx is
        recorded as the attempt's decisive reply, except at RCPT."""
        a.stage = stage
        started = time.monotonic()
        try:
            if line is not None:
                self.c.send(line.encode() + b"\r\n")
            if data is not None:
                self.c.send(data)
                a.dot_sent = True
            r = self.c.read_reply()
        except socket.timeout:
            a.replies.append((stage, None))
            a.dropped, a.dropped_by = True, "timeout"
            self._close(reset=True)
            return None
        except (ConnectionClosed, OSError):
            a.replies.append((stage, None))
            a.dropped, a.dropped_by = True, "server"
            self._close()
            return None
        finally:
            a.slowest = max(a.slowest, time.monotonic() - started)
        a.replies.append((stage, r.first))
        if stage not in ("rcpt", "rset") and (r.code >= 400 or stage == "eod"):
            a.code, a.reply = r.code, r.first
        return r.first

    def _attempt(self, a, wire):
        if self._connect(a) is None:
            return
        self.left_on_conn -= 1
        r = self._step(a, "mail", f"MAIL FROM:<{SENDER}>")
        if r is None or a.code:
            return
        self.mails_on_conn += 1
        a.tx_no = self.mails_on_conn
        if a.plan == "drop_after_mail":
            return self._drop(a)
        for rcpt in a.rcpts:
            r = self._step(a, "rcpt", f"RCPT TO:<{rcpt}>")
            if r is None:
                return
            if r.startswith("2"):
                a.accepted.append(rcpt)
        if not a.accepted:
            # like mxfront's own mapping: a temporary refusal wins
            refusals = [r for stage, r in a.replies if stage == "rcpt"]
            decisive = next((r for r in refusals if r.startswith("4")), refusals[-1])
            a.code, a.reply = int(decisive[:3]), decisive
            self._step(a, "rset", "RSET")
            return
        if a.plan == "drop_after_rcpt":
            return self._drop(a)
        r = self._step(a, "data", "DATA")
        if r is None:
            return
        if not r.startswith("354"):
            self._step(a, "rset", "RSET")
            return
        if a.plan == "drop_after_data":
            return self._drop(a)
        if a.plan == "drop_mid_data":
            cut = self.rng.randrange(0, len(wire))
            a.stage = "mid_data"
            try:
                self.c.send(wire[:cut])
            except OSError:
                pass
            return self._drop(a)
        if a.plan == "drop_after_dot":
            a.stage = "after_dot"
            try:
                self.c.send(wire + b".\r\n")
                a.dot_sent = True
            except OSError:
                pass
            return self._drop(a)
        self._step(a, "eod", None, wire + b".\r\n")


def make_jobs(rng, n):
    jobs = queue.Queue()
    for _ in range(n):
        users = rng.sample(DOVECOT_USERS, rng.randint(1, 3))
        rcpts = [f"{u}@dest.example" for u in users]
        roll = rng.random()
        if roll < 0.01:
            rcpts = [UNKNOWN]
        elif roll < 0.05:
            rcpts.insert(rng.randrange(len(rcpts) + 1), UNKNOWN)
        # log-uniform: mostly small messages, some of up to 200 KB
        size = int(MIN_SIZE * (MAX_SIZE / MIN_SIZE) ** rng.random())
        jobs.put((str(uuid.UUID(int=rng.getrandbits(128), version=4)), rcpts, size, 1))
    return jobs


def assign_transactions(clients, mx_log):
    """Gives each attempt its mxfront transaction id (sess.N, as in the
    Received header): the session from the connect line naming the client
    port (ports can be reused: matched in order), N from the MAILs accepted
    on that connection."""
    sessions = {}
    for m in re.finditer(r"sess=(\S+) event=connect client=127\.0\.0\.1 port=(\d+)", mx_log):
        sessions.setdefault(int(m.group(2)), []).append(m.group(1))
    conns = sorted((start, port) for c in clients for port, start in c.connections)
    seen, conn_sess = {}, {}
    for start, port in conns:
        i = seen.get(port, 0)
        seen[port] = i + 1
        if i < len(sessions.get(port, [])):
            conn_sess[(port, start)] = sessions[port][i]
    for c in clients:
        for a in c.attempts:
            sess = conn_sess.get((a.conn[0], a.conn[1])) if a.conn else None
            a.tx_id = f"{sess}.{a.tx_no}" if sess and a.tx_no else None


def trace_copies(attempts, copies):
    """Each stored copy names its mxfront transaction in the Received
    header; that transaction must be an attempt of the same message that
    accepted this recipient and was confirmed or ambiguous. Returns
    violations (kind, text, attempts, copies) and the number traced."""
    by_tx = {a.tx_id: a for a in attempts if a.tx_id}
    rx = re.compile(rb"\(mxfront\) with \S+ id ([^\s;]+)")
    out, traced, seen = [], 0, set()
    for c in copies:
        if c.msg_id is None:
            continue
        m = rx.search(c.path.read_bytes()[:4000])
        a = by_tx.get(m.group(1).decode()) if m else None
        if a is None:
            out.append(("untraced", f"{c.user}: {c.path.name}: Received id "
                        f"{m.group(1).decode() if m else None} names no attempt", [], [c]))
            continue
        traced += 1
        users = {r.split("@")[0].lower() for r in a.accepted}
        kind, why = a.effect()
        if a.msg_id != c.msg_id or c.user not in users or kind == "none":
            out.append(("ghost", f"{c.user}: {c.path.name}: stored by {a.tx_id}, an attempt "
                        f"that may not have stored it ({why})", [a], [c]))
        if (a.tx_id, c.user) in seen:
            out.append(("duplicate", f"{c.user}: {c.path.name}: {a.tx_id} stored twice", [a], [c]))
        seen.add((a.tx_id, c.user))
    for a in by_tx.values():
        if a.effect()[0] == "confirmed":
            for r in a.accepted:
                if (a.tx_id, r.split("@")[0].lower()) not in seen:
                    out.append(("lost", f"{a.tx_id} ({a.msg_id}) got 250 but left no copy "
                                f"for {r}", [a], []))
    return out, traced


def check_partial_log(attempts, copies, mx_log):
    """DESIGN.md: a 451 4.3.0 comes with a log line per recipient naming
    what was delivered. Each recipient logged delivered=yes must have the
    copy of that transaction; a copy of that transaction may exist only for
    those, or for one whose reply was lost (the backend died after storing
    it). Returns violations and the number of transactions checked."""
    logged = {}
    for m in re.finditer(r"event=partial_delivery id=(\S+) rcpt=(\S+) delivered=(yes|no) "
                         r"reply=(.*)$", mx_log, re.M):
        logged.setdefault(m.group(1), []).append(
            (m.group(2).split("@")[0].lower(), m.group(3) == "yes", "lost" in m.group(4)))
    rx = re.compile(rb"\(mxfront\) with \S+ id ([^\s;]+)")
    stored = {}
    for c in copies:
        m = rx.search(c.path.read_bytes()[:4000]) if c.msg_id else None
        if m:
            stored.setdefault(m.group(1).decode(), set()).add(c.user)
    out, checked = [], 0
    for a in attempts:
        if not (a.tx_id and a.code == 451 and ledger.MIXED_TEXT in (a.reply or "")):
            continue
        checked += 1
        lines = logged.get(a.tx_id, [])
        yes = {u for u, delivered, _ in lines if delivered}
        unsure = {u for u, delivered, lost in lines if not delivered and lost}
        have = stored.get(a.tx_id, set())
        here = [c for c in copies if c.msg_id == a.msg_id]
        if not lines:
            out.append(("mixed_log", f"{a.tx_id}: 451 4.3.0 without partial_delivery lines",
                        [a], here))
        elif not yes <= have:
            out.append(("lost", f"{a.tx_id}: logged delivered to {sorted(yes - have)}, "
                        "no copy stored", [a], here))
        elif not have <= yes | unsure:
            out.append(("ghost", f"{a.tx_id}: stored for {sorted(have - yes - unsure)}, "
                        "logged as not delivered", [a], here))
    return out, checked


# --------------------------------------------------------------------------
# the run

def test_no_message_lost_or_truncated_under_backend_kills_and_client_drops(
        dovecot, mxfront, request, capsys):
    rng = random.Random(SEED)
    mx = mxfront(dovecot, **MX_CONFIG)
    chaos = ChaosThread(DovecotChaos(dovecot), random.Random(rng.random()), DOVECOT_USERS)
    faults = MailboxFaults(dovecot, DOVECOT_USERS, random.Random(rng.random()))
    jobs = make_jobs(rng, MESSAGES)
    started = time.monotonic()
    until = started + BUDGET if BUDGET else None
    clients = [Client(i, mx.port, jobs, random.Random(rng.random()), until)
               for i in range(CLIENTS)]
    chaos.start()
    faults.start()
    for c in clients:
        c.start()
    # bounded: every reply has a 30 s client timeout; this only catches a hang
    run_deadline = max(300.0, MESSAGES * 0.2)
    for c in clients:
        c.join(max(1.0, run_deadline - (time.monotonic() - started)))
    sent_for = time.monotonic() - started
    chaos.stop.set()
    faults.stop.set()
    chaos.join(30.0)
    faults.join(30.0)
    assert not chaos.is_alive() and not faults.is_alive(), "the chaos threads did not stop"
    assert chaos.error is None, f"chaos failed: {chaos.error!r}"
    assert faults.error is None, f"mailbox faults failed: {faults.error!r}"
    assert not any(c.is_alive() for c in clients), f"clients still running after {run_deadline}s"
    errors = [c.error for c in clients if c.error]
    assert not errors, "client thread failed:\n" + "\n".join(errors)
    assert dovecot.proc.poll() is None, "Dovecot is not running after the chaos"

    # settle: no LMTP session left open on Dovecot's side means no delivery
    # is still under way (a session whose client went away stays in
    # CLOSE_WAIT until its lmtp process has finished and closed it)
    wait_until(lambda: ledger.backend_connections(dovecot.port) == 0
               and ledger.backend_connections(mx.port) == 0, SETTLE_DEADLINE,
               "every SMTP and LMTP connection to close")
    attempts = [a for c in clients for a in c.attempts]
    copies, tmp_left = ledger.read_maildirs(dovecot.mail, DOVECOT_USERS)
    v = ledger.check(attempts, copies, tmp_left)
    mx_log = mx.log()
    assign_transactions(clients, mx_log)
    traced_violations, traced = trace_copies(attempts, copies)
    partial_violations, partial_checked = check_partial_log(attempts, copies, mx_log)
    for t in traced_violations + partial_violations:
        v.add(*t)

    f = v.figures
    f["copies traced to their transaction"] = traced
    f["violations: untraced"] = sum(1 for k, *_ in v.violations if k == "untraced")
    f["451 4.3.0 checked against the partial_delivery log"] = partial_checked
    f["violations: mixed_log"] = sum(1 for k, *_ in v.violations if k == "mixed_log")
    for key, n in sorted(chaos.chaos.counts.items()):
        f[f"chaos: {key}"] = n
    f["chaos: a Maildir/new made read-only"] = faults.count
    f["chaos: Dovecot down, total / longest (s)"] = \
        f"{chaos.chaos.downtime:.2f} / {chaos.chaos.longest_down:.2f}"
    f["mxfront partial_delivery log lines"] = mx_log.count("event=partial_delivery")
    f["mxfront backend_error log lines"] = mx_log.count("event=backend_error")
    f["seconds (sending / total)"] = f"{sent_for:.1f} / {time.monotonic() - started:.1f}"
    width = max(map(len, f))
    title = (f"fault injection, seed {SEED}, {f['messages']} messages sent (of {MESSAGES}"
             f"{f', budget {BUDGET:g} s' if BUDGET else ''}), {CLIENTS} clients")
    summary = "\n".join([title,
                         *(f"  {k:<{width}}  {val}" for k, val in f.items()),
                         "  duplicates by cause: " + (", ".join(
                             f"{why}: {n}" for why, n in v.duplicates.most_common()) or "none")])
    backend_log = dovecot.log()
    if "missing +x perm" in backend_log:
        # not mxfront: something made a parent of the test directory 0700
        # (another pytest session resets /tmp/pytest-of-<user>); Dovecot then
        # fails deliveries, and may even keep a message it answered 451 for
        summary += ("\n  NOTE: Dovecot lost access to the test directory (\"missing +x perm\" "
                    "in its log): run this test alone or with --basetemp")
    with capsys.disabled():
        print("\n" + summary)
    request.node.e2e_logs = getattr(request.node, "e2e_logs", []) + [
        ("fault injection summary", lambda: summary)]

    assert not v.violations, f"{summary}\n\n{len(v.violations)} violation(s):\n" + \
        "\n\n".join(ledger.evidence(x, mx_log, backend_log) for x in v.violations[:10])
    # the test must have tested something
    # (a quarter: a loaded machine makes every delivery slower, so more of
    # them are in flight when Dovecot is killed)
    assert f["messages"] >= min(MESSAGES, 200), summary
    assert f["messages with a 250"] >= f["messages"] // 4, summary
    assert f["stored copies"] >= f["attempts 250"], summary
    assert f["no reply in time (client timeout)"] == 0, summary
    # mxfront answers every command, whatever the backend does
    assert f["closed by the server before a reply"] == 0, summary
    assert f["dropped by the client"] > 0 and f["attempts 4xx"] > 0, summary
    if sent_for >= 20:
        assert f["  of which after the final dot"] > 0, summary
        assert f["  of which before the final dot"] > 0, summary
        assert chaos.chaos.counts["lmtp processes killed"] > 0, summary
        assert chaos.chaos.counts["restarts"] > 0, summary
        assert f["  of which 451 4.3.0 mixed"] > 0, summary
