"""The SNI scoreboard (issue 14, point 2): who sends SNI. Real clients --
Postfix with and without smtp_tls_servername, openssl -noservername,
Python ssl, gnutls-cli, a plaintext client -- each land in the row of their
organisation (the registrable domain of their EHLO name) and the column of
what they did, in `mxfront stats senders` and in the metrics."""
import pytest

import procs
import smtpclient
import tlsclients
from metricslib import METRICS_ON, Scrape, metrics_address, mxfront_cli, wait_disconnects
from tlsclients import tls_session
from test_tls_postfix import postfix  # noqa: F401 (fixture)

COLUMNS = ["SESSIONS", "SNI-OK", "SNI-UNKN", "NO-SNI", "PLAIN", "TLS1.2", "TLS1.3", "NOSNI%"]


def senders_table(m):
    """{organisation: {column: text}} of `mxfront stats senders`."""
    p = mxfront_cli("stats", "senders", "-c", str(m.conf))
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].split() == ["ORGANISATION", *COLUMNS], p.stdout
    return {ln.split()[0]: dict(zip(COLUMNS, ln.split()[1:])) for ln in lines[1:]}


@pytest.fixture
def board(mxfront, fake_backend, pki, tmp_path):
    certs_dir = pki.install(tmp_path / "certs.d", ["default", "a", "wild-b"])
    return mxfront(fake_backend(), server={"control_socket": str(tmp_path / "ctl")},
                   tls={"certs_dir": str(certs_dir)}, metrics=METRICS_ON)


def test_each_real_client_lands_in_its_row(board, pki, postfix):  # noqa: F811
    m = board
    sessions = 0
    # Postfix told to send SNI, and Postfix as installed (no SNI).
    for helo, main, tag in (("mta.pf-sni.example", {"smtp_tls_servername": "mx.a.example"}, "a"),
                            ("mta.pf-stock.example", {"smtp_tls_security_level": "may"}, "b")):
        pf = postfix(f"[127.0.0.1]:{m.port}", pki.ca_file,
                     main={"myhostname": helo, "smtp_tls_security_level": "may", **main})
        pf.sendmail("sender@client.example", "alice@test.example",
                    f"Subject: {tag}\n\nvia postfix\n".encode())
        pf.wait_maillog(r"status=sent \(250 ", timeout=30)
        sessions += 1
        wait_disconnects(m, sessions)
        pf.stop()
    served = tlsclients.openssl(m.port, None, extra=("-name", "relay.ossl.example"))
    assert served.handshake, served
    served = tlsclients.python(m.port, "unknown.example")   # EHLO python.client.example
    assert served.handshake, served
    served = tlsclients.gnutls(m.port, "mx.b.example")      # EHLO 127.0.0.1
    assert served.handshake, served
    a = smtpclient.attempt_delivery(m.port, ["alice@x.example"], b"Subject: p\r\n\r\nplain\r\n",
                             helo="smtp.Plain.Example")
    assert a.final.code == 250, a
    wait_disconnects(m, sessions + 4)

    rows = senders_table(m)
    want = {  # organisation: (sessions, column with its one session, TLS version column)
        "pf-sni.example": ("SNI-OK", "TLS1.3"),
        "pf-stock.example": ("NO-SNI", "TLS1.3"),
        "ossl.example": ("NO-SNI", "TLS1.3"),
        "client.example": ("SNI-UNKN", "TLS1.3"),
        "[address]": ("SNI-OK", "TLS1.3"),
        "plain.example": ("PLAIN", None),
    }
    assert set(rows) == set(want), rows
    for org, (column, version) in want.items():
        row = rows[org]
        expect = {c: "0" for c in COLUMNS}
        expect.update({"SESSIONS": "1", column: "1"})
        if version:
            expect[version] = "1"
        expect["NOSNI%"] = "-" if column == "PLAIN" else \
            "100.0" if column == "NO-SNI" else "0.0"
        assert row == expect, (org, row)

    s = Scrape(metrics_address(m))
    series = {tuple(sorted(dict(k).items())): v
              for k, v in s.series("mxfront_sender_sessions_total").items()}
    assert series == {
        (("org", "pf-sni.example"), ("tls", "sni_served"), ("version", "TLS1.3")): 1,
        (("org", "pf-stock.example"), ("tls", "no_sni"), ("version", "TLS1.3")): 1,
        (("org", "ossl.example"), ("tls", "no_sni"), ("version", "TLS1.3")): 1,
        (("org", "client.example"), ("tls", "sni_unknown"), ("version", "TLS1.3")): 1,
        (("org", "[address]"), ("tls", "sni_served"), ("version", "TLS1.3")): 1,
        (("org", "plain.example"), ("tls", "plaintext"), ("version", "none")): 1,
    }


def test_top_n_then_other(mxfront, fake_backend, pki, tmp_path):
    certs_dir = pki.install(tmp_path / "certs.d", ["default", "a"])
    m = mxfront(fake_backend(), server={"control_socket": str(tmp_path / "ctl")},
                tls={"certs_dir": str(certs_dir)}, metrics={**METRICS_ON, "senders": "2"})
    n = 0
    for helo, count, sni in (("a1.big.example", 3, "mx.a.example"),
                             ("mail-ed1-f41.Google.COM.", 2, None),
                             ("x.small.co.uk", 1, "mx.a.example"),
                             ("localhost", 1, None)):
        for _ in range(count):
            c = tls_session(m.port, sni, helo=helo)
            c.cmd("QUIT")
            c.close()
            n += 1
    wait_disconnects(m, n)
    rows = senders_table(m)
    assert list(rows) == ["big.example", "google.com", "other"], rows
    assert rows["big.example"]["SNI-OK"] == "3"
    assert rows["google.com"]["NO-SNI"] == "2" and rows["google.com"]["NOSNI%"] == "100.0"
    # small.co.uk (a public suffix's registrable domain) and "localhost"
    # (no domain: [none]) fold into other.
    assert rows["other"]["SESSIONS"] == "2" and rows["other"]["SNI-OK"] == "1"
    assert rows["other"]["NO-SNI"] == "1"


def test_stats_senders_without_a_daemon_exits_5(tmp_path):
    conf = tmp_path / "m.conf"
    procs.write_config(conf, procs.mxfront_config(
        "127.0.0.1:9", {"server": {"control_socket": str(tmp_path / "ctl")}}))
    p = mxfront_cli("stats", "senders", "-c", str(conf))
    assert p.returncode == 5, p.stderr
    p = mxfront_cli("stats", "-c", str(conf))
    assert p.returncode == 2, p.stderr
