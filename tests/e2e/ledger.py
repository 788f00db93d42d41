"""The ledger behind test_fault_injection.py: unique, self-checking messages;
a record of what the SMTP client saw for every attempt; a reader that verifies
every message stored in the Maildirs; the check that confronts the two; and the
faults: SIGKILL of a running Dovecot (its lmtp children, or the whole instance,
restarted on the same port with the same config) and a Maildir that refuses
deliveries for a moment.

A message carries `X-Ledger: <uuid>` and ends with one line
`X-Ledger-End: <uuid> lines=N sha256=HEX` whose hash covers every body line
before it in stored (LF) form: a truncated or altered copy fails the check."""
import base64
import hashlib
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import procs
import waits

END_RX = re.compile(rb"^X-Ledger-End: ([0-9a-f-]{36}) lines=(\d+) sha256=([0-9a-f]{64})$")
LEDGER_RX = re.compile(rb"^X-Ledger: ([0-9a-f-]{36})$", re.M)
MIXED_TEXT = "Delivered to some recipients only"   # mxfront's 451 4.3.0 (smtp_map_lmtp)
AFTER_DOT_TEXT = "after the message"              # mxfront's 451 4.4.2 once the dot was relayed


# --------------------------------------------------------------------------
# messages

def make_message(rng, msg_id, rcpts, size, sender="sender@client.example"):
    """A CRLF message of about size bytes: headers naming msg_id, random
    printable lines of 0-200 octets (some starting with '.', some exactly '.'
    or '..'), and the checksum line."""
    pool = base64.b64encode(rng.randbytes(size)).decode("ascii")
    lines, used, pos = [], 0, 0
    while used < size:
        n = rng.randrange(0, 201)
        piece = pool[pos:pos + n]
        pos = (pos + n) % max(1, len(pool) - 200)
        roll = rng.random()
        if roll < 0.01:
            piece = rng.choice((".", "..", ". ", "..."))
        elif roll < 0.06:
            piece = "." + piece
        elif roll < 0.08:
            piece = piece[:10] + " " + piece[10:]
        lines.append(piece.encode("ascii"))
        used += len(piece) + 2
    digest = hashlib.sha256(b"".join(ln + b"\n" for ln in lines)).hexdigest()
    head = [f"Message-ID: <{msg_id}@ledger.client.example>",
            f"X-Ledger: {msg_id}",
            f"From: <{sender}>",
            "To: " + ", ".join(f"<{r}>" for r in rcpts),
            f"Subject: ledger {msg_id}",
            ""]
    end = f"X-Ledger-End: {msg_id} lines={len(lines)} sha256={digest}"
    return ("\r\n".join(head) + "\r\n").encode() + b"".join(ln + b"\r\n" for ln in lines) + \
        end.encode() + b"\r\n"


def verify_stored(data):
    """(ledger id or None, None if whole else the reason) for one stored
    (LF) message."""
    m = LEDGER_RX.search(data.split(b"\n\n", 1)[0])
    if not m:
        return None, "no X-Ledger header"
    msg_id = m.group(1).decode()
    if b"\n\n" not in data:
        return msg_id, "no end of header"
    body = data.split(b"\n\n", 1)[1]
    if not body.endswith(b"\n"):
        return msg_id, f"does not end with a line end ({len(data)} bytes)"
    cut = body.rfind(b"\n", 0, len(body) - 1) + 1   # start of the last line
    end = END_RX.match(body[cut:-1])
    if not end:
        return msg_id, f"last line is not the checksum line: {body[cut:cut + 80]!r}"
    if end.group(1).decode() != msg_id:
        return msg_id, f"checksum line names {end.group(1).decode()}"
    lines = body[:cut].count(b"\n")
    if lines != int(end.group(2)):
        return msg_id, f"{lines} body lines, checksum line says {int(end.group(2))}"
    if hashlib.sha256(body[:cut]).hexdigest() != end.group(3).decode():
        return msg_id, "body checksum mismatch"
    return msg_id, None


@dataclass
class StoredCopy:
    user: str
    path: Path
    msg_id: str    # None when the file names no ledger id
    problem: str   # None when the copy is whole


def read_maildirs(mail_root, users):
    """Every message file in each user's Maildir new/ and cur/, verified;
    and the number of files left in tmp/ (deliveries killed midway)."""
    copies, tmp_left = [], 0
    for user in users:
        md = Path(mail_root) / user / "Maildir"
        for sub in ("new", "cur"):
            d = md / sub
            if not d.is_dir():
                continue
            for p in sorted(d.iterdir()):
                if p.is_file():
                    msg_id, problem = verify_stored(p.read_bytes())
                    copies.append(StoredCopy(user, p, msg_id, problem))
        tmp = md / "tmp"
        if tmp.is_dir():
            tmp_left += sum(1 for p in tmp.iterdir() if p.is_file())
    return copies, tmp_left


# --------------------------------------------------------------------------
# the client's record

@dataclass
class Attempt:
    """One try at one message, as the client saw it."""
    msg_id: str
    number: int                 # 1 for the first try of this message
    plan: str                   # complete | drop_after_mail | drop_after_rcpt | drop_after_data
                                #   | drop_mid_data | drop_after_dot
    rcpts: list
    client_port: int = 0        # local port of the connection (mxfront logs it at connect)
    started: float = 0.0        # time.time()
    accepted: list = field(default_factory=list)     # recipients with a 2xx to RCPT
    replies: list = field(default_factory=list)      # (stage, reply line or None)
    dot_sent: bool = False      # the final ".\r\n" went out
    code: int = None            # the decisive reply's code (None: there was none)
    reply: str = None           # the decisive reply's first line
    dropped: bool = False       # the connection ended before the decisive reply
    dropped_by: str = None      # "client" | "server" | "timeout"
    stage: str = None           # the last stage reached
    slowest: float = 0.0        # longest wait for one reply, seconds
    elapsed: float = 0.0        # the whole attempt, seconds
    conn: tuple = None          # (client port, start time) of the connection used
    tx_no: int = None           # this MAIL's number on its connection (1, 2, ...)
    tx_id: str = None           # mxfront's transaction id (sess.N), from its log

    def effect(self):
        """What this attempt may have stored for each accepted recipient:
        ("confirmed", why): exactly one copy; ("maybe", why): zero or one;
        ("none", why): nothing."""
        if not self.accepted:
            return "none", "no recipient accepted"
        if not self.dot_sent:
            return "none", "no final dot"
        if self.code is not None and self.code // 100 == 2:
            return "confirmed", "250"
        if self.code is None:
            return "maybe", f"no reply after the final dot ({self.dropped_by} ended it)"
        if self.code == 451 and MIXED_TEXT in (self.reply or ""):
            return "maybe", "451 4.3.0 mixed"
        if self.code // 100 == 4 and AFTER_DOT_TEXT in (self.reply or ""):
            return "maybe", "4xx: backend lost after the final dot"
        return "none", f"refused at end of data: {self.code}"

    def describe(self):
        return (f"attempt {self.number} of {self.msg_id}: plan={self.plan} "
                f"client_port={self.client_port} tx={self.tx_id} started={self.started:.3f} "
                f"rcpts={self.rcpts} "
                f"accepted={self.accepted} dot_sent={self.dot_sent} code={self.code} "
                f"reply={self.reply!r} dropped={self.dropped} by={self.dropped_by} "
                f"stage={self.stage} replies={self.replies}")


# --------------------------------------------------------------------------
# the check

@dataclass
class Verdict:
    violations: list = field(default_factory=list)   # (kind, text, [attempts], [copies])
    figures: dict = field(default_factory=dict)
    duplicates: Counter = field(default_factory=Counter)  # why -> extra copies

    def add(self, kind, text, attempts=(), copies=()):
        self.violations.append((kind, text, list(attempts), list(copies)))


def check(attempts, copies, tmp_left=0):
    """Confronts the ledger (every Attempt) with the stored copies.

    For each (message, recipient): copies >= attempts confirmed with 250, and
    copies <= confirmed + ambiguous attempts (client dropped after the dot,
    451 4.3.0 mixed, backend lost after the dot). Every stored copy must be
    whole and name a message of the ledger. Nothing may be stored for a
    message whose attempts never relayed a final dot."""
    v = Verdict()
    by_msg = defaultdict(list)
    for a in attempts:
        by_msg[a.msg_id].append(a)
    stored = defaultdict(list)
    for c in copies:
        if c.problem and c.msg_id is not None:
            v.add("truncated", f"{c.user}: {c.path.name}: {c.problem}", by_msg.get(c.msg_id, ()),
                  [c])
        if c.msg_id is None:
            v.add("stray", f"{c.user}: {c.path.name}: names no ledger message", (), [c])
            continue
        if c.msg_id not in by_msg:
            v.add("stray", f"{c.user}: {c.path.name}: {c.msg_id} is not in the ledger", (), [c])
            continue
        stored[(c.msg_id, c.user)].append(c)

    users = {c.user for c in copies}
    for msg_id, tries in by_msg.items():
        rcpt_users = {r.split("@")[0].lower() for a in tries for r in a.rcpts}
        for user in sorted(rcpt_users | users):
            confirmed, maybe = 0, []
            for a in tries:
                if user not in {r.split("@")[0].lower() for r in a.accepted}:
                    continue
                kind, why = a.effect()
                if kind == "confirmed":
                    confirmed += 1
                elif kind == "maybe":
                    maybe.append(why)
            here = stored.get((msg_id, user), [])
            n = len(here)
            if n < confirmed:
                v.add("lost", f"{msg_id} for {user}: got 250 {confirmed}x, stored {n}x",
                      tries, here)
            elif n > confirmed + len(maybe):
                kind = "duplicate" if confirmed else "ghost"
                v.add(kind, f"{msg_id} for {user}: stored {n}x, but 250 {confirmed}x and "
                      f"ambiguous attempts {len(maybe)} ({maybe})", tries, here)
            elif n > 1:
                why = "; ".join(sorted(set(maybe))) if maybe else "?"
                v.duplicates[why] += n - 1

    # figures
    f = v.figures
    f["messages"] = len(by_msg)
    f["attempts"] = len(attempts)
    f["attempts 250"] = sum(a.code is not None and a.code // 100 == 2 and a.dot_sent
                            for a in attempts)
    f["attempts 4xx"] = sum(a.code is not None and a.code // 100 == 4 for a in attempts)
    f["  of which 451 4.3.0 mixed"] = sum(a.code == 451 and MIXED_TEXT in (a.reply or "")
                                          for a in attempts)
    f["  of which 4xx after the dot"] = sum(a.code is not None and a.code // 100 == 4 and
                                             AFTER_DOT_TEXT in (a.reply or "") for a in attempts)
    f["attempts 5xx"] = sum(a.code is not None and a.code // 100 == 5 for a in attempts)
    f["dropped by the client"] = sum(a.dropped_by == "client" for a in attempts)
    f["  of which after the final dot"] = sum(a.dropped_by == "client" and a.dot_sent
                                              for a in attempts)
    f["  of which before the final dot"] = sum(a.dropped_by == "client" and not a.dot_sent
                                               for a in attempts)
    f["closed by the server before a reply"] = sum(a.dropped_by == "server" for a in attempts)
    f["no reply in time (client timeout)"] = sum(a.dropped_by == "timeout" for a in attempts)
    f["messages with a 250"] = sum(any(a.effect()[0] == "confirmed" for a in t)
                                   for t in by_msg.values())
    never = {m for m, t in by_msg.items() if not any(a.dot_sent for a in t)}
    f["messages never sent up to the final dot"] = len(never)
    f["  of which stored (must be 0)"] = len({m for (m, _u) in stored if m in never})
    f["stored copies"] = len(copies)
    f["stored (message, user) pairs"] = len(stored)
    f["duplicate copies"] = sum(v.duplicates.values())
    f["files left in tmp/"] = tmp_left
    f["slowest reply (s)"] = round(max((a.slowest for a in attempts), default=0.0), 2)
    for kind in ("lost", "truncated", "ghost", "duplicate", "stray"):
        f[f"violations: {kind}"] = sum(1 for k, *_ in v.violations if k == kind)
    return v


def evidence(violation, mx_log="", backend_log="", limit=40):
    """A violation with its ledger entries, stored files, the mxfront log
    lines of the sessions involved (found by the client port) and the
    backend's log lines naming the message."""
    kind, text, attempts, copies = violation
    out = [f"[{kind}] {text}"]
    msg_ids = {a.msg_id for a in attempts} | {c.msg_id for c in copies if c.msg_id}
    for msg_id in sorted(msg_ids):
        lines = [ln for ln in backend_log.splitlines() if msg_id in ln]
        out += [f"  backend: {ln}" for ln in lines[:limit]]
    for a in attempts:
        out.append("  ledger: " + a.describe())
        connect = rf"sess=(\S+) event=connect client=127\.0\.0\.1 port={a.client_port}\b"
        sessions = re.findall(connect, mx_log) if a.client_port else []
        for sess in sessions:
            # the session's own events and this attempt's transaction
            lines = [ln for ln in mx_log.splitlines() if f"sess={sess} " in ln and
                     (" id=" not in ln or (a.tx_id and f" id={a.tx_id} " in ln))]
            out += [f"    mxfront: {ln}" for ln in lines[:limit]]
    for c in copies:
        data = c.path.read_bytes() if c.path.exists() else b""
        out.append(f"  file: {c.path} ({len(data)} bytes) problem={c.problem}")
        out.append(f"    head: {data[:600]!r}")
        out.append(f"    tail: {data[-300:]!r}")
    return "\n".join(out)


# --------------------------------------------------------------------------
# Dovecot chaos

def _age(pid):
    """Seconds since process pid started (0 if it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        start = int(stat[stat.rindex(")") + 2:].split()[19]) / os.sysconf("SC_CLK_TCK")
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0
    return uptime - start


def _group(pgid):
    """PIDs of the live (not zombie) processes in process group pgid."""
    return [pid for pid, _, fields in procs.proc_stats()
            if int(fields[2]) == pgid and fields[0] != "Z"]


def _gone(pid):
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return state[state.rindex(")") + 2] == "Z"


def port_free(port):
    """True when nothing listens on 127.0.0.1:port (a bind with
    SO_REUSEADDR succeeds, as it will for Dovecot)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def backend_connections(port):
    """TCP connections (not LISTEN, not TIME_WAIT) whose local end is
    127.0.0.1:port: open LMTP sessions on Dovecot's side."""
    n = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            local_port = int(cols[1].rsplit(":", 1)[1], 16)
            if local_port == port and cols[3] not in ("0A", "06"):   # LISTEN, TIME_WAIT
                n += 1
    return n


class DovecotChaos:
    """SIGKILLs parts of a running dovecotlmtp.Dovecot and brings it back on the same
    port with the same config. Replaces dv.proc on restart, so the fixture's
    teardown stops the instance that is running at the end."""

    def __init__(self, dv):
        self.dv = dv
        self.counts = Counter()
        self.down_since = None
        self.downtime = 0.0      # seconds without a listening Dovecot, in total
        self.longest_down = 0.0

    def kill_lmtp(self, pick=lambda pid: True, min_age=0.2):
        """SIGKILL the dovecot/lmtp children of the master (it starts new
        ones on demand) that pick(pid) selects and that are older than
        min_age seconds: killing one still starting up makes the master stop
        spawning lmtp for 2 s ("command startup failed, throttling").
        Returns how many were killed."""
        killed = 0
        for pid in self.dv.lmtp_pids():
            if _age(pid) >= min_age and pick(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed += 1
                except ProcessLookupError:
                    pass
        self.counts["lmtp processes killed"] += killed
        self.counts["lmtp kill rounds"] += 1
        return killed

    def kill_all(self):
        """SIGKILL the master and its children (a graceful stop takes
        seconds): the process group the master leads (dovecotlmtp.Dovecot starts it
        in a new session; its children stay in the group), then each child
        by PID; waits until none is left and the port is free."""
        master = self.dv.proc
        self.down_since = time.monotonic()
        children = [pid for pid, _ in procs.children(master.pid)]
        try:
            os.killpg(master.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        master.wait(timeout=procs.STOP_DEADLINE)
        waits.wait_until(lambda: all(_gone(p) for p in children) and not _group(master.pid),
                         procs.STOP_DEADLINE, "Dovecot's processes to die")
        waits.wait_until(lambda: port_free(self.dv.port), procs.STOP_DEADLINE,
                         f"port {self.dv.port} to be free")
        self.counts["whole Dovecot killed"] += 1

    def clear_stale_locks(self, users, max_age=2.0):
        """Removes Maildir dotlocks (dovecot-uidlist.lock) older than max_age
        seconds. An lmtp process killed while holding one leaves it behind,
        often empty (no PID to check), and Dovecot then makes every delivery
        to that user wait for its 2-minute stale timeout: an operator's
        clean-up, done at once, keeps the run going. A live holder keeps the
        lock for milliseconds."""
        now = time.time()
        for user in users:
            lock = self.dv.maildir(user) / "dovecot-uidlist.lock"
            try:
                if now - lock.stat().st_mtime > max_age:
                    lock.unlink()
                    self.counts["stale uidlist locks removed"] += 1
            except FileNotFoundError:
                pass

    def start(self):
        """Starts Dovecot again on its port, as dovecotlmtp.Dovecot does; waits until
        it answers LMTP."""
        out = open(self.dv.stdout_path, "ab")
        proc = subprocess.Popen(["dovecot", "-F", "-c", str(self.dv.conf)],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                start_new_session=True)
        out.close()
        self.dv.proc = proc
        waits.wait_until(lambda: proc.poll() is not None or lmtp_greets(self.dv.port),
                         procs.START_DEADLINE, "Dovecot to greet again")
        if proc.poll() is not None:
            raise AssertionError(f"Dovecot exited with {proc.returncode} on restart:\n"
                                 f"{self.dv.log()[-3000:]}")
        self.counts["restarts"] += 1
        if self.down_since is not None:
            down = time.monotonic() - self.down_since
            self.downtime += down
            self.longest_down = max(self.longest_down, down)
            self.down_since = None


def lmtp_greets(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as s:
            return s.recv(64).startswith(b"220 ")
    except OSError:
        return False


class ChaosThread(threading.Thread):
    """Every 0.5-2 s, one of: SIGKILL about half of the lmtp children (50 %),
    all of them (20 %), or the whole Dovecot (30 %), which comes back after
    0-0.3 s on the same port; first, the users' stale dotlocks are removed.
    An error stops the thread and is kept in .error."""

    def __init__(self, chaos, rng, users=()):
        super().__init__(daemon=True, name="chaos")
        self.users = users
        self.chaos = chaos
        self.rng = rng
        self.stop = threading.Event()
        self.error = None

    def run(self):
        try:
            while not self.stop.wait(self.rng.uniform(0.5, 2.0)):
                self.chaos.clear_stale_locks(self.users)
                roll = self.rng.random()
                if roll < 0.5:
                    self.chaos.kill_lmtp(pick=lambda pid: self.rng.random() < 0.5)
                elif roll < 0.7:
                    self.chaos.kill_lmtp()
                else:
                    self.chaos.kill_all()
                    self.stop.wait(self.rng.uniform(0.0, 0.3))   # down for a moment
                    self.chaos.start()
        except BaseException as e:   # reported by the test
            self.error = e
            if self.chaos.dv.proc.poll() is not None:
                try:
                    self.chaos.start()
                except BaseException:
                    pass


class MailboxFaults(threading.Thread):
    """Every 1-3 s, makes one user's Maildir/new read-only for 0.3-1 s: that
    recipient's delivery fails at the end of data (Dovecot answers it
    451 4.2.0 and keeps nothing) while the others of the same message
    succeed, so mxfront has to answer 451 4.3.0 (DESIGN.md, "LMTP's
    one-reply-per-recipient") and the client's retry duplicates the message
    for the others. Restores the mode when stopped."""

    def __init__(self, dv, users, rng):
        super().__init__(daemon=True, name="mailbox-faults")
        self.dv = dv
        self.users = list(users)
        self.rng = rng
        self.stop = threading.Event()
        self.count = 0
        self.error = None

    def run(self):
        try:
            while not self.stop.wait(self.rng.uniform(1.0, 3.0)):
                new = self.dv.maildir(self.rng.choice(self.users)) / "new"
                if not new.is_dir():   # Dovecot makes it at the first delivery
                    continue
                mode = new.stat().st_mode & 0o7777
                os.chmod(new, mode & ~0o222)
                self.count += 1
                try:
                    self.stop.wait(self.rng.uniform(0.3, 1.0))
                finally:
                    os.chmod(new, mode)
        except BaseException as e:   # reported by the test
            self.error = e
