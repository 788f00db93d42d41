"""Real STARTTLS clients for the TLS end-to-end tests, each reduced to one
function that connects, says EHLO/STARTTLS, completes (or fails) the
handshake and reports what it was served (Served).

  gnutls       gnutls-cli --starttls-proto=smtp      (strips one trailing dot from SNI)
  openssl      openssl s_client -starttls smtp
  swaks        swaks --tls --quit-after TLS
  posttls      Postfix's posttls-finger
  python       Python's ssl over smtpclient.SmtpClient's socket

Every function takes sni=None for "send no SNI", ca= the root CA file to
verify the chain against and verify_name= the DNS name to verify the
certificate for. What each tool sends as SNI was checked against a server
that logs the raw name: all send it verbatim (case kept), except gnutls-cli
which drops a trailing dot."""
import os
import re
import ssl
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from certs import describe_der
from smtpclient import SmtpClient

CLIENT_TIMEOUT = 15.0
PEM_RX = re.compile(r"-----BEGIN CERTIFICATE-----\n.*?-----END CERTIFICATE-----\n?", re.S)


@dataclass
class Served:
    client: str
    handshake: bool          # the handshake completed
    der: bytes = None        # the leaf certificate the server sent
    subject: str = ""        # the leaf's subject, as the client printed it
    verified: bool = None    # chain (and name) verified against the root CA
    chain_len: int = 0       # certificates the server sent (-1: unknown)
    output: str = ""         # everything the client printed

    def __str__(self):
        return (f"{self.client}: handshake={self.handshake} subject={self.subject!r} "
                f"verified={self.verified} chain={self.chain_len}\n--- output ---\n"
                f"{self.output[-3000:]}")


def _pems(text):
    """PEM certificates printed in text (prefixes such as swaks' '=== ' removed)."""
    return [ssl.PEM_cert_to_DER_cert(m.group(0)) for m in PEM_RX.finditer(text)]


def _run(args, stdin=b"", env=None):
    try:
        p = subprocess.run(args, input=stdin, capture_output=True, timeout=CLIENT_TIMEOUT,
                           env=env)
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"") + (e.stderr or b"")
        raise AssertionError(f"{args[0]} did not finish within {CLIENT_TIMEOUT}s:\n"
                             f"{out.decode(errors='replace')}") from None
    return (p.stdout + b"\n" + p.stderr).decode(errors="replace")


def gnutls(port, sni=None, host="127.0.0.1", ca=None, verify_name=None, priority=None,
           extra=()):
    args = ["gnutls-cli", "--starttls-proto=smtp", "--print-cert", "-p", str(port)]
    args += ["--disable-sni"] if sni is None else ["--sni-hostname", sni]
    if ca:
        args += ["--x509cafile", str(ca), "--verify-hostname", verify_name or sni or host]
    else:
        args += ["--no-ca-verification"]
    if priority:
        args += ["--priority", priority]
    out = _run([*args, *extra, host])
    pems = _pems(out)
    m = re.search(r"Certificate\[0\] info:\n - subject `([^']*)'", out)
    return Served("gnutls-cli", "Handshake was completed" in out, pems[0] if pems else None,
                  m.group(1) if m else "",
                  ("The certificate is trusted." in out) if ca else None, len(pems), out)


def openssl(port, sni=None, host="127.0.0.1", ca=None, verify_name=None, extra=()):
    args = ["openssl", "s_client", "-starttls", "smtp", "-connect", f"{host}:{port}",
            "-showcerts"]
    args += ["-noservername"] if sni is None else ["-servername", sni]
    if ca:
        args += ["-CAfile", str(ca), "-verify_hostname", verify_name or sni]
    out = _run([*args, *extra], stdin=b"QUIT\r\n")
    pems = _pems(out)
    m = re.search(r"^subject=(.*)$", out, re.M)
    # "New, TLSv1.3, Cipher is X" on success; "New, (NONE), Cipher is (NONE)" otherwise
    handshake = bool(re.search(r"^New, TLSv[\d.]+, Cipher is ", out, re.M))
    verified = None
    if ca:
        verified = bool(re.search(r"Verify return code: 0 \(ok\)", out))
    return Served("openssl s_client", handshake, pems[0] if pems else None,
                  m.group(1) if m else "", verified, len(pems), out)


def swaks(port, sni=None, host="127.0.0.1", ca=None, verify_name=None):
    """swaks verifies the chain with --tls-verify (not the name: verify_name
    is unused; callers compare the DER)."""
    args = ["swaks", "--server", f"{host}:{port}", "--tls", "--quit-after", "TLS",
            "--tls-get-peer-cert", "--helo", "swaks.client.example"]
    if sni is not None:
        args += ["--tls-sni", sni]
    if ca:
        args += ["--tls-verify", "--tls-ca-path", str(ca)]
    out = _run(args)
    pems = _pems(re.sub(r"^=== ", "", out, flags=re.M))
    m = re.search(r'TLS peer DN="([^"]*)"', out)
    return Served("swaks", "=== TLS started with cipher" in out, pems[0] if pems else None,
                  m.group(1) if m else "", ("TLS started" in out) if ca else None, -1, out)


def posttls(port, sni=None, host="127.0.0.1", ca=None, verify_name=None, config_dir=None):
    """posttls-finger -c -C [-s SNI]; with ca, security level `secure`
    matching verify_name. config_dir: a directory with an empty main.cf."""
    if config_dir is None:
        with tempfile.TemporaryDirectory(prefix="mxf-ptf-") as d:
            return posttls(port, sni, host, ca, verify_name, d)
    postfix_empty_config(config_dir)
    args = ["posttls-finger", "-c", "-C", "-d", "sha256"]
    if sni is not None:
        args += ["-s", sni]
    if ca:
        args += ["-l", "secure", "-F", str(ca)]
    else:
        args += ["-l", "may"]
    args.append(f"[{host}]:{port}")
    if ca:
        args.append(verify_name or sni)
    out = _run(args, env={"MAIL_CONFIG": str(config_dir), "PATH": "/usr/sbin:/usr/bin:/bin"})
    pems = _pems(out)
    m = re.search(r"^ 0 subject: (.*)$", out, re.M)
    handshake = bool(re.search(r"TLS connection established to", out))
    verified = bool(re.search(r"Verified TLS connection established", out)) if ca else None
    return Served("posttls-finger", handshake, pems[0] if pems else None,
                  m.group(1) if m else "", verified, len(pems), out)


def postfix_backdate(path):
    """Postfix programs pause about 2 s when main.cf was modified within the
    last seconds (measured here: a fresh main.cf costs posttls-finger 1.9 s,
    one with an old mtime 0.07 s); set the mtime an hour back."""
    old = time.time() - 3600
    os.utime(path, (old, old))


def postfix_empty_config(config_dir):
    main_cf = Path(config_dir) / "main.cf"
    if not main_cf.exists():
        main_cf.touch()
        postfix_backdate(main_cf)


def python_starttls(client, sni=None, ca=None, context=None, session=None):
    """STARTTLS on an SmtpClient that has said EHLO: sends STARTTLS,
    expects 220, wraps its socket. Returns the 220 reply."""
    r = client.cmd("STARTTLS")
    assert r.code == 220, r
    assert client.buf == b"", f"bytes after the 220 before the handshake: {client.buf!r}"
    if context is None:
        context = client_context(ca)
    client.sock = context.wrap_socket(client.sock, server_hostname=sni, session=session)
    return r


def client_context(ca=None, **options):
    """A client context that verifies the chain against ca (not the name:
    callers compare the DER they were served) or verifies nothing."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    if ca:
        ctx.load_verify_locations(cafile=str(ca))
    else:
        ctx.verify_mode = ssl.CERT_NONE
    for key, value in options.items():
        setattr(ctx, key, value)
    return ctx


def python(port, sni=None, host="127.0.0.1", ca=None, verify_name=None):
    """Python's ssl; the chain is verified against ca (the name is checked by
    comparing the DER the caller expects)."""
    out = []
    try:
        with SmtpClient(host, port, timeout=CLIENT_TIMEOUT) as c:
            out.append(str(c.read_reply()))
            out.append(str(c.cmd("EHLO python.client.example")))
            python_starttls(c, sni=sni, ca=ca)
            der = c.sock.getpeercert(binary_form=True)
            out.append(f"{c.sock.version()} {c.sock.cipher()}")
            out.append(str(c.cmd("QUIT")))
    except (ssl.SSLError, OSError) as e:
        out.append(f"{type(e).__name__}: {e}")
        return Served("python ssl", False, None, "", False if ca else None, 0, "\n".join(out))
    return Served("python ssl", True, der, subject_of(der), True if ca else None, -1,
                  "\n".join(out))


def subject_of(der):
    """`openssl x509 -subject -ext subjectAltName` of a DER certificate."""
    if not der:
        return ""
    p = subprocess.run(["openssl", "x509", "-inform", "DER", "-noout", "-subject", "-ext",
                        "subjectAltName"], input=der, capture_output=True, timeout=10)
    return p.stdout.decode(errors="replace").strip().replace("\n", " ")


def tls_session(port, sni, helo="client.example"):
    """A client connected to 127.0.0.1:port, through EHLO, STARTTLS (with SNI
    sni; None: no SNI) and EHLO again; nothing is verified. Returns the
    client."""
    c = SmtpClient("127.0.0.1", port)
    try:
        r = c.read_reply()
        assert r.code == 220, r
        r = c.cmd(f"EHLO {helo}")
        assert r.code == 250 and "STARTTLS" in r.keywords, f"no STARTTLS offered: {r}"
        python_starttls(c, sni=sni)
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
    """A new connection with SNI sni is served want (a certs.Cert); known
    names the others in the message."""
    got = served_cert(port, sni)
    assert got == want.der, (f"SNI {sni!r}: expected {want.describe()}, "
                             f"got {describe_der(got, known)}")


CLIENTS = {"gnutls": gnutls, "openssl": openssl, "swaks": swaks, "posttls": posttls,
           "python": python}
