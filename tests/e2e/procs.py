"""Process control for the end-to-end tests: the mxfront daemon (its
config file, start with --address-file, log, signals and reloads, stop with
a deadline), mxfront run to completion (CLI modes), and readers of /proc
(process tree, ids, memory, TCP queues)."""
import os
import re
import signal
import subprocess
import time
from pathlib import Path

from waits import POLL, wait_until

REPO = Path(__file__).resolve().parents[2]
MXFRONT_BIN = os.environ.get("MXFRONT_BIN", str(REPO / "build" / "mxfront"))
HOSTNAME = "mx.test.example"
START_DEADLINE = 15.0  # generous: the suite also runs against an ASan build
STOP_DEADLINE = 10.0
SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:")
RELOAD_RX = re.compile(r"\bevent=reload result=(ok|failed)\b")
NOBODY = "nobody"
NOGROUP = "nogroup"


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
# signals and reloads

def reload_lines(m):
    return [ln for ln in m.log().splitlines() if RELOAD_RX.search(ln)]


def hup(m, timeout=10.0):
    """Sends SIGHUP to mxfront m and waits for the reload's outcome line
    (event=reload result=ok|failed); returns that line."""
    before = len(reload_lines(m))
    os.kill(m.pid, signal.SIGHUP)
    lines = wait_until(lambda: (lambda ls: ls if len(ls) > before else None)(reload_lines(m)),
                       timeout, "the outcome of the reload (event=reload result=...)")
    return lines[before]


def hup_ok(m, timeout=10.0):
    line = hup(m, timeout)
    assert "result=ok" in line, f"reload failed: {line}\n{m.log()[-3000:]}"
    return line


def field_of(line, key):
    """The value of key=value in a log line (quotes stripped)."""
    m = re.search(rf'\b{key}=("(?:[^"\\]|\\.)*"|\S+)', line)
    assert m, f"no {key}= in {line!r}"
    v = m.group(1)
    return v[1:-1] if v.startswith('"') else v

# --------------------------------------------------------------------------
# /proc readers and file modes

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


def make_readable_by(path, user=NOBODY, group=NOGROUP):
    """Lets user reach and read a tree made by root in a pytest tmp dir:
    search permission up to /, directories and files group-readable by group
    (private keys too: mode 0640, as the deploy hook leaves them)."""
    import grp
    gid = grp.getgrnam(group).gr_gid
    path = Path(path)
    make_traversable(path)
    for root, dirs, files in os.walk(path):
        os.chown(root, -1, gid)
        os.chmod(root, 0o750)
        for f in files:
            p = Path(root) / f
            os.chown(p, -1, gid)
            os.chmod(p, 0o640)


def proc_ids(pid):
    """(real, effective, saved, fs) uids and gids of a running process, and
    its effective capability mask."""
    text = Path(f"/proc/{pid}/status").read_text()
    uids = tuple(int(x) for x in re.search(r"^Uid:\s+(.*)$", text, re.M).group(1).split())
    gids = tuple(int(x) for x in re.search(r"^Gid:\s+(.*)$", text, re.M).group(1).split())
    capeff = int(re.search(r"^CapEff:\s+(\w+)$", text, re.M).group(1), 16)
    return uids, gids, capeff

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
