"""Helpers for the reload, stop and service tests (test_reload.py,
test_stop.py, test_contrib.py): certificates made with openssl, a STARTTLS
client that reports the certificate it was served, SIGHUP with a wait for the
reload's outcome, and an LMTP backend that holds its end-of-data replies until
the test releases them. Nothing here sleeps a fixed time."""
import os
import re
import signal
import socket
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from lib import SmtpClient, wait_until

RELOAD_RX = re.compile(r"\bevent=reload result=(ok|failed)\b")
NOBODY = "nobody"
NOGROUP = "nogroup"


# --------------------------------------------------------------------------
# certificates

@dataclass
class Cert:
    """One generated certificate: its PEM files and its DER encoding (what a
    TLS client sees)."""
    names: tuple
    serial: int
    fullchain: bytes
    privkey: bytes
    der: bytes

    def describe(self):
        return f"cert serial={self.serial:#x} names={','.join(self.names)}"


def make_cert(scratch, names, serial, days=30, rsa=False, reuse_key=None):
    """A self-signed ECDSA P-256 (or RSA-2048) certificate for names (first
    one as CN), with a serial number of our choice so that tests can tell
    certificates apart; REUSE_KEY (PEM bytes) keeps a key instead of making
    one. scratch is a directory for openssl's output files."""
    scratch = Path(scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    key, crt = scratch / f".{serial:x}.key", scratch / f".{serial:x}.crt"
    san = ",".join(f"DNS:{n}" for n in names)
    if reuse_key is not None:
        key.write_bytes(reuse_key)
        keyargs = ["-key", str(key)]
    elif rsa:
        keyargs = ["-newkey", "rsa:2048", "-keyout", str(key)]
    else:
        keyargs = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-keyout", str(key)]
    p = subprocess.run(
        ["openssl", "req", "-x509", *keyargs,
         "-nodes", "-out", str(crt), "-days", str(days),
         "-subj", f"/CN={names[0]}", "-addext", f"subjectAltName={san}",
         "-set_serial", str(serial)],
        capture_output=True, text=True, timeout=20)
    assert p.returncode == 0, p.stderr
    pem = crt.read_bytes()
    cert = Cert(tuple(names), serial, pem, key.read_bytes(),
                ssl.PEM_cert_to_DER_cert(pem.decode()))
    key.unlink()
    crt.unlink()
    return cert


def make_expired_cert(scratch, names, serial):
    """Like make_cert, but valid only in January 2020 (openssl req cannot
    make one in the past; certtool can)."""
    scratch = Path(scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    key, crt, tmpl = (scratch / f".{serial:x}.{ext}" for ext in ("key", "crt", "tmpl"))
    tmpl.write_text(f'cn = "{names[0]}"\n' + "".join(f'dns_name = "{n}"\n' for n in names) +
                    f"serial = {serial}\n"
                    'activation_date = "2020-01-01 00:00:00"\n'
                    'expiration_date = "2020-02-01 00:00:00"\n'
                    "tls_www_server\n")
    for args in (["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt",
                  "ec_paramgen_curve:P-256", "-out", str(key)],
                 ["certtool", "--generate-self-signed", "--no-text", "--load-privkey", str(key),
                  "--template", str(tmpl), "--outfile", str(crt)]):
        p = subprocess.run(args, capture_output=True, text=True, timeout=20)
        assert p.returncode == 0, f"{args[0]}: {p.stderr}"
    pem = crt.read_bytes()
    cert = Cert(tuple(names), serial, pem, key.read_bytes(),
                ssl.PEM_cert_to_DER_cert(pem.decode()))
    for f in (key, crt, tmpl):
        f.unlink()
    return cert


def write_atomic(path, data, mode=0o644):
    """Writes data to path through a hidden temporary file and a rename, so a
    reader (mxfront reloading) sees the old file or the new one, never half."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def install_cert(certs_dir, label, cert, fullchain=None, privkey=None):
    """Puts cert into certs_dir/label/ (created if needed), each file replaced
    atomically; fullchain/privkey override the bytes written (broken files)."""
    d = Path(certs_dir) / label
    d.mkdir(parents=True, exist_ok=True)
    write_atomic(d / "privkey.pem", cert.privkey if privkey is None else privkey, 0o600)
    write_atomic(d / "fullchain.pem", cert.fullchain if fullchain is None else fullchain)


def describe_der(der, known):
    for c in known:
        if c.der == der:
            return c.describe()
    return f"an unknown certificate ({len(der)} bytes)"


# --------------------------------------------------------------------------
# TLS clients

def client_context():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def starttls(c, sni):
    """Runs STARTTLS on an SmtpClient that has sent EHLO; sends SNI sni
    (None: no SNI). The client then speaks over TLS."""
    r = c.cmd("STARTTLS")
    assert r.code == 220, f"STARTTLS: {r}"
    assert c.buf == b"", f"bytes after the 220 to STARTTLS: {c.buf!r}"
    c.sock = client_context().wrap_socket(c.sock, server_hostname=sni)
    return c


def tls_session(port, sni, helo="client.example"):
    """A client connected to 127.0.0.1:port, through EHLO, STARTTLS (with SNI
    sni) and EHLO again. Returns the client."""
    c = SmtpClient("127.0.0.1", port)
    try:
        r = c.read_reply()
        assert r.code == 220, r
        r = c.cmd(f"EHLO {helo}")
        assert r.code == 250 and "STARTTLS" in r.keywords, f"no STARTTLS offered: {r}"
        starttls(c, sni)
        r = c.cmd(f"EHLO {helo}")
        assert r.code == 250, r
    except BaseException:
        c.close()
        raise
    return c


def served_cert(port, sni):
    """The DER certificate a new connection gets for SNI sni (None: none)."""
    c = tls_session(port, sni)
    try:
        return c.sock.getpeercert(binary_form=True)
    finally:
        try:
            c.cmd("QUIT")
        except Exception:
            pass
        c.close()


def assert_served(port, sni, want, known):
    got = served_cert(port, sni)
    assert got == want.der, (f"SNI {sni!r}: expected {want.describe()}, "
                             f"got {describe_der(got, known)}")


# --------------------------------------------------------------------------
# signals

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
# files the daemon reads after dropping privileges

def make_readable_by(path, user=NOBODY, group=NOGROUP):
    """Lets user reach and read a tree made by root in a pytest tmp dir:
    search permission up to /, directories and files group-readable by group
    (private keys too: mode 0640, as the deploy hook leaves them)."""
    import grp
    import lib
    gid = grp.getgrnam(group).gr_gid
    path = Path(path)
    lib.make_traversable(path)
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


# --------------------------------------------------------------------------
# an LMTP backend whose end-of-data replies wait for the test

@dataclass
class HeldMessage:
    data: bytes
    rcpts: list


@dataclass
class HeldConnection:
    commands: list = field(default_factory=list)
    messages: list = field(default_factory=list)   # HeldMessage, once the final dot came
    eof: threading.Event = field(default_factory=threading.Event)


class GatedLmtp:
    """LMTP on 127.0.0.1:0 accepting everything; after a message's final dot
    it replies only once release() was called (or after lifetime seconds)."""

    def __init__(self, lifetime=30.0):
        self.gate = threading.Event()
        self.got_dot = threading.Event()
        self.connections = []
        self._deadline = time.monotonic() + lifetime
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.05)
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def release(self):
        self.gate.set()

    def close(self):
        self._closed = True
        self.gate.set()
        self.sock.close()

    def _accept(self):
        while not self._closed and time.monotonic() < self._deadline:
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            rec = HeldConnection()
            self.connections.append(rec)
            threading.Thread(target=self._serve, args=(conn, rec), daemon=True).start()

    def _serve(self, conn, rec):
        conn.settimeout(self._deadline - time.monotonic())
        f = conn.makefile("rb")

        def send(text):
            conn.sendall(text.encode() + b"\r\n")
        try:
            send("220 gated.backend LMTP")
            rcpts = []
            while True:
                line = f.readline()
                if not line:
                    return
                cmd = line.rstrip(b"\r\n").decode("utf-8", "replace")
                rec.commands.append(cmd)
                verb = cmd.split(" ", 1)[0].upper()
                if verb == "LHLO":
                    send("250-gated.backend")
                    send("250-PIPELINING")
                    send("250 ENHANCEDSTATUSCODES")
                elif verb == "MAIL":
                    rcpts = []
                    send("250 2.1.0 Ok")
                elif verb == "RCPT":
                    rcpts.append(cmd)
                    send("250 2.1.5 Ok")
                elif verb == "DATA":
                    send("354 go ahead")
                    data = b""
                    while True:
                        chunk = f.readline()
                        if not chunk:
                            return
                        if chunk == b".\r\n":
                            break
                        data += chunk
                    rec.messages.append(HeldMessage(data, rcpts))
                    self.got_dot.set()
                    self.gate.wait(max(0.0, self._deadline - time.monotonic()))
                    for _ in rcpts:
                        send("250 2.0.0 delivered after the wait")
                elif verb == "QUIT":
                    send("221 2.0.0 bye")
                    return
                else:
                    send("250 2.0.0 Ok")
        except OSError:
            pass
        finally:
            rec.eof.set()
            conn.close()
