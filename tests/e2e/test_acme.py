"""ACME end to end with the real parts: pebble (the ACME test server, every
challenge valid) issues certificates to certbot, certbot runs
contrib/deploy-hook, the hook installs them into certs.d/ and reloads the
running mxfront, and the handshake serves exactly the issued certificate
(by serial). Then `certbot renew --force-renewal` does it all again, with an
RSA and an ECDSA certificate for one name, and the hook as certbot's global
hook installs only what its allow-list names."""
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

import procs
import tlsclients
from certs import install_cert, make_cert
from procs import NOGROUP, REPO, reload_lines
from waits import free_port, wait_until

HOOK = REPO / "contrib" / "deploy-hook"

pytestmark = [
    pytest.mark.skipif(not shutil.which("pebble") or not shutil.which("certbot"),
                       reason="needs Debian's pebble and certbot"),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (the hook gives keys to a group)"),
]


class Pebble:
    """A private pebble on 127.0.0.1, its HTTPS certificate made here."""

    def __init__(self, d):
        self.dir = Path(d)
        self.dir.mkdir(parents=True)
        self.tls_cert = self.dir / "https.pem"
        key = self.dir / "https.key"
        https = make_cert(self.dir, ["localhost", "IP:127.0.0.1"], 1, days=2)
        self.tls_cert.write_bytes(https.fullchain)
        key.write_bytes(https.privkey)
        self.port, self.mgmt = free_port(), free_port()
        conf = self.dir / "pebble.json"
        conf.write_text(json.dumps({"pebble": {
            "listenAddress": f"127.0.0.1:{self.port}",
            "managementListenAddress": f"127.0.0.1:{self.mgmt}",
            "certificate": str(self.tls_cert), "privateKey": str(key),
            "httpPort": free_port(), "tlsPort": free_port(), "ocspResponderURL": "",
            "externalAccountBindingRequired": False}}))
        env = {**os.environ, "PEBBLE_VA_ALWAYS_VALID": "1", "PEBBLE_VA_NOSLEEP": "1",
               "PEBBLE_WFE_NONCEREJECT": "0"}
        self.log_path = self.dir / "pebble.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(["pebble", "-config", str(conf)], env=env,
                                     stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT)
        wait_until(lambda: b"Listening on" in self.log_path.read_bytes()
                   or self.proc.poll() is not None, 10, "pebble listening")
        assert self.proc.poll() is None, self.log_path.read_text()
        self.url = f"https://127.0.0.1:{self.port}/dir"

    def root(self):
        """PEM of the root pebble's chains end in (its management API)."""
        import ssl
        import urllib.request
        ctx = ssl.create_default_context(cafile=str(self.tls_cert))
        with urllib.request.urlopen(f"https://127.0.0.1:{self.mgmt}/roots/0", context=ctx,
                                    timeout=10) as r:
            return r.read()

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self._log.close()


@pytest.fixture
def pebble(tmp_path):
    p = Pebble(tmp_path / "pebble")
    yield p
    p.stop()


class Acme:
    """certbot against pebble, with its own directories, feeding the hook
    that serves a running mxfront."""

    def __init__(self, tmp_path, pebble, mx, certs):
        self.tmp, self.pebble, self.mx, self.certs = tmp_path, pebble, mx, certs
        self.conf_dir = tmp_path / "letsencrypt"
        self.pidfile = tmp_path / "mxfront.pid"
        self.pidfile.write_text(f"{mx.pid}\n")
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("RENEWED_", "MXFRONT_"))}
        self.env.update({"REQUESTS_CA_BUNDLE": str(pebble.tls_cert),
                         "MXFRONT_CERTS_DIR": str(certs), "MXFRONT_CONFIG": str(mx.conf),
                         "MXFRONT_BIN": procs.MXFRONT_BIN, "MXFRONT_GROUP": NOGROUP,
                         "MXFRONT_PIDFILE": str(self.pidfile),
                         "MXFRONT_ALLOW": str(tmp_path / "deploy-hook.allow")})

    def certbot(self, *args, reloads=0):
        """Runs certbot; waits for RELOADS more reloads of mxfront, all ok."""
        before = len(reload_lines(self.mx))
        p = subprocess.run(
            ["certbot", *args, "--server", self.pebble.url, "--non-interactive",
             "--config-dir", str(self.conf_dir), "--work-dir", str(self.tmp / "le-work"),
             "--logs-dir", str(self.tmp / "le-logs"), "--no-random-sleep-on-renew"],
            env=self.env, capture_output=True, text=True, timeout=120, cwd=self.tmp)
        assert p.returncode == 0, f"certbot {args}:\n{p.stdout}\n{p.stderr}"
        if reloads:
            lines = wait_until(lambda: (lambda ls: ls if len(ls) >= before + reloads else None)(
                reload_lines(self.mx)), 15, f"{reloads} reload(s) of mxfront")
            for ln in lines[before:]:
                assert "result=ok" in ln, ln
        return p

    def issue(self, cert_name, names, key_type, hook=True):
        args = ["certonly", "--manual", "--manual-auth-hook", "/bin/true",
                "--preferred-challenges", "http", "--agree-tos", "-m", "postmaster@test.example",
                "--cert-name", cert_name, "--key-type", key_type]
        for n in names:
            args += ["-d", n]
        if hook:
            args += ["--deploy-hook", str(HOOK)]
        return self.certbot(*args, reloads=1 if hook else 0)

    def live(self, cert_name):
        """The DER and serial of certbot's current certificate of a lineage."""
        pem = (self.conf_dir / "live" / cert_name / "cert.pem").read_bytes()
        return der_and_serial(pem, "PEM")


def der_and_serial(data, form):
    der = subprocess.run(["openssl", "x509", "-inform", form, "-outform", "DER"], input=data,
                         capture_output=True, check=True).stdout
    out = subprocess.run(["openssl", "x509", "-inform", "DER", "-noout", "-serial"], input=der,
                         capture_output=True, check=True, text=False).stdout.decode()
    return der, out.strip().split("=", 1)[1].lower()


RSA_ONLY = ["-sigalgs", "rsa_pss_rsae_sha256:rsa_pss_rsae_sha384:RSA+SHA256"]
ECDSA_ONLY = ["-sigalgs", "ECDSA+SHA256:ECDSA+SHA384"]


def served(mx, sni, extra=()):
    """(DER, serial) of what mxfront serves for SNI to an openssl client."""
    got = tlsclients.openssl(mx.port, sni=sni, extra=list(extra))
    assert got.der, f"no certificate for {sni}: {got}"
    return der_and_serial(got.der, "DER")


@pytest.fixture
def acme(tmp_path, pebble, mxfront, fake_backend):
    certs = tmp_path / "certs.d"
    install_cert(certs, "default", make_cert(tmp_path / "scratch", [procs.HOSTNAME], 0x601))
    mx = mxfront(fake_backend(), server={"group": NOGROUP}, tls={"certs_dir": str(certs)})
    return Acme(tmp_path, pebble, mx, certs)


def test_certbot_issues_and_renews_through_the_deploy_hook(acme):
    t0 = time.monotonic()
    # two hosted names, issued by pebble, installed by the hook, served by serial
    acme.issue("mx.a.example", ["mx.a.example"], "ecdsa")
    acme.issue("mx.b.example", ["mx.b.example", "mx2.b.example"], "ecdsa")
    a, b = acme.live("mx.a.example"), acme.live("mx.b.example")
    assert served(acme.mx, "mx.a.example")[1] == a[1]
    assert served(acme.mx, "mx.a.example") == a
    assert served(acme.mx, "mx2.b.example") == b
    assert served(acme.mx, None)[0] not in (a[0], b[0])  # the default stays the default
    # an RSA certificate for the same name, beside the ECDSA one
    acme.issue("mx.a.example-rsa", ["mx.a.example"], "rsa")
    a_rsa = acme.live("mx.a.example-rsa")
    assert served(acme.mx, "mx.a.example", ECDSA_ONLY) == a
    assert served(acme.mx, "mx.a.example", RSA_ONLY) == a_rsa

    # renewal: every lineage again, each through its own hook, nothing lost
    acme.certbot("renew", "--force-renewal", reloads=3)
    a2, b2, a_rsa2 = (acme.live(n) for n in ("mx.a.example", "mx.b.example",
                                              "mx.a.example-rsa"))
    assert len({a[1], a2[1], b[1], b2[1], a_rsa[1], a_rsa2[1]}) == 6, "serials must all differ"
    assert served(acme.mx, "mx.a.example", ECDSA_ONLY) == a2
    assert served(acme.mx, "mx.a.example", RSA_ONLY) == a_rsa2
    assert served(acme.mx, "mx.b.example") == b2
    p = procs.run_mxfront("-t", "-c", str(acme.mx.conf))
    assert p.returncode == 0, p.stderr
    live = sorted(e.name for e in acme.certs.iterdir() if not e.name.startswith("."))
    assert live == ["default", "mx.a.example", "mx.a.example-rsa", "mx.b.example"], live
    hidden = [e.name for e in acme.certs.iterdir() if e.name.startswith(".")]
    assert len(hidden) == 3, f"old copies left behind: {hidden}"

    # mxfront check: the pebble-issued chains verify against pebble's root
    root = acme.tmp / "pebble-root.pem"
    root.write_bytes(acme.pebble.root())
    p = procs.run_mxfront("check", "-c", str(acme.mx.conf), "--ca", str(root), "--days", "7",
                          "a.example:mx.a.example", "b.example:mx.b.example,mx2.b.example")
    assert p.returncode == 0 and "FAIL" not in p.stdout, (p.returncode, p.stdout, p.stderr)
    assert p.stdout.count("chain verifies") == 4, p.stdout  # a: ECDSA and RSA; b: two names
    assert time.monotonic() - t0 < 60


def test_global_certbot_hook_installs_only_what_the_allow_list_names(acme):
    """The hook linked into certbot's renewal-hooks/deploy/ runs for every
    certificate of the host: with an allow-list it installs the names listed
    there and leaves a web server's certificate alone."""
    acme.issue("mx.a.example", ["mx.a.example"], "ecdsa", hook=False)
    acme.issue("www.example", ["www.example"], "ecdsa", hook=False)
    (acme.tmp / "deploy-hook.allow").write_text("# mxfront's names\nmx.a.example\n")
    hooks = acme.conf_dir / "renewal-hooks" / "deploy"
    hooks.mkdir(parents=True, exist_ok=True)
    (hooks / "mxfront").symlink_to(HOOK)
    p = acme.certbot("renew", "--force-renewal", reloads=1)
    assert re.search(r"skipping www\.example", p.stdout + p.stderr), p.stdout + p.stderr
    live = sorted(e.name for e in acme.certs.iterdir() if not e.name.startswith("."))
    assert live == ["default", "mx.a.example"], live
    assert served(acme.mx, "mx.a.example") == acme.live("mx.a.example")
    assert served(acme.mx, "www.example")[0] != acme.live("www.example")[0]
