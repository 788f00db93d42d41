"""Health (issue 14, point 3): GET /healthz on the [metrics] listener and
`mxfront health` over the control socket say whether mxfront can take mail
now -- listening, backend reachable, certificates loaded, not stopping --
with 200/exit 0, or 503/exit 4 and the reasons. The case a probe must
catch: EHLO works but every MAIL would get 451."""
import os
import signal

import procs
import smtpclient
import waits
from metricslib import METRICS_ON, http_get, metrics_address, mxfront_cli


def control(tmp_path):
    return {"control_socket": str(tmp_path / "ctl")}


def health(m):
    """(exit code, stdout) of `mxfront health` for running mxfront m."""
    p = mxfront_cli("health", "-c", str(m.conf))
    return p.returncode, p.stdout + p.stderr


def test_backend_down_is_unhealthy_while_ehlo_still_works(mxfront, fake_backend, tmp_path):
    port = waits.free_port()
    m = mxfront(f"127.0.0.1:{port}", server={**control(tmp_path), "workers": "2"},
                backend={"connect_timeout": "1s"}, metrics=METRICS_ON)
    addr = metrics_address(m)
    m.wait_log(r"event=backend_down", count=2)
    status, text = http_get(addr, "/healthz")
    assert status == 503, text
    assert text == "backend down (2 of 2 workers): MAIL gets 4xx\n"
    code, out = health(m)
    assert code == 4, out
    assert out == "backend down (2 of 2 workers): MAIL gets 4xx\n"
    # What the probe is for: the client sees a healthy greeting and EHLO ...
    c, hello = smtpclient.smtp_session(m)
    assert hello.code == 250
    # ... and a 4xx for every MAIL.
    assert c.cmd("MAIL FROM:<a@x.example>").code // 100 == 4
    c.close()
    # The backend comes up: the pool's retries find it, health follows.
    fake_backend(port=port)
    waits.wait_until(lambda: http_get(addr, "/healthz") == (200, "ok\n"), 15, "/healthz 200")
    assert health(m) == (0, "ok\n")
    a = smtpclient.attempt_delivery(m.port, ["alice@x.example"], b"Subject: x\r\n\r\nx\r\n")
    assert a.final.code == 250, a


def test_backend_that_dies_while_idle_turns_health_red(mxfront, fake_backend, tmp_path):
    fb = fake_backend()
    m = mxfront(fb, metrics=METRICS_ON)
    addr = metrics_address(m)
    assert http_get(addr, "/healthz") == (200, "ok\n")
    fb.stop()  # closes its connections: the pool's idle ones see EOF
    waits.wait_until(lambda: http_get(addr, "/healthz")[0] == 503, 10, "/healthz 503")
    assert "backend down" in http_get(addr, "/healthz")[1]


def test_no_certificate_loaded_is_unhealthy(mxfront, fake_backend, pki, tmp_path):
    certs_dir = pki.install(tmp_path / "certs.d", [], broken=["bad-garbled"])
    m = mxfront(fake_backend(), server=control(tmp_path), tls={"certs_dir": str(certs_dir)},
                metrics=METRICS_ON)
    status, text = http_get(metrics_address(m), "/healthz")
    assert (status, text) == (503, "no certificate loaded: STARTTLS is off\n")
    assert health(m) == (4, "no certificate loaded: STARTTLS is off\n")


def test_plaintext_on_purpose_is_healthy(mxfront, fake_backend, tmp_path):
    m = mxfront(fake_backend(), server=control(tmp_path))
    # Without [metrics] listen: the control socket alone answers.
    assert health(m) == (0, "ok\n")


def test_stopping_is_unhealthy_while_a_transaction_finishes(mxfront, fake_backend, tmp_path):
    m = mxfront(fake_backend(), server={"shutdown_timeout": "20s"}, metrics=METRICS_ON)
    addr = metrics_address(m)
    c, _ = smtpclient.smtp_session(m)
    assert c.cmd("MAIL FROM:<a@x.example>").code == 250
    os.kill(m.pid, signal.SIGTERM)
    m.wait_log(r"event=stop signal=TERM")
    status, text = http_get(addr, "/healthz")
    assert status == 503 and text.startswith("shutting down"), text
    assert c.cmd("RCPT TO:<b@x.example>").code == 250
    assert c.cmd("RSET").code == 250
    c.close()
    assert m.wait_exit() == 0


def test_health_without_a_daemon_exits_5(tmp_path):
    conf = tmp_path / "m.conf"
    procs.write_config(conf, procs.mxfront_config("127.0.0.1:9", {"server": control(tmp_path)}))
    p = mxfront_cli("health", "-c", str(conf))
    assert p.returncode == 5, p.stderr
    assert "is mxfront running?" in p.stderr and str(tmp_path / "ctl") in p.stderr
