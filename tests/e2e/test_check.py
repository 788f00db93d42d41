"""`mxfront check`: what a hosted domain's senders get. The policy's mx
patterns against the MX names (RFC 8461 4.1), each MX name's certificate as
a real handshake serves it, verified against a CA bundle with its expiry,
and what a sender without SNI gets on each listener."""
import re

import pytest

from certs import make_cert
from procs import mxfront_config, run_mxfront, write_config

POLICY = "version: STSv1\r\nmode: enforce\r\n{mx}max_age: 86400\r\n"


@pytest.fixture
def setup(pki, tmp_path):
    certs_dir = pki.install(tmp_path / "certs.d")
    conf = tmp_path / "mxfront.conf"
    write_config(conf, mxfront_config("127.0.0.1:9", {
        "server": {"listen": "127.0.0.1:0, 127.0.0.2:0 default_cert=mx.c.example"},
        "tls": {"certs_dir": str(certs_dir)}}))
    return conf


def policy(tmp_path, *patterns):
    p = tmp_path / f"policy{len(list(tmp_path.glob('policy*')))}.txt"
    p.write_text(POLICY.format(mx="".join(f"mx: {x}\r\n" for x in patterns)))
    return p


def check(conf, ca, *specs, days=None):
    args = ["check", "-c", str(conf)] + (["--ca", str(ca)] if ca else [])
    args += ["--days", str(days)] if days is not None else []
    return run_mxfront(*args, *specs)


def lines(p, verdict):
    return [ln.strip() for ln in p.stdout.splitlines() if ln.strip().startswith(verdict)]


def test_a_domain_whose_policy_names_and_certificates_agree_passes(setup, pki, tmp_path):
    pol = policy(tmp_path, "mx.a.example", "*.b.example")
    p = check(setup, pki.ca_file, f"a.example:mx.a.example,X.B.example.:{pol}",
              "dual.example:dual.example")
    assert p.returncode == 0, (p.returncode, p.stdout, p.stderr)
    assert not lines(p, "FAIL"), p.stdout
    ok = "\n".join(lines(p, "ok"))
    assert "mx mx.a.example matches policy pattern mx.a.example" in ok, p.stdout
    assert "mx x.b.example matches policy pattern *.b.example" in ok, p.stdout
    assert re.search(r"mx mx\.a\.example: certificate a \(ECDSA-256, exact\), chain verifies", ok)
    assert re.search(r"mx x\.b\.example: certificate wild-b \(RSA-2048, wildcard\)", ok), ok
    # a name with two key types: both certificates are checked
    assert re.search(r"mx dual\.example: certificate dual-ecdsa", ok), ok
    assert re.search(r"mx \(RSA client\) dual\.example: certificate dual-rsa", ok), ok
    # senders without SNI, per listener
    assert re.search(r"^listener 127\.0\.0\.1:0 without SNI: certificate default \(default\), "
                     r"valid for: none", p.stdout, re.M), p.stdout


@pytest.mark.parametrize("patterns,mx,bad", [
    (["mx.other.example"], "mx.a.example", ["mx mx.a.example matches no mx pattern",
                                            "pattern mx.other.example matches none"]),
    # RFC 8461 4.1: a wildcard is exactly one left-most label
    (["*.b.example"], "a.x.b.example", ["mx a.x.b.example matches no mx pattern"]),
    (["*.b.example"], "b.example", ["mx b.example matches no mx pattern"]),
], ids=["other-name", "two-labels-under-wildcard", "wildcard-parent"])
def test_mx_names_and_policy_patterns_must_match(setup, pki, tmp_path, patterns, mx, bad):
    p = check(setup, pki.ca_file, f"a.example:{mx}:{policy(tmp_path, *patterns)}")
    assert p.returncode == 3, (p.returncode, p.stdout, p.stderr)
    fails = "\n".join(lines(p, "FAIL"))
    for b in bad:
        assert b in fails, p.stdout


def test_policy_version_and_mode_are_checked(setup, pki, tmp_path):
    pol = tmp_path / "bad.txt"
    pol.write_text("version: STSv2\nmode: enforcing\nmx: mx.a.example\n")
    p = check(setup, pki.ca_file, f"a.example:mx.a.example:{pol}")
    assert p.returncode == 3, p.stdout
    fails = "\n".join(lines(p, "FAIL"))
    assert "version must be STSv1" in fails and "mode must be" in fails, p.stdout


def test_an_mx_name_no_certificate_serves_fails(setup, pki):
    p = check(setup, pki.ca_file, "d.example:mx.d.example")
    assert p.returncode == 3, p.stdout
    fails = lines(p, "FAIL")
    assert len(fails) == 1 and "mx mx.d.example: certificate default (ECDSA-256, default)" \
        in fails[0] and "does NOT verify" in fails[0], p.stdout
    assert "name in the certificate does not match" in p.stdout, p.stdout


def test_a_chain_from_another_ca_fails(setup, pki, tmp_path):
    other = make_cert(tmp_path / "scratch", ["ca.other.example"], 0x701)
    (tmp_path / "other-ca.pem").write_bytes(other.fullchain)
    p = check(setup, tmp_path / "other-ca.pem", "a.example:mx.a.example")
    assert p.returncode == 3, p.stdout
    assert "does NOT verify" in lines(p, "FAIL")[0] and "NOT trusted" in p.stdout, p.stdout


@pytest.mark.parametrize("days,rc", [(20, 0), (40, 3)])
def test_a_certificate_expiring_within_days_fails(setup, pki, days, rc):
    # the test certificates are valid for about 30 days
    p = check(setup, pki.ca_file, "a.example:mx.a.example", days=days)
    assert p.returncode == rc, p.stdout
    if rc:
        assert "within the --days limit" in lines(p, "FAIL")[0], p.stdout


def test_a_listener_default_is_what_senders_without_sni_get_there(setup, pki):
    p = check(setup, pki.ca_file, "c.example:mx.c.example")
    assert re.search(r"^listener 127\.0\.0\.2:0 without SNI: certificate c \(listener-default\), "
                     r"valid for: mx\.c\.example$", p.stdout, re.M), p.stdout


@pytest.mark.parametrize("args", [["check"], ["check", "a.example"], ["check", ":mx.a.example"],
                                  ["--days", "7", "certs"]],
                         ids=["no-domain", "no-mx", "no-domain-name", "days-without-check"])
def test_check_usage_errors(setup, args):
    p = run_mxfront(*args[:1], "-c", str(setup), *args[1:])
    assert p.returncode in (1, 2), (p.returncode, p.stderr)
    assert p.stderr, p.stderr
