"""Expiry (issue 14, point 5): `mxfront certs --warn-days N` names on
stderr every name whose certificate expires within N days, and every
certificate already expired, and exits 4 when there is any: for cron and
monitoring (the metrics carry the same facts:
mxfront_certificate_not_after_seconds, test_metrics)."""
import re

import procs
from certs import install_cert, make_cert, make_expired_cert

HOST = procs.HOSTNAME


def certs(conf, *args):
    return procs.run_mxfront("certs", "-c", str(conf), *args)


def certs_dir_of(tmp_path, expired=False):
    d, scratch = tmp_path / "certs.d", tmp_path / "scratch"
    install_cert(d, "default", make_cert(scratch, [HOST], 0x501, days=30))
    install_cert(d, "soon", make_cert(scratch, ["mx.soon.example", "mx2.soon.example"], 0x502,
                                      days=5))
    if expired:
        install_cert(d, "old", make_expired_cert(scratch, ["mx.old.example"], 0x503))
    conf = tmp_path / "mxfront.conf"
    procs.write_config(conf, procs.mxfront_config("127.0.0.1:9", {"tls": {"certs_dir": str(d)}}))
    return conf, d


def test_names_expiring_within_n_days_exit_4(tmp_path):
    conf, _ = certs_dir_of(tmp_path)
    p = certs(conf, "--warn-days", "10")
    assert p.returncode == 4, p.stderr
    said = re.findall(r"^mxfront: (\S+): certificate (\S+) \(ECDSA-P256\) expires on "
                      r"\d{4}-\d\d-\d\d, in ([45]) days \(within --warn-days 10\)$", p.stderr, re.M)
    assert sorted(n for n, _, _ in said) == ["mx.soon.example", "mx2.soon.example"], p.stderr
    assert all(label == "soon" for _, label, _ in said)
    assert HOST not in p.stderr
    assert "mxfront: 2 name(s) expire within 10 days, 0 certificate(s) have expired" in p.stderr
    # The table is printed as without the option.
    assert len(p.stdout.splitlines()) == 4, p.stdout


def test_nothing_within_n_days_exits_0(tmp_path):
    conf, _ = certs_dir_of(tmp_path)
    p = certs(conf, "--warn-days", "3")
    assert p.returncode == 0, p.stderr
    assert "expires" not in p.stderr


def test_an_expired_certificate_exits_4_naming_its_directory(tmp_path):
    conf, d = certs_dir_of(tmp_path, expired=True)
    p = certs(conf, "--warn-days", "0")
    assert p.returncode == 4, p.stderr
    assert re.search(rf"^mxfront: {re.escape(str(d / 'old'))}/fullchain.pem: expired on "
                     r"\d{4}-\d\d-\d\d: EXPIRED, not served$", p.stderr, re.M), p.stderr
    assert "0 name(s) expire within 0 days, 1 certificate(s) have expired" in p.stderr
    # Without --warn-days it is a certificate problem, as before.
    assert certs(conf).returncode == 3


def test_warn_days_takes_a_number_and_goes_with_certs_only(tmp_path):
    conf, _ = certs_dir_of(tmp_path)
    assert certs(conf, "--warn-days", "x").returncode == 2
    assert procs.run_mxfront("-t", "-c", str(conf), "--warn-days", "3").returncode == 2
