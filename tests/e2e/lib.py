"""Helpers for the mxfront end-to-end tests: processes (mxfront, a private
Dovecot LMTP), a scripted fake LMTP backend, a raw SMTP client and parsers for
stored messages. Nothing here sleeps a fixed time: every wait polls a condition
against a deadline."""
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MXFRONT_BIN = os.environ.get("MXFRONT_BIN", str(REPO / "build" / "mxfront"))
HOSTNAME = "mx.test.example"
POLL = 0.02           # seconds between two looks at a condition
START_DEADLINE = 15.0  # generous: the suite also runs against an ASan build
STOP_DEADLINE = 10.0
SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:")


# --------------------------------------------------------------------------
# waiting and ports

def wait_until(cond, timeout=5.0, what="condition"):
    """Polls cond() every POLL seconds until it returns a true value, which is
    returned; raises AssertionError after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(POLL)


def refuses(port, host="127.0.0.1"):
    """True once nothing listens on port: connecting is refused. A reset
    means the listening socket is being closed under the attempt (SYNs that
    hit a closing listener are answered with RST), so it counts as "not
    yet": callers poll with wait_until until the port refuses."""
    try:
        socket.create_connection((host, port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    except ConnectionResetError:
        return False
    return False


def free_port(host="127.0.0.1"):
    """A TCP port that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_accepts(host, port):
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def stop_process(proc, deadline=STOP_DEADLINE, sig=signal.SIGTERM):
    """Sends sig to proc, waits up to deadline, then SIGKILLs. Returns the
    exit status and whether it had to be killed."""
    if proc.poll() is not None:
        return proc.returncode, False
    try:
        proc.send_signal(sig)
    except ProcessLookupError:
        pass
    try:
        return proc.wait(timeout=deadline), False
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(timeout=deadline), True


def sanitizer_report(text):
    return [m for m in SANITIZER_MARKERS if m in text]


# --------------------------------------------------------------------------
# a raw SMTP client

class ConnectionClosed(Exception):
    pass


@dataclass
class Reply:
    code: int
    lines: list  # full reply lines, without CRLF

    @property
    def first(self):
        return self.lines[0]

    @property
    def text(self):
        """The first line after the code and separator."""
        return self.lines[0][4:]

    @property
    def enhanced(self):
        """The enhanced status code of the first line (RFC 2034), or None."""
        m = re.match(r"\d{3}[ -]([245]\.\d{1,3}\.\d{1,3})(?: |$)", self.lines[0])
        return m.group(1) if m else None

    @property
    def keywords(self):
        """EHLO keywords: every line but the first, upper-cased."""
        return [ln[4:].upper() for ln in self.lines[1:]]

    def __str__(self):
        return " | ".join(self.lines)


class SmtpClient:
    """A line-level SMTP client that sends exactly the bytes it is given."""

    def __init__(self, host, port, source=None, timeout=10.0):
        self.sock = socket.create_connection(
            (host, port), timeout=timeout,
            source_address=(source, 0) if source else None)
        self.buf = b""
        self.closed = False

    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            self.closed = True
            raise ConnectionClosed("server closed the connection")
        self.buf += chunk

    def read_line(self):
        while b"\r\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line.decode("utf-8", "replace")

    def read_reply(self):
        lines = []
        while True:
            line = self.read_line()
            lines.append(line)
            if not re.match(r"\d{3}[ -]|\d{3}$", line):
                raise AssertionError(f"malformed reply line {line!r} (so far {lines})")
            if len(line) == 3 or line[3] == " ":
                return Reply(int(line[:3]), lines)

    def cmd(self, line):
        """Sends one command line (CRLF appended) and reads its reply."""
        self.send(line.encode() + b"\r\n" if isinstance(line, str) else line + b"\r\n")
        return self.read_reply()

    def wait_closed(self, timeout=5.0):
        """True once the server has closed the connection (EOF or reset)
        within timeout; data that arrives meanwhile is kept in buf."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                break
            except OSError:
                self.closed = True
                return True
            if not chunk:
                self.closed = True
                return True
            self.buf += chunk
        return False

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def smtp_session(server, helo="client.example", source=None, ehlo=True):
    """Connects, checks the greeting, sends EHLO (or HELO); returns the
    client and the EHLO/HELO reply."""
    c = SmtpClient("127.0.0.1", server.port, source=source)
    greeting = c.read_reply()
    assert greeting.code == 220, greeting
    hello = c.cmd(f"{'EHLO' if ehlo else 'HELO'} {helo}")
    return c, hello


@dataclass
class Attempt:
    """What happened to one attempted delivery: (stage, Reply or None) in
    order, None meaning the server had closed the connection."""
    steps: list = field(default_factory=list)

    @property
    def final(self):
        """The reply that decided the outcome: the first 4xx/5xx reply to the
        greeting, EHLO, MAIL or DATA, the end-of-data reply, or the last RCPT
        reply when every recipient was refused. None if the server closed
        the connection without saying why."""
        rcpt_replies = []
        for stage, r in self.steps:
            if r is None:
                return None
            if stage == "rcpt":
                rcpt_replies.append(r)
            elif r.code >= 400 or stage == "eod":
                return r
        if rcpt_replies and all(r.code >= 400 for r in rcpt_replies):
            return rcpt_replies[-1]
        return None

    @property
    def any_250_for_message(self):
        return any(stage == "eod" and r is not None and r.code // 100 == 2
                   for stage, r in self.steps)

    def __str__(self):
        return "; ".join(f"{stage}: {r}" for stage, r in self.steps)


def attempt_delivery(port, rcpts, body, sender="sender@client.example",
                     helo="client.example", source=None):
    """Runs EHLO, MAIL, RCPT..., DATA and the message, stopping at the first
    step that makes going on pointless, and records every reply."""
    a = Attempt()
    # The client waits longer than any timeout the tests configure, so that a
    # slow mxfront shows up as a measured delay, not as a client timeout.
    c = SmtpClient("127.0.0.1", port, source=source, timeout=15.0)
    try:
        def step(stage, line=None, raw=None):
            try:
                if raw is not None:
                    c.send(raw)
                    r = c.read_reply()
                elif line is None:
                    r = c.read_reply()
                else:
                    r = c.cmd(line)
            except (ConnectionClosed, ConnectionResetError, BrokenPipeError):
                r = None
            except socket.timeout:
                a.steps.append((stage, None))
                raise AssertionError(f"no reply to {stage} within 15 s: {a}") from None
            a.steps.append((stage, r))
            return r

        r = step("greeting")
        if r is None or r.code != 220:
            return a
        r = step("ehlo", f"EHLO {helo}")
        if r is None or r.code != 250:
            return a
        r = step("mail", f"MAIL FROM:<{sender}>")
        if r is None or r.code != 250:
            return a
        accepted = 0
        for rcpt in rcpts:
            r = step("rcpt", f"RCPT TO:<{rcpt}>")
            if r is None:
                return a
            accepted += r.code // 100 == 2
        if not accepted:
            return a
        r = step("data", "DATA")
        if r is None or r.code != 354:
            return a
        step("eod", raw=dot_stuff(body) + b".\r\n")
        try:
            c.cmd("QUIT")
        except (ConnectionClosed, OSError):
            pass
        return a
    finally:
        c.close()


def dot_stuff(body):
    """Dot-stuffs a CRLF message for the wire (RFC 5321 4.5.2); the result
    ends with CRLF, ready for the final '.\\r\\n'."""
    if not body.endswith(b"\r\n"):
        body += b"\r\n"
    lines = body.split(b"\r\n")[:-1]
    return b"".join((b"." + ln if ln.startswith(b".") else ln) + b"\r\n" for ln in lines)


# --------------------------------------------------------------------------
# stored messages

def header_blocks(msg):
    """The header section of an LF message as a list of (name, raw block)
    where raw block includes continuation lines and the final LF."""
    blocks = []
    pos = 0
    while pos < len(msg) and msg[pos:pos + 1] != b"\n":
        end = msg.index(b"\n", pos) + 1
        while end < len(msg) and msg[end:end + 1] in (b" ", b"\t"):
            end = msg.index(b"\n", end) + 1
        block = msg[pos:end]
        blocks.append((block.split(b":", 1)[0].decode("ascii", "replace"), block))
        pos = end
    return blocks


RFC5322_DATE = (rb"(?:(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), )?\d{1,2} "
                rb"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} "
                rb"\d\d:\d\d:\d\d [+-]\d{4}")


@dataclass
class Stored:
    above: list        # header blocks the backend (Dovecot) put above mxfront's
    received: bytes    # mxfront's Received header, as stored
    rest: bytes        # everything after it: what the client sent


def split_stored(stored, helo, client_ip="127.0.0.1", proto="ESMTP"):
    """Finds mxfront's Received header in a message stored by Dovecot (LF
    line ends) and checks its shape; returns the parts."""
    start = f"Received: from {helo} ([{client_ip}])\n".encode()
    by = f"\tby {HOSTNAME} (mxfront) with ".encode()
    blocks = header_blocks(stored)
    offset = 0
    for i, (name, block) in enumerate(blocks):
        # Dovecot's own Received can start the same way (XCLIENT told it the
        # client's HELO and address): the second line tells them apart.
        if block.startswith(start) and block.split(b"\n")[1].startswith(by):
            break
        offset += len(block)
    else:
        raise AssertionError(f"no header starting {start!r} + {by!r} in stored message:\n"
                             f"{stored[:2000]!r}")
    received = block
    lines = received.split(b"\n")
    assert lines[1].startswith(f"\tby {HOSTNAME} (mxfront) with {proto} id ".encode()), received
    # "; date" at the end, possibly folded after the semicolon
    assert re.search(rb";\s+" + RFC5322_DATE + rb"\n$", received), received
    return Stored(above=blocks[:i], received=received, rest=stored[offset + len(received):])


def lf(data):
    """What Dovecot stores for CRLF input: LF line ends."""
    return data.replace(b"\r\n", b"\n")


# --------------------------------------------------------------------------
# mxfront

def write_config(path, sections):
    """Writes an INI file from {section: {key: value}}; returns
    {(section, key): line number} so tests can check error positions."""
    lines, where = ["# written by tests/e2e"], {}
    for section, keys in sections.items():
        lines.append(f"[{section}]")
        for key, value in keys.items():
            lines.append(f"{key} = {value}")
            where[(section, key)] = len(lines)
    Path(path).write_text("\n".join(lines) + "\n")
    return where


def mxfront_config(backend_address, overrides=None):
    sections = {
        # mxfront refuses to stay root unless told to; the tests run as root.
        "server": {"listen": "127.0.0.1:0", "hostname": HOSTNAME,
                   **({"user": "root"} if os.geteuid() == 0 else {})},
        "backend": {"address": backend_address, "connect_timeout": "5s", "timeout": "20s"},
        "timeouts": {"command": "30s", "data": "30s"},
        # No certificates unless a test gives a certs_dir: plaintext on purpose
        # (a certs_dir that cannot be read stops mxfront from starting).
        "tls": {"certs_dir": ""},
    }
    for section, keys in (overrides or {}).items():
        sections.setdefault(section, {}).update(keys)
    return sections


def run_mxfront(*args, timeout=20):
    """Runs mxfront to completion (CLI modes); fails on sanitizer output."""
    p = subprocess.run([MXFRONT_BIN, *args], capture_output=True, text=True, timeout=timeout)
    found = sanitizer_report(p.stderr)
    assert not found, f"sanitizer report ({found}) from mxfront {args}:\n{p.stderr}"
    return p


def _nofile_preexec(nofile):
    """A preexec_fn giving the child RLIMIT_NOFILE nofile: (soft, hard), or
    one number for both; None for the inherited limits."""
    if nofile is None:
        return None
    soft, hard = nofile if isinstance(nofile, tuple) else (nofile, nofile)

    def preexec():
        import resource
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return preexec


class Mxfront:
    """One running daemon, started with --address-file (and, with nofile, a
    descriptor limit: see _nofile_preexec)."""

    def __init__(self, workdir, sections, nofile=None):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.conf = self.dir / "mxfront.conf"
        self.addr_file = self.dir / "addresses"
        self.log_path = self.dir / "mxfront.log"
        write_config(self.conf, sections)
        self.exit_code = None
        self.killed = False
        self._log_file = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [MXFRONT_BIN, "-c", str(self.conf), "--address-file", str(self.addr_file)],
            stdin=subprocess.DEVNULL, stdout=self._log_file, stderr=self._log_file,
            preexec_fn=_nofile_preexec(nofile))
        self.pid = self.proc.pid
        try:
            wait_until(lambda: self.addr_file.exists() or self.proc.poll() is not None,
                       START_DEADLINE, "mxfront's address file")
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"mxfront exited with {self.proc.returncode} at startup:\n{self.log()}")
        except BaseException:
            self.stop()
            raise
        self.addresses = self.addr_file.read_text().split()
        host, port = self.addresses[0].rsplit(":", 1)
        self.host, self.port = host.strip("[]"), int(port)
        self.wait_backend_settled(sections)

    def wait_backend_settled(self, sections, timeout=2.0):
        """Each worker's pool asks the backend what it offers at start, and
        EHLO offers the conservative set until it knows: wait (briefly, not
        failing: the backend may be down on purpose) until every worker has
        its answer, so that tests see the backend's capabilities."""
        workers = int(sections.get("server", {}).get("workers", 0)) or os.cpu_count() or 1
        rx = re.compile(r"\bevent=backend_(ready|down)\b")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            if sum(1 for line in self.log().splitlines() if rx.search(line)) >= workers:
                return
            time.sleep(POLL)

    def log(self):
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_log(self, pattern, timeout=5.0, count=1):
        """Waits until pattern (a regex) matches count lines of the log;
        returns the matches."""
        rx = re.compile(pattern)

        def found():
            ms = [m for m in map(rx.search, self.log().splitlines()) if m]
            return ms if len(ms) >= count else None
        return wait_until(found, timeout, f"log line /{pattern}/ x{count} in mxfront's log")

    def wait_exit(self, timeout=STOP_DEADLINE):
        """Waits for the daemon to exit by itself (e.g. after a signal the
        test sent); returns the exit code, or None if it is still running."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        return self.stop()

    def stop(self):
        """SIGTERM, wait with a deadline, then SIGKILL. Returns the exit code."""
        if self.exit_code is None:
            self.exit_code, self.killed = stop_process(self.proc)
            self._log_file.close()
        return self.exit_code


# --------------------------------------------------------------------------
# Dovecot LMTP

DOVECOT_USERS = ("alice", "bob", "carol")
NOBODY_UID = NOBODY_GID = 65534

DOVECOT_CONF = """\
base_dir = {run}
state_dir = {state}
log_path = {log}
protocols = lmtp
listen = 127.0.0.1
ssl = no
mail_location = maildir:~/Maildir
first_valid_uid = 1
auth_username_format = %Ln
login_trusted_networks = 127.0.0.0/8
lmtp_rcpt_check_quota = yes
passdb {{
  driver = passwd-file
  args = {passwd}
}}
userdb {{
  driver = passwd-file
  args = {passwd}
}}
service anvil {{
  chroot =
}}
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {port}
  }}
{lmtp_service}}}
"""

# Stock Dovecot 2.3's limits for its lmtp service (`doveconf -d`:
# default_process_limit = 100, client_limit = 1), spelled out for a test that
# depends on them: at most 100 LMTP connections at once, one process each.
STOCK_LMTP_LIMITS = {"process_limit": 100, "client_limit": 1}


def proc_stats():
    """(pid, comm, fields after comm) of every process, from /proc/PID/stat:
    fields[0] is its state, [1] its parent's pid, [2] its process group."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        yield (int(entry), stat[stat.index("(") + 1:stat.rindex(")")],
               stat[stat.rindex(")") + 2:].split())


def children(pid):
    """(pid, comm) of the processes whose parent is pid."""
    return [(child, comm) for child, comm, fields in proc_stats() if int(fields[1]) == pid]


def make_traversable(path):
    """Dovecot's auth process (user dovecot) and its lmtp process (nobody)
    must reach files under the test's temporary directory, which pytest makes
    0700: add search permission (not read) up the tree."""
    p = Path(path).resolve()
    for d in [p, *p.parents]:
        mode = d.stat().st_mode & 0o7777
        if mode & 0o011 != 0o011:
            os.chmod(d, mode | 0o011)


class Dovecot:
    """A private Dovecot LMTP server with users alice, bob and carol.

    Unix sockets live in a short directory of their own under /tmp (socket
    paths are limited to 107 bytes); everything else under workdir.
    lmtp_service: extra settings of `service lmtp` (e.g. STOCK_LMTP_LIMITS)."""

    def __init__(self, workdir, lmtp_service=None):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        make_traversable(self.dir)
        self.run_dir = tempfile.mkdtemp(prefix="mxfdv-")
        os.chmod(self.run_dir, 0o755)
        state = self.dir / "state"
        state.mkdir(exist_ok=True)
        self.log_path = self.dir / "dovecot.log"
        self.stdout_path = self.dir / "dovecot.stdout"
        mail = self.dir / "mail"
        mail.mkdir(exist_ok=True)
        passwd = self.dir / "passwd"
        passwd.write_text("".join(
            f"{u}:{{PLAIN}}x:{NOBODY_UID}:{NOBODY_GID}::{mail / u}::\n" for u in DOVECOT_USERS))
        os.chmod(passwd, 0o644)
        for u in DOVECOT_USERS:
            (mail / u).mkdir(exist_ok=True)
            os.chown(mail / u, NOBODY_UID, NOBODY_GID)
        os.chown(mail, NOBODY_UID, NOBODY_GID)
        self.mail = mail
        self.proc = None
        self.terminated_at = None
        for _attempt in range(3):  # a free port can be taken between probe and bind
            self.port = free_port()
            self.conf = self.dir / "dovecot.conf"
            self.conf.write_text(DOVECOT_CONF.format(
                run=self.run_dir, state=state, log=self.log_path, passwd=passwd, port=self.port,
                lmtp_service="".join(f"  {k} = {v}\n" for k, v in (lmtp_service or {}).items())))
            out = open(self.stdout_path, "ab")
            self.proc = subprocess.Popen(["dovecot", "-F", "-c", str(self.conf)],
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                         start_new_session=True)
            out.close()
            try:
                wait_until(lambda: self.proc.poll() is not None or port_accepts("127.0.0.1", self.port),
                           START_DEADLINE, "Dovecot to accept LMTP connections")
            except BaseException:
                stop_process(self.proc)
                self.cleanup()
                raise
            if self.proc.poll() is None:
                break
        else:
            self.cleanup()
            raise AssertionError(f"Dovecot did not start:\n{self.log()}")
        self.address = f"127.0.0.1:{self.port}"

    def log(self):
        text = ""
        for p in (self.stdout_path, self.log_path):
            if p.exists():
                text += p.read_text(errors="replace")
        return text

    def maildir(self, user):
        return self.mail / user / "Maildir"

    def maildir_messages(self, user):
        """Bytes of every delivered message (new/ and cur/), oldest first."""
        files = []
        for sub in ("new", "cur"):
            d = self.maildir(user) / sub
            if d.is_dir():
                files += [p for p in d.iterdir() if p.is_file()]

        def order(p):  # Maildir names: <secs>.M<usecs>P<pid>...
            m = re.match(r"(\d+)\.M(\d+)P", p.name)
            return (int(m.group(1)), int(m.group(2))) if m else (0, 0)
        return [p.read_bytes() for p in sorted(files, key=order)]

    def wait_messages(self, user, n, timeout=5.0):
        """Waits until user has at least n messages; returns them all."""
        def enough():
            messages = self.maildir_messages(user)
            return messages if len(messages) >= n else None
        return wait_until(enough, timeout, f"{n} message(s) for {user}")

    def all_messages(self):
        return {u: self.maildir_messages(u) for u in DOVECOT_USERS}

    def lmtp_pids(self):
        """Pids of the lmtp processes this Dovecot's master runs now (comm
        `lmtp`, process title `dovecot/lmtp`)."""
        return [pid for pid, comm in children(self.proc.pid) if comm == "lmtp"]

    def terminate(self):
        """Sends SIGTERM; the caller waits (Dovecot's master takes about a
        second to stop, so the suite reaps it later, see conftest)."""
        self.terminated_at = time.monotonic()
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def cleanup(self):
        shutil.rmtree(self.run_dir, ignore_errors=True)


# --------------------------------------------------------------------------
# a scripted fake LMTP backend

@dataclass
class FakeConnection:
    received: bytearray = field(default_factory=bytearray)  # every byte, in order
    chunks: list = field(default_factory=list)              # the bytes of each recv()
    commands: list = field(default_factory=list)            # command lines (no DATA payload)
    messages: list = field(default_factory=list)            # complete DATA payloads (wire form)
    partial: bytearray = field(default_factory=bytearray)   # DATA bytes of an unfinished message
    eof: threading.Event = field(default_factory=threading.Event)  # peer closed or reset
    peer: tuple = None


class FakeLmtp:
    """A scripted LMTP server on 127.0.0.1:0 (one thread per connection).

    Script keywords:
      greeting      first line, or None to never greet
      capabilities  LHLO keywords after the name line
      after_lhlo    "ok" | "close" | "hang" | "garbage"
      mail_reply    reply to MAIL, or "close" to close the connection instead
      rcpt_replies  {address: reply}; others get rcpt_default
      data_reply    reply to DATA
      rset_reply    reply to RSET
      at_eod        "reply" | "hang" | "garbage" | "close"
      eod_replies   replies, one per accepted recipient (the last one repeats)
      cut_in_data   None, or close the connection once that many bytes of a
                    message have arrived (before its end): a backend dying
                    mid-DATA
      cut_how       "close" (FIN) | "reset" (RST) for cut_in_data
    port: 0 for any free port, or a given one (e.g. one a test freed).
    The script keywords are read as each connection goes, so a test may
    change them on the running server (a backend that heals).
    Every connection is recorded (FakeConnection); lifetime is bounded."""

    def __init__(self, greeting="220 fake.backend LMTP ready",
                 capabilities=("PIPELINING", "ENHANCEDSTATUSCODES", "8BITMIME"),
                 after_lhlo="ok", mail_reply="250 2.1.0 Ok", rcpt_replies=None,
                 rcpt_default="250 2.1.5 Ok", data_reply="354 Send data",
                 at_eod="reply", eod_replies=None, xclient_reply="220 fake.backend ready",
                 rset_reply="250 2.0.0 Ok",
                 lifetime=60.0, cut_in_data=None, cut_how="close", port=0):
        self.greeting = greeting
        self.capabilities = list(capabilities)
        self.after_lhlo = after_lhlo
        self.mail_reply = mail_reply
        self.rcpt_replies = {k.lower(): v for k, v in (rcpt_replies or {}).items()}
        self.rcpt_default = rcpt_default
        self.data_reply = data_reply
        self.at_eod = at_eod
        self.eod_replies = eod_replies
        self.xclient_reply = xclient_reply
        self.rset_reply = rset_reply
        self.cut_in_data = cut_in_data
        self.cut_how = cut_how
        self.connections = []
        self._stop = threading.Event()
        self._deadline = time.monotonic() + lifetime
        self._lock = threading.Lock()
        self._threads = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(16)
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        t = threading.Thread(target=self._accept_loop, daemon=True)
        t.start()
        self._threads.append(t)

    def _running(self):
        return not self._stop.is_set() and time.monotonic() < self._deadline

    def _accept_loop(self):
        while self._running():
            try:
                conn, peer = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            rec = FakeConnection(peer=peer)
            with self._lock:
                self.connections.append(rec)
            t = threading.Thread(target=self._serve, args=(conn, rec), daemon=True)
            t.start()
            self._threads.append(t)

    @property
    def used(self):
        """The connections that carried more than LHLO: mxfront's pool opens
        one per worker at start only to learn the capabilities."""
        return [c for c in self.connections
                if any(cmd.split(" ", 1)[0].upper() != "LHLO" for cmd in c.commands)]

    def wait_connections(self, n=1, timeout=5.0):
        return wait_until(lambda: self.connections if len(self.connections) >= n else None,
                          timeout, f"{n} connection(s) to the fake backend")

    def _serve(self, conn, rec):
        conn.settimeout(0.05)
        buf = b""
        mode = "command"          # command | data | hang
        accepted = []
        in_tx = False             # MAIL accepted, transaction open

        def send(line):
            try:
                conn.sendall(line.encode() + b"\r\n")
            except OSError:
                pass

        try:
            if self.greeting is None:
                mode = "hang"
            else:
                send(self.greeting)
            while self._running():
                try:
                    chunk = conn.recv(65536)
                except socket.timeout:
                    continue
                except OSError:
                    rec.eof.set()
                    return
                if not chunk:
                    rec.eof.set()
                    return
                rec.received += chunk
                rec.chunks.append(bytes(chunk))
                if mode == "hang":
                    continue
                buf += chunk
                while mode != "hang":
                    if mode == "data":
                        data = bytes(rec.partial) + buf
                        buf = b""
                        if data.startswith(b".\r\n"):     # empty message
                            cut = 3
                        else:
                            end = data.find(b"\r\n.\r\n")
                            if end < 0:
                                rec.partial = bytearray(data)
                                if self.cut_in_data is not None and \
                                        len(data) >= self.cut_in_data:
                                    if self.cut_how == "reset":
                                        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                                        struct.pack("ii", 1, 0))
                                    return
                                break
                            cut = end + 5
                        rec.messages.append(bytes(data[:cut]))
                        rec.partial = bytearray()
                        buf = data[cut:]
                        mode = "command"
                        in_tx = False
                        if self.at_eod == "hang":
                            mode = "hang"
                            break
                        if self.at_eod == "garbage":
                            send("HELLO?")
                        elif self.at_eod == "close":
                            return
                        else:
                            replies = self.eod_replies or []
                            for i, rcpt in enumerate(accepted):
                                r = replies[min(i, len(replies) - 1)] if replies else \
                                    f"250 2.0.0 <{rcpt}> Ok delivered"
                                send(r)
                        accepted = []
                        continue
                    if b"\r\n" not in buf:
                        break
                    line, buf = buf.split(b"\r\n", 1)
                    text = line.decode("utf-8", "replace")
                    rec.commands.append(text)
                    verb = text.split(" ", 1)[0].upper()
                    if verb == "LHLO":
                        if self.after_lhlo == "close":
                            return
                        if self.after_lhlo == "hang":
                            mode = "hang"
                            break
                        if self.after_lhlo == "garbage":
                            send("HELLO?")
                            continue
                        caps = ["fake.backend", *self.capabilities]
                        for i, cap in enumerate(caps):
                            send(f"250{'-' if i < len(caps) - 1 else ' '}{cap}")
                    elif verb == "XCLIENT":
                        send(self.xclient_reply)
                    elif verb == "MAIL":
                        accepted = []
                        if self.mail_reply == "close":
                            return
                        in_tx = self.mail_reply.startswith("2")
                        send(self.mail_reply)
                    elif verb == "RCPT":
                        m = re.search(r"<([^>]*)>", text)
                        addr = m.group(1).lower() if m else ""
                        r = self.rcpt_replies.get(addr, self.rcpt_default)
                        if not in_tx:
                            r = "503 5.5.1 MAIL needed first"
                        if r.startswith("2"):
                            accepted.append(addr)
                        send(r)
                    elif verb == "DATA":
                        if not accepted:
                            send("503 5.5.1 No valid recipients")
                        else:
                            send(self.data_reply)
                            mode = "data"
                    elif verb == "RSET":
                        accepted = []
                        in_tx = False
                        send(self.rset_reply)
                    elif verb == "NOOP":
                        send("250 2.0.0 Ok")
                    elif verb == "QUIT":
                        send("221 2.0.0 Bye")
                        return
                    else:
                        send("500 5.5.2 Unknown command")
        finally:
            try:
                conn.close()
            except OSError:
                pass

    def stop(self):
        self._stop.set()
        try:
            self.sock.close()
        except OSError:
            pass
        for t in self._threads:
            t.join(timeout=2.0)


def closed_port_address():
    """host:port where nothing listens (a port just released)."""
    return f"127.0.0.1:{free_port()}"


# --------------------------------------------------------------------------
# resources of a running daemon (hardening tests)

def sanitized_build(path=MXFRONT_BIN):
    """True when the binary is built with AddressSanitizer: its memory use is
    then inflated by shadow memory and the quarantine of freed blocks."""
    try:
        return b"__asan_init" in Path(path).read_bytes()
    except OSError:
        return False


def rss_kb(pid):
    """Resident set size of process pid in KiB (VmRSS of /proc/PID/status)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def tcp_established(local_port):
    """How many established IPv4 TCP sockets have local port local_port (a
    server's side of its connections, those still in its accept queue
    included), from /proc/net/tcp."""
    with open("/proc/net/tcp") as f:
        next(f)
        return sum(1 for line in f
                   if line.split()[3] == "01"
                   and int(line.split()[1].split(":")[1], 16) == local_port)


def tcp_queues(local_port, remote_port):
    """(send queue, receive queue) in bytes of the established IPv4 TCP
    socket 127.0.0.1:local_port <-> remote_port, from /proc/net/tcp; None if
    there is no such socket."""
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            local, remote, state = fields[1], fields[2], fields[3]
            if (state == "01" and int(local.split(":")[1], 16) == local_port
                    and int(remote.split(":")[1], 16) == remote_port):
                tx, rx = fields[4].split(":")
                return int(tx, 16), int(rx, 16)
    return None
