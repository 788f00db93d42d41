"""systemd and journald (issue 14, point 4): Type=notify messages
(READY, RELOADING, STOPPING, STATUS) on $NOTIFY_SOCKET; `mxfront reload`
(the unit's ExecReload) waits for the reload's verdict and fails when the
reload failed; with stderr connected to the journal ($JOURNAL_STREAM) every
line starts with its syslog priority and carries no timestamp of its own;
the start line names the listening addresses."""
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest

import procs
import smtpclient
import waits
from metricslib import mxfront_cli


@pytest.fixture
def notify_socket(monkeypatch):
    """A datagram socket standing in for systemd's; $NOTIFY_SOCKET names it
    for the daemons the test starts. Yields a function returning the next
    message (waiting up to a deadline)."""
    d = tempfile.mkdtemp(prefix="mxfnt-")
    path = os.path.join(d, "notify")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    monkeypatch.setenv("NOTIFY_SOCKET", path)

    def next_message(timeout=10.0):
        s.settimeout(timeout)
        try:
            return s.recv(4096).decode()
        except socket.timeout:
            raise AssertionError(f"no sd_notify message within {timeout}s") from None
    yield next_message
    s.close()
    shutil.rmtree(d, ignore_errors=True)


def fields(message):
    return dict(line.split("=", 1) for line in message.splitlines())


def test_notify_ready_reloading_and_stopping(notify_socket, mxfront, fake_backend):
    fb = fake_backend()
    m = mxfront(fb)
    ready = fields(notify_socket())
    assert ready == {"READY": "1",
                     "STATUS": f"listening on 127.0.0.1:{m.port}, backend {fb.address}"}, ready
    os.kill(m.pid, signal.SIGHUP)
    assert fields(notify_socket()) == {"RELOADING": "1", "STATUS": "reloading"}
    done = fields(notify_socket())
    assert done["READY"] == "1", done
    assert re.fullmatch(r"reloaded: generation 2, 0 certificates, 0 names, 0 problems, "
                        r"0 warnings", done["STATUS"]), done
    m.conf.write_text(m.conf.read_text() + "[server]\nlisten = nowhere\n")
    os.kill(m.pid, signal.SIGHUP)
    assert fields(notify_socket())["RELOADING"] == "1"
    failed = fields(notify_socket())
    assert failed["READY"] == "1" and failed["STATUS"].startswith("reload failed: "), failed
    assert str(m.conf) in failed["STATUS"], failed
    assert m.stop() == 0
    stopping = fields(notify_socket())
    assert stopping["STOPPING"] == "1", stopping


def test_reload_command_waits_for_the_verdict(mxfront, fake_backend, tmp_path):
    m = mxfront(fake_backend(), server={"control_socket": str(tmp_path / "ctl")})
    t0 = time.monotonic()
    p = mxfront_cli("reload", "-c", str(m.conf))
    assert p.returncode == 0, p.stderr
    assert re.fullmatch(r"reloaded: generation 2, 0 certificates, 0 names, 0 problems, "
                        r"0 warnings\n", p.stdout), p.stdout
    # The answer came after the reload, not before: its log line is there.
    assert "event=reload result=ok generation=2" in m.log()
    assert time.monotonic() - t0 < 10
    good = m.conf.read_text()
    # A file that does not load: the command says why and asks nothing.
    m.conf.write_text(good.replace("[backend]\n", "[backend]\nadress = 1\n"))
    p = mxfront_cli("reload", "-c", str(m.conf))
    assert p.returncode == 1, (p.stdout, p.stderr)
    assert "adress: unknown key" in p.stderr
    assert "event=reload_requested" not in m.log().split("result=ok generation=2")[1]
    # A reload only the daemon can find wrong: a new address that is taken.
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        taken = f"127.0.0.1:{held.getsockname()[1]}"
        m.conf.write_text(good.replace("listen = 127.0.0.1:0", f"listen = 127.0.0.1:0, {taken}"))
        p = mxfront_cli("reload", "-c", str(m.conf))
    assert p.returncode == 4, (p.stdout, p.stderr)
    assert p.stdout.startswith(f"reload failed: listen {taken}: Address already in use"), p.stdout
    assert "kept the running configuration" in p.stdout
    m.conf.write_text(good)
    assert mxfront_cli("reload", "-c", str(m.conf)).returncode == 0
    assert "event=reload result=ok generation=3" in m.log()


def test_reload_command_without_a_daemon_exits_5(tmp_path):
    conf = tmp_path / "m.conf"
    procs.write_config(conf, procs.mxfront_config(
        "127.0.0.1:9", {"server": {"control_socket": str(tmp_path / "ctl")}}))
    p = mxfront_cli("reload", "-c", str(conf))
    assert p.returncode == 5, p.stderr


def test_control_socket_of_a_running_mxfront_is_not_taken_over(mxfront, fake_backend, tmp_path):
    ctl = tmp_path / "ctl"
    mxfront(fake_backend(), server={"control_socket": str(ctl)})
    conf = tmp_path / "second.conf"
    where = procs.write_config(conf, procs.mxfront_config(
        "127.0.0.9:9", {"server": {"control_socket": str(ctl)}}))
    p = subprocess.run([procs.MXFRONT_BIN, "-c", str(conf)], capture_output=True, text=True,
                       timeout=20)
    assert p.returncode == 1, p.stderr
    assert (f"{conf}:{where[('server', 'control_socket')]}: [server] control_socket: "
            f"control socket {ctl}: in use by a running mxfront") in p.stderr, p.stderr


def test_stale_control_socket_is_replaced(mxfront, fake_backend, tmp_path):
    ctl = tmp_path / "ctl"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(ctl))
    s.close()  # a socket file nobody listens on: left by a crash
    m = mxfront(fake_backend(), server={"control_socket": str(ctl)})
    assert mxfront_cli("health", "-c", str(m.conf)).returncode == 0
    assert m.stop() == 0
    assert not ctl.exists()  # removed at the stop


def start_with_stderr(tmp_path, journal_stream_of=None):
    """Starts mxfront with stderr into a file, JOURNAL_STREAM naming that
    file (or journal_stream_of's); returns (process, log path, port)."""
    conf, log, addr = tmp_path / "j.conf", tmp_path / "j.log", tmp_path / "addresses"
    procs.write_config(conf, procs.mxfront_config(waits.closed_port_address(),
                                              {"backend": {"connect_timeout": "1s"}}))
    f = open(log, "wb")
    st = os.stat(journal_stream_of) if journal_stream_of else os.fstat(f.fileno())
    env = dict(os.environ, JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}")
    p = subprocess.Popen([procs.MXFRONT_BIN, "-c", str(conf), "--address-file", str(addr)],
                         stdin=subprocess.DEVNULL, stdout=f, stderr=f, env=env)
    f.close()
    waits.wait_until(lambda: addr.exists() or p.poll() is not None, procs.START_DEADLINE,
                   "the address file")
    port = int(addr.read_text().split()[0].rsplit(":", 1)[1])
    return p, log, port


def test_journal_lines_carry_their_priority_and_no_timestamp(tmp_path):
    p, log, port = start_with_stderr(tmp_path)
    try:
        waits.wait_until(lambda: "event=backend_down" in log.read_text(), 10, "backend_down")
        c = smtpclient.SmtpClient("127.0.0.1", port)
        c.read_reply()
        c.cmd("EHLO x.example")
        c.cmd("QUIT")
        c.close()
        waits.wait_until(lambda: "event=disconnect" in log.read_text(), 10, "disconnect")
    finally:
        code, _ = procs.stop_process(p)
    assert code == 0
    lines = log.read_text().splitlines()
    prio = {"<3>error": 3, "<4>warn": 4, "<6>info": 6, "<7>debug": 7}
    for line in lines:
        m = re.match(r"(<\d>\w+) (?:sess=\w+ )?event=\w+", line)
        assert m and m.group(1) in prio, f"not a journal line: {line!r}"
    text = "\n".join(lines)
    assert re.search(r"^<6>info event=start ", text, re.M), text
    assert re.search(r"^<4>warn event=backend_down ", text, re.M), text
    assert not re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", text), "a timestamp of its own"


def test_stderr_redirected_elsewhere_keeps_timestamps(tmp_path):
    other = tmp_path / "some-other-file"
    other.write_text("")
    p, log, _ = start_with_stderr(tmp_path, journal_stream_of=other)
    code, _ = procs.stop_process(p)
    assert code == 0
    for line in log.read_text().splitlines():
        assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (info|warn|error) ", line), line


def test_start_line_names_every_listening_address(mxfront, fake_backend):
    m = mxfront(fake_backend(), server={"listen": "127.0.0.1:0, 127.0.0.2:0"})
    line = m.wait_log(r"\bevent=start\b")[0].string
    assert f" listen={m.addresses[0]},{m.addresses[1]} " in line, line
