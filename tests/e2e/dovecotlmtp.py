"""A private Dovecot LMTP server (users alice, bob and carol) for the
end-to-end tests, and parsers for the messages it stores (LF line ends, its
headers above mxfront's Received header: split_stored)."""
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from procs import HOSTNAME, START_DEADLINE, children, make_traversable, stop_process
from waits import free_port, port_accepts, wait_until

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
