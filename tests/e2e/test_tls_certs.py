"""certs.d/ loading as an operator sees it: broken entries (key mismatch,
garbled PEM, missing key, expired) are each reported with the file and a
reason and skipped, the good certificates are still served, `mxfront -t`
fails naming them, and `mxfront certs` lists what is served and the
defaults."""
import datetime
import re

import pytest

import tlsclients
from procs import mxfront_config, run_mxfront, write_config

GOOD = ["default", "a", "wild-b"]
BROKEN = ["bad-mismatch", "bad-garbled", "bad-nokey", "bad-expired"]

# label -> (file the report must name, words of which the reason must contain one)
EXPECTED_REPORT = {
    "bad-mismatch": (("privkey.pem", "fullchain.pem"), ("match",)),
    "bad-garbled": (("fullchain.pem",), ("pem", "base64", "decod", "pars")),
    "bad-nokey": (("privkey.pem",), ("no such file", "missing", "cannot read", "not found")),
    "bad-expired": (("fullchain.pem",), ("expired",)),
}
CERT_ERROR_RX = re.compile(r'event=cert_error file=(\S+) reason="([^"]*)"')


def check_reports(text, certs_dir):
    """Every broken entry has exactly one report naming its file, with a
    reason; no good entry is reported."""
    reports = CERT_ERROR_RX.findall(text)
    for label, (files, words) in EXPECTED_REPORT.items():
        mine = [(f, r) for f, r in reports if f.startswith(f"{certs_dir}/{label}/")]
        assert len(mine) == 1, f"expected one report for {label}, got {mine}:\n{text}"
        path, reason = mine[0]
        assert path in [f"{certs_dir}/{label}/{f}" for f in files], \
            f"{label}: report names {path}, expected one of {files}:\n{text}"
        assert any(w in reason.lower() for w in words), \
            f"{label}: reason {reason!r} should mention one of {words}"
    for label in GOOD:
        assert f"{certs_dir}/{label}/" not in text, f"good entry {label} reported:\n{text}"


@pytest.fixture
def broken_setup(pki, tmp_path):
    return pki.install(tmp_path / "certs.d", GOOD, broken=BROKEN)


def test_broken_entries_are_reported_and_skipped_good_ones_served(
        mxfront, fake_backend, pki, broken_setup):
    m = mxfront(fake_backend(), tls={"certs_dir": str(broken_setup)})
    m.wait_log(r"event=certs_loaded ")
    check_reports(m.log(), broken_setup)
    loaded = re.search(r"event=certs_loaded dir=\S+ certs=(\d+) names=(\d+) problems=(\d+)",
                       m.log())
    assert loaded.groups() == ("3", "3", "4"), loaded.group(0)
    # the good ones, by two clients each
    for client in (tlsclients.openssl, tlsclients.gnutls):
        served = client(m.port, sni="mx.a.example", ca=pki.ca_file)
        assert served.der == pki.leaves["a"].der and served.verified, served
        served = client(m.port, sni="x.b.example", ca=pki.ca_file)
        assert served.der == pki.leaves["wild-b"].der and served.verified, served
    # a broken entry's name gets the default, never the broken certificate
    for label in BROKEN:
        for client in (tlsclients.openssl, tlsclients.python):
            served = client(m.port, sni=f"{label}.example", ca=pki.ca_file,
                            verify_name="mx.test.example")
            assert served.der == pki.leaves["default"].der, \
                f"{label}.example: served {pki.name_of(served.der)}\n{served}"
        m.wait_log(rf"event=tls sni={label}\.example cert=default match=default", count=2)


def test_check_mode_fails_naming_every_broken_file(pki, tmp_path, broken_setup):
    conf = tmp_path / "mxfront.conf"
    write_config(conf, mxfront_config("127.0.0.1:9", {"tls": {"certs_dir": str(broken_setup)}}))
    p = run_mxfront("-t", "-c", str(conf))
    # 3: only certificates have problems; the daemon runs, skipping them
    assert p.returncode == 3, f"exit {p.returncode}\n{p.stdout}\n{p.stderr}"
    check_reports(p.stdout + p.stderr, broken_setup)


def test_check_mode_passes_with_good_certificates(pki, tmp_path):
    certs_dir = pki.install(tmp_path / "certs.d")
    conf = tmp_path / "mxfront.conf"
    write_config(conf, mxfront_config("127.0.0.1:9", {"tls": {"certs_dir": str(certs_dir)}}))
    p = run_mxfront("-t", "-c", str(conf))
    assert p.returncode == 0, f"exit {p.returncode}\n{p.stdout}\n{p.stderr}"
    assert "cert_error" not in p.stdout + p.stderr


ROW_RX = re.compile(r"^(\S+)\s+(\S+)\s+(\S+)\s+(\d{4}-\d\d-\d\d)\s+(-?\d+)\s+(\S+)\s*$")


def certs_rows(conf):
    """Runs `mxfront certs -c conf`; returns (process, header line, rows)."""
    p = run_mxfront("certs", "-c", str(conf))
    lines = [ln for ln in p.stdout.splitlines() if ln.strip()]
    assert lines, f"no output (exit {p.returncode}):\n{p.stderr}"
    rows = []
    for ln in lines[1:]:
        m = ROW_RX.match(ln)
        assert m, f"row not in the form 'name label keytype date days marks': {ln!r}\n{p.stdout}"
        rows.append(m.groups())
    return p, lines[0], rows


def expected_rows(pki, labels, marks):
    """{(name, label): (keytype, not-after)} for the given leaves."""
    want = {}
    for label in labels:
        leaf = pki.leaves[label]
        for name in leaf.names or (leaf.cn,):
            want[(name, label)] = (leaf.keytype, leaf.not_after.isoformat(),
                                   marks.get(name, "-"))
    return want


def check_rows(rows, want, stdout):
    got = {(r[0], r[1]): (r[2], r[3], r[5]) for r in rows}
    assert len(rows) == len(got), f"duplicate rows:\n{stdout}"
    for key, (keytype, date, mark) in want.items():
        assert key in got, f"no row for {key}:\n{stdout}"
        gk, gd, gm = got[key]
        assert (gk, gd) == (keytype, date), f"{key}: {got[key]} != {want[key]}\n{stdout}"
        if mark.startswith("listener-default("):
            assert gm.startswith(mark), f"{key}: mark {gm!r}, expected {mark}...):\n{stdout}"
        else:
            assert gm == mark, f"{key}: mark {gm!r}, expected {mark!r}:\n{stdout}"
    extra = set(got) - set(want)
    assert not extra, f"rows for certificates that are not served: {extra}\n{stdout}"
    today = datetime.datetime.now(datetime.timezone.utc).date()
    for r in rows:
        days = (datetime.date.fromisoformat(r[3]) - today).days
        assert int(r[4]) in (days - 1, days), f"days-left of {r} (not-after - today = {days})"


def test_certs_lists_every_served_name_with_defaults_marked(pki, tmp_path):
    certs_dir = pki.install(tmp_path / "certs.d")
    conf = tmp_path / "mxfront.conf"
    write_config(conf, mxfront_config("127.0.0.1:9", {
        "server": {"listen": "127.0.0.1:0, 127.0.0.2:0 default_cert=mx.c.example"},
        "tls": {"certs_dir": str(certs_dir)}}))
    p, header, rows = certs_rows(conf)
    assert p.returncode == 0, f"exit {p.returncode}\n{p.stdout}\n{p.stderr}"
    assert not ROW_RX.match(header), f"first line should be a header: {header!r}"
    want = expected_rows(pki, pki.leaves, {"mx.test.example": "default",
                                           "mx.c.example": "listener-default(127.0.0.2"})
    check_rows(rows, want, p.stdout)


def test_certs_skips_broken_entries_and_follows_tls_default_cert(pki, tmp_path, broken_setup):
    conf = tmp_path / "mxfront.conf"
    write_config(conf, mxfront_config("127.0.0.1:9", {
        "tls": {"certs_dir": str(broken_setup), "default_cert": "mx.a.example"}}))
    p, header, rows = certs_rows(conf)
    want = expected_rows(pki, GOOD, {"mx.a.example": "default"})
    check_rows(rows, want, p.stdout)
    # the broken ones are reported, not listed
    check_reports(p.stderr, broken_setup)


def test_certs_marks_a_default_served_by_a_wildcard(pki, tmp_path):
    """default_cert names a host that only a wildcard certificate serves: the
    wildcard's row carries the mark, saying which name it is the default for."""
    certs_dir = pki.install(tmp_path / "certs.d")
    conf = tmp_path / "mxfront.conf"
    write_config(conf, mxfront_config("127.0.0.1:9", {
        "server": {"listen": "127.0.0.1:0, 127.0.0.2:0 default_cert=MX.B.example."},
        "tls": {"certs_dir": str(certs_dir), "default_cert": "x.b.example"}}))
    p, _, rows = certs_rows(conf)
    assert p.returncode == 0, f"exit {p.returncode}\n{p.stdout}\n{p.stderr}"
    marks = {r[0]: r[5] for r in rows}
    assert marks["*.b.example"] == ("default:x.b.example,"
                                    "listener-default(127.0.0.2:0):mx.b.example"), p.stdout
    assert "default" not in marks.get("mx.test.example", "-"), p.stdout


# --------------------------------------------------------------------------
# warnings about certificates that are served: readable keys, public-suffix
# wildcards (event=cert_warning; -t and certs exit 3)

CERT_WARNING_RX = re.compile(r'event=cert_warning file=(\S+) reason="([^"]*)"')


def warning_setup(tmp_path, certs, group=None):
    """certs.d/ with a default certificate plus CERTS {label: (names, key
    mode, key gid)}; returns the configuration (user root as the tests run,
    [server] group GROUP when given)."""
    import os
    from certs import install_cert, make_cert
    d = tmp_path / "certs.d"
    install_cert(d, "default", make_cert(tmp_path / "scratch", ["mx.test.example"], 0x501))
    made = {}
    for i, (label, (names, mode, gid)) in enumerate(certs.items()):
        made[label] = make_cert(tmp_path / "scratch", names, 0x510 + i)
        install_cert(d, label, made[label])
        os.chmod(d / label / "privkey.pem", mode)
        if gid is not None:
            os.chown(d / label / "privkey.pem", -1, gid)
    conf = tmp_path / "mxfront.conf"
    write_config(conf, mxfront_config("127.0.0.1:9", {
        "server": {"group": group} if group else {}, "tls": {"certs_dir": str(d)}}))
    return conf, d, made


def warnings_of(text):
    return {f.rsplit("/", 2)[-2]: r for f, r in CERT_WARNING_RX.findall(text)}


@pytest.mark.skipif(__import__("os").geteuid() != 0, reason="needs root (chown)")
def test_private_key_readable_beyond_mxfronts_group_is_a_warning(tmp_path, mxfront,
                                                                  fake_backend):
    nogroup = __import__("grp").getgrnam("nogroup").gr_gid
    conf, d, made = warning_setup(tmp_path, {
        "world": (["mx.w.example"], 0o644, None),
        "other-group": (["mx.o.example"], 0o640, 0),
        "own-group": (["mx.g.example"], 0o640, nogroup),
        "private": (["mx.p.example"], 0o600, 0),
    }, group="nogroup")
    for args in (["-t"], ["certs"]):
        p = run_mxfront(*args, "-c", str(conf))
        assert p.returncode == 3, (args, p.returncode, p.stderr)
        w = warnings_of(p.stderr)
        assert set(w) == {"world", "other-group"}, p.stderr
        assert "everyone" in w["world"] and "0644" in w["world"], w
        assert "group root" in w["other-group"] and f"gid {nogroup}" in w["other-group"], w
        assert "cert_error" not in p.stderr, p.stderr
    # the daemon says the same and still serves them
    m = mxfront(fake_backend(), server={"group": "nogroup"}, tls={"certs_dir": str(d)})
    m.wait_log(r"event=certs_loaded .* problems=0 warnings=2")
    assert set(warnings_of(m.log())) == {"world", "other-group"}, m.log()
    served = tlsclients.openssl(m.port, sni="mx.w.example")
    assert served.der == made["world"].der, served


@pytest.mark.parametrize("names,warns", [
    (["*.com"], True), (["mx.a.example", "*.co.uk"], True), (["*.github.io"], True),
    (["*.mx.hoster.example"], False), (["*.example"], False), (["*.a.com"], False),
], ids=["star-com", "star-co-uk", "star-github-io", "hoster-wildcard", "private-tld",
        "under-a-domain"])
def test_wildcard_for_a_public_suffix_is_a_warning(tmp_path, names, warns):
    conf, _, _ = warning_setup(tmp_path, {"wild": (names, 0o600, None)})
    p = run_mxfront("-t", "-c", str(conf))
    w = warnings_of(p.stderr)
    if warns:
        assert p.returncode == 3, (p.returncode, p.stderr)
        wild = [n for n in names if n.startswith("*.")][0]
        assert set(w) == {"wild"} and wild in w["wild"] and "public suffix" in w["wild"], p.stderr
    else:
        assert p.returncode == 0 and not w, (p.returncode, p.stderr)
    # served either way
    p = run_mxfront("certs", "-c", str(conf))
    assert any(ln.split()[0] == names[-1] for ln in p.stdout.splitlines()[1:]), p.stdout


def spki_sha256(pem):
    """SHA-256 of the certificate's SubjectPublicKeyInfo, by openssl."""
    import hashlib
    import subprocess
    pub = subprocess.run(["openssl", "x509", "-noout", "-pubkey"], input=pem,
                         capture_output=True, check=True).stdout
    der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "DER"], input=pub,
                         capture_output=True, check=True).stdout
    return hashlib.sha256(der).hexdigest()


def test_certs_tlsa_prints_a_dane_ee_record_per_name_and_certificate(pki, tmp_path):
    certs_dir = pki.install(tmp_path / "certs.d")
    conf = tmp_path / "mxfront.conf"
    write_config(conf, mxfront_config("127.0.0.1:9", {"tls": {"certs_dir": str(certs_dir)}}))
    p = run_mxfront("certs", "--tlsa", "-c", str(conf))
    assert p.returncode == 0, (p.returncode, p.stderr)
    records = {}
    for ln in p.stdout.splitlines():
        m = re.fullmatch(r"_25\._tcp\.(\S+)\. IN TLSA 3 1 1 ([0-9a-f]{64}) ; (\S+) (\S+)", ln)
        if m:
            records[(m.group(1), m.group(3))] = m.group(2)
        else:
            assert re.fullmatch(r"; \*\.\S+: for each host it serves: _25\._tcp\.HOST\. IN TLSA "
                                r"3 1 1 [0-9a-f]{64} ; \S+ \S+", ln), ln
    want = {}
    for label, leaf in pki.leaves.items():
        for name in leaf.names or (leaf.cn,):
            if not name.startswith("*."):
                want[(name, label)] = spki_sha256(leaf.fullchain)
    assert records == want, p.stdout


def test_tlsa_option_belongs_to_certs(tmp_path):
    p = run_mxfront("--tlsa", "-c", str(tmp_path / "x.conf"))
    assert p.returncode == 2 and "--tlsa" in p.stderr, (p.returncode, p.stderr)
