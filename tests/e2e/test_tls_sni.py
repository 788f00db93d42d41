"""STARTTLS certificate choice by SNI, seen by real clients: exact name,
one-label wildcard, case and trailing dot, unknown and absent SNI (the
default), a listener's own default, CN-only certificates, RSA or ECDSA by
the client's signature algorithms, and sni_strict.

One daemon serves the whole matrix (module scope); every case is checked with
several clients, each of which must be served exactly the expected leaf
(compared as DER), must verify its chain against the test root CA (so the
intermediate from fullchain.pem was sent) where the client can, and must
produce the expected `event=tls` log line."""
import re
import subprocess

import pytest

import procs
import smtpclient
import tlsclients
import waits
from fakelmtp import FakeLmtp
from procs import Mxfront, mxfront_config

SECOND_LISTENER = "127.0.0.2"


@pytest.fixture(scope="module")
def sni_server(tmp_path_factory, pki):
    """mxfront with every good certificate, and a second listener on
    127.0.0.2 whose own default is mx.c.example."""
    d = tmp_path_factory.mktemp("sni")
    certs_dir = pki.install(d / "certs.d")
    backend = FakeLmtp(lifetime=600)
    m = Mxfront(d / "mxfront", mxfront_config(backend.address, {
        "server": {"listen": f"127.0.0.1:0, {SECOND_LISTENER}:0 default_cert=mx.c.example"},
        "tls": {"certs_dir": str(certs_dir)},
    }))
    m.ports = {}
    for a in m.addresses:
        host, port = a.rsplit(":", 1)
        m.ports[host] = int(port)
    yield m
    code = m.stop()
    backend.stop()
    assert not m.killed and code == 0, f"mxfront exited with {code} (killed={m.killed})"
    assert not procs.sanitizer_report(m.log()), m.log()


@pytest.fixture(autouse=True)
def _attach_server_log(request):
    """The module's daemon log goes with any failing test of this module."""
    if "sni_server" in request.fixturenames:
        m = request.getfixturevalue("sni_server")
        if not hasattr(request.node, "e2e_logs"):
            request.node.e2e_logs = []
        request.node.e2e_logs.append(("mxfront log (module daemon)", m.log))


TLS_RX = re.compile(r"\bevent=tls sni=(\S+) cert=(\S+) match=(\S+) version=(\S+) "
                    r"cipher=(\S+) resumed=(\S+)")


def tls_lines(m):
    return [mt for mt in map(TLS_RX.search, m.log().splitlines()) if mt]


def next_tls_line(m, before):
    """The first `event=tls` line after the first `before` of them."""
    lines = waits.wait_until(lambda: (lambda ls: ls if len(ls) > before else None)(tls_lines(m)),
                             5.0, "a new event=tls line in mxfront's log")
    return lines[before]


def assert_served(pki, served, leaf):
    """served (tlsclients.Served) is exactly leaf, the client printed its
    subject, and it verified the chain against the root where it can."""
    assert served.handshake, f"handshake failed\n{served}"
    assert served.der == leaf.der, \
        f"expected certificate {leaf.describe()}, got {pki.name_of(served.der)}\n{served}"
    assert re.search(rf"OU ?= ?{re.escape(leaf.label)}\b", served.subject) and \
        leaf.cn in served.subject, f"subject printed by the client: {served.subject!r}\n{served}"
    if served.verified is not None:
        assert served.verified, f"client did not verify the chain to the root\n{served}"
    if served.chain_len >= 0:
        assert served.chain_len == 2, \
            f"expected leaf + intermediate, got {served.chain_len}\n{served}"


# (id, SNI sent or None, listener address, expected label, expected match,
#  name to verify the certificate for, clients that can send this SNI)
ALL = ("gnutls", "openssl", "swaks", "posttls", "python")
NO_GNUTLS = ("openssl", "swaks", "posttls", "python")  # gnutls-cli strips a trailing dot
CASES = [
    ("exact", "mx.a.example", "127.0.0.1", "a", "exact", "mx.a.example", ALL),
    ("wildcard", "x.b.example", "127.0.0.1", "wild-b", "wildcard", "x.b.example", ALL),
    ("wildcard-two-labels-deep", "a.x.b.example", "127.0.0.1", "default", "default",
     "mx.test.example", ("gnutls", "openssl")),
    ("wildcard-not-its-parent", "b.example", "127.0.0.1", "default", "default",
     "mx.test.example", ("gnutls", "openssl")),
    ("upper-case", "MX.A.EXAMPLE", "127.0.0.1", "a", "exact", "mx.a.example", ALL),
    ("mixed-case-wildcard", "Mail.B.Example", "127.0.0.1", "wild-b", "wildcard",
     "mail.b.example", ("gnutls", "openssl", "swaks")),
    ("trailing-dot", "mx.a.example.", "127.0.0.1", "a", "exact", "mx.a.example", NO_GNUTLS),
    ("unknown", "nowhere.example", "127.0.0.1", "default", "default", "mx.test.example", ALL),
    ("none", None, "127.0.0.1", "default", "default", "mx.test.example", ALL),
    ("cn-only-certificate", "legacy.example", "127.0.0.1", "legacy", "exact",
     "legacy.example", ("gnutls", "openssl", "python")),
    # not a DNS name: logged as sni=invalid, served the default
    ("invalid-empty-label", "bad..example", "127.0.0.1", "default", "default",
     "mx.test.example", ("openssl", "swaks")),
    ("invalid-64-char-label", "a" * 64 + ".b.example", "127.0.0.1", "default", "default",
     "mx.test.example", ("openssl", "swaks")),
    ("63-char-label-wildcard", "a" * 63 + ".b.example", "127.0.0.1", "wild-b", "wildcard",
     "a" * 63 + ".b.example", ("openssl", "gnutls")),
    ("listener-default-no-sni", None, SECOND_LISTENER, "c", "listener-default",
     "mx.c.example", ALL),
    ("listener-default-unknown-sni", "nowhere.example", SECOND_LISTENER, "c",
     "listener-default", "mx.c.example", ("gnutls", "openssl", "python")),
    ("listener-exact-beats-its-default", "mx.a.example", SECOND_LISTENER, "a", "exact",
     "mx.a.example", ("gnutls", "openssl", "swaks")),
]
PARAMS = [pytest.param(sni, host, label, match, vname, client, id=f"{cid}-{client}")
          for cid, sni, host, label, match, vname, clients in CASES for client in clients]


@pytest.mark.parametrize("sni,host,label,match,verify_name,client", PARAMS)
def test_served_certificate(sni_server, pki, tmp_path, sni, host, label, match, verify_name,
                            client):
    before = len(tls_lines(sni_server))
    kwargs = {"config_dir": tmp_path} if client == "posttls" else {}
    served = tlsclients.CLIENTS[client](sni_server.ports[host], sni=sni, host=host,
                                        ca=pki.ca_file, verify_name=verify_name, **kwargs)
    assert_served(pki, served, pki.leaves[label])
    line = next_tls_line(sni_server, before)
    want_sni = "none" if sni is None else "invalid" if match == "default" and (
        ".." in sni or len(sni.split(".")[0]) > 63) else sni.lower().rstrip(".")
    assert (line.group(1), line.group(2), line.group(3)) == (want_sni, label, match), \
        f"log: {line.group(0)}"
    assert line.group(4) in ("TLS1.3", "TLS1.2"), line.group(0)


def test_default_still_served_after_the_matrix(sni_server, pki):
    """After every case above, a plain client still gets the default: no state
    leaks from one session's SNI into the next."""
    served = tlsclients.openssl(sni_server.ports["127.0.0.1"], sni=None, ca=pki.ca_file,
                                verify_name="mx.test.example")
    assert_served(pki, served, pki.leaves["default"])


# ---------------------------------------------------------------------------
# one name, two certificates: RSA and ECDSA

KEYTYPE_CASES = [
    ("openssl-tls13-ecdsa-sigalgs", "dual-ecdsa",
     lambda port: tlsclients.openssl(port, "dual.example", extra=["-sigalgs", "ECDSA+SHA256"])),
    ("openssl-tls13-rsa-pss-sigalgs", "dual-rsa",
     lambda port: tlsclients.openssl(port, "dual.example",
                                     extra=["-sigalgs", "rsa_pss_rsae_sha256"])),
    ("openssl-tls12-ecdhe-rsa", "dual-rsa",
     lambda port: tlsclients.openssl(port, "dual.example",
                                     extra=["-tls1_2", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256"])),
    ("openssl-tls12-ecdhe-ecdsa", "dual-ecdsa",
     lambda port: tlsclients.openssl(port, "dual.example", extra=[
         "-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"])),
    ("gnutls-tls13-ecdsa-only", "dual-ecdsa",
     lambda port: tlsclients.gnutls(port, "dual.example",
                                    priority="NORMAL:-SIGN-ALL:+SIGN-ECDSA-SECP256R1-SHA256")),
    ("gnutls-tls13-rsa-only", "dual-rsa",
     lambda port: tlsclients.gnutls(port, "dual.example",
                                    priority="NORMAL:-SIGN-ALL:+SIGN-RSA-PSS-RSAE-SHA256")),
    ("gnutls-tls12-rsa-kx", "dual-rsa",
     lambda port: tlsclients.gnutls(port, "dual.example",
                                    priority="NORMAL:-VERS-ALL:+VERS-TLS1.2:-KX-ALL:+ECDHE-RSA")),
    ("python-tls12-ecdhe-rsa", "dual-rsa",
     lambda port: _python_tls12(port, "ECDHE-RSA-AES128-GCM-SHA256")),
    ("python-tls12-ecdhe-ecdsa", "dual-ecdsa",
     lambda port: _python_tls12(port, "ECDHE-ECDSA-AES128-GCM-SHA256")),
]


def _python_tls12(port, cipher):
    import ssl
    ctx = tlsclients.client_context(maximum_version=ssl.TLSVersion.TLSv1_2)
    ctx.set_ciphers(cipher)
    with smtpclient.SmtpClient("127.0.0.1", port) as c:
        c.read_reply()
        c.cmd("EHLO python.client.example")
        tlsclients.python_starttls(c, sni="dual.example", context=ctx)
        der = c.sock.getpeercert(binary_form=True)
        out = f"{c.sock.version()} {c.sock.cipher()}"
    return tlsclients.Served("python ssl", True, der, tlsclients.subject_of(der), None, 1, out)


@pytest.mark.parametrize("label,run", [pytest.param(label, run, id=cid)
                                       for cid, label, run in KEYTYPE_CASES])
def test_key_type_follows_client_signature_algorithms(sni_server, pki, label, run):
    before = len(tls_lines(sni_server))
    served = run(sni_server.ports["127.0.0.1"])
    leaf = pki.leaves[label]
    assert served.handshake, f"handshake failed\n{served}"
    assert served.der == leaf.der, \
        f"expected {leaf.describe()}, got {pki.name_of(served.der)}\n{served}"
    line = next_tls_line(sni_server, before)
    assert (line.group(1), line.group(3)) == ("dual.example", "exact"), line.group(0)
    assert label in line.group(2).split(","), line.group(0)


def test_log_names_the_certificate_actually_served(sni_server, pki):
    """With an RSA and an ECDSA certificate for one name, `event=tls cert=`
    must say which of the two this client got (the point of the field: an
    operator asking "which certificate did that sender see?"), not list the
    candidates."""
    port = sni_server.ports["127.0.0.1"]
    for label, sigalgs in (("dual-rsa", "rsa_pss_rsae_sha256"), ("dual-ecdsa", "ECDSA+SHA256")):
        before = len(tls_lines(sni_server))
        served = tlsclients.openssl(port, "dual.example", extra=["-sigalgs", sigalgs])
        assert served.der == pki.leaves[label].der, served
        line = next_tls_line(sni_server, before)
        assert line.group(2) == label, \
            f"client was served {label}, but the log says: {line.group(0)}"


# ---------------------------------------------------------------------------
# sni_strict

@pytest.fixture
def strict_server(mxfront, fake_backend, pki, tmp_path):
    certs_dir = pki.install(tmp_path / "certs.d", ["default", "a", "wild-b"])
    return mxfront(fake_backend(), tls={"certs_dir": str(certs_dir), "sni_strict": "yes"})


def test_sni_strict_refuses_unknown_name_with_unrecognized_name_alert(strict_server, pki):
    port = strict_server.port
    o = tlsclients.openssl(port, sni="nowhere.example")
    assert not o.handshake and o.der is None, f"handshake should have been refused\n{o}"
    assert re.search(r"unrecognized name|alert number 112", o.output), \
        f"openssl should report the unrecognized_name alert\n{o}"
    g = tlsclients.gnutls(port, sni="nowhere.example")
    assert not g.handshake and g.der is None, f"handshake should have been refused\n{g}"
    assert re.search(r"server name sent was not recognized|unrecognized.name", g.output, re.I), \
        f"gnutls-cli should report the unrecognized_name alert\n{g}"
    strict_server.wait_log(r"event=tls_error .*sni=nowhere\.example", count=2)
    assert not re.search(r"event=tls sni=nowhere", strict_server.log())


def test_sni_strict_still_serves_known_names_and_clients_without_sni(strict_server, pki):
    port = strict_server.port
    for client in (tlsclients.openssl, tlsclients.gnutls):
        assert_served(pki, client(port, sni="mx.a.example", ca=pki.ca_file), pki.leaves["a"])
        assert_served(pki, client(port, sni="Y.B.Example", ca=pki.ca_file,
                                  verify_name="y.b.example"), pki.leaves["wild-b"])
        assert_served(pki, client(port, sni=None, ca=pki.ca_file,
                                  verify_name="mx.test.example"), pki.leaves["default"])
    strict_server.wait_log(r"event=tls sni=none cert=default match=default", count=2)


def test_sni_strict_refusal_leaves_the_daemon_serving(strict_server, pki):
    """The refused session ends alone: the next client gets its certificate."""
    for _ in range(3):
        assert not tlsclients.openssl(strict_server.port, sni="nowhere.example").handshake
    served = tlsclients.python(strict_server.port, sni="mx.a.example", ca=pki.ca_file)
    assert_served(pki, served, pki.leaves["a"])


# ---------------------------------------------------------------------------
# which default

def test_tls_default_cert_names_the_default(mxfront, fake_backend, pki, tmp_path):
    """[tls] default_cert wins over the certificate that serves the hostname."""
    certs_dir = pki.install(tmp_path / "certs.d", ["default", "a", "c"])
    m = mxfront(fake_backend(), tls={"certs_dir": str(certs_dir), "default_cert": "mx.c.example"})
    for client in (tlsclients.openssl, tlsclients.python):
        assert_served(pki, client(m.port, sni=None, ca=pki.ca_file, verify_name="mx.c.example"),
                      pki.leaves["c"])
        assert_served(pki, client(m.port, sni="unknown.example", ca=pki.ca_file,
                                  verify_name="mx.c.example"), pki.leaves["c"])
    m.wait_log(r"event=tls sni=none cert=c match=default", count=2)
    m.wait_log(r"event=tls sni=unknown\.example cert=c match=default", count=2)


def test_tls_default_cert_may_be_a_name_a_wildcard_serves(mxfront, fake_backend, pki, tmp_path):
    certs_dir = pki.install(tmp_path / "certs.d", ["a", "wild-b"])
    m = mxfront(fake_backend(), tls={"certs_dir": str(certs_dir), "default_cert": "mx.b.example"})
    served = tlsclients.gnutls(m.port, sni=None, ca=pki.ca_file, verify_name="mx.b.example")
    assert_served(pki, served, pki.leaves["wild-b"])


def test_no_determinable_default_refuses_to_start(tmp_path, pki):
    """Certificates exist, none serves the hostname and no default_cert is
    set: `-t` names default_cert and the daemon does not start."""
    certs_dir = pki.install(tmp_path / "certs.d", ["a", "c"])
    conf = tmp_path / "mxfront.conf"
    procs.write_config(conf, mxfront_config("127.0.0.1:9", {"tls": {"certs_dir": str(certs_dir)}}))
    p = procs.run_mxfront("-t", "-c", str(conf))
    assert p.returncode != 0, f"-t accepted a set-up without a default certificate:\n{p.stderr}"
    assert "default_cert" in p.stderr, p.stderr
    proc = subprocess.Popen([procs.MXFRONT_BIN, "-c", str(conf), "--address-file",
                             str(tmp_path / "addr")], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        procs.stop_process(proc)
        raise AssertionError("the daemon started without a default certificate "
                             f"(addresses: {(tmp_path / 'addr').read_text()!r})") from None
    assert proc.returncode != 0 and not (tmp_path / "addr").exists(), out
    assert "default_cert" in out, out
    assert not procs.sanitizer_report(out), out


def test_default_cert_naming_no_certificate_is_refused(tmp_path, pki):
    certs_dir = pki.install(tmp_path / "certs.d", ["default", "a"])
    conf = tmp_path / "mxfront.conf"
    procs.write_config(conf, mxfront_config("127.0.0.1:9", {
        "tls": {"certs_dir": str(certs_dir), "default_cert": "mx.nowhere.example"}}))
    p = procs.run_mxfront("-t", "-c", str(conf))
    assert p.returncode != 0, p.stderr
    assert "default_cert" in p.stderr and "mx.nowhere.example" in p.stderr, p.stderr
