"""mxfront's command line: -t (config check), --version, --help, bad options."""
import os
import re
import shutil
import socket
import subprocess

import pytest

import procs
from procs import REPO, mxfront_config, run_mxfront, write_config


def check(path):
    return run_mxfront("-t", "-c", str(path))


def as_service_user(tmp_path):
    """argv prefix that runs mxfront the way contrib/mxfront.service does:
    as an unprivileged user holding only CAP_NET_BIND_SERVICE (as root);
    nothing when the tests do not run as root."""
    if os.geteuid() != 0:
        return []
    if not shutil.which("setpriv"):
        pytest.skip("setpriv (util-linux) not installed")
    procs.make_traversable(tmp_path)
    return ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
            "--inh-caps=+net_bind_service", "--ambient-caps=+net_bind_service"]


def test_shipped_example_config_is_valid(tmp_path):
    """conf/mxfront.conf installed beside an empty certs.d/ and checked the
    way the systemd unit runs mxfront: no configuration error, only "no
    certificate yet" (exit 3). Its port 25 becomes a free one here."""
    conf = tmp_path / "mxfront.conf"
    text = (REPO / "conf" / "mxfront.conf").read_text()
    assert re.search(r"^listen = 0\.0\.0\.0:25$", text, re.M), "shipped listen line changed"
    text = re.sub(r"^listen = .*$", "listen = 127.0.0.1:0", text, flags=re.M)
    # `user = mxfront` exists where the package is installed (postinst makes
    # it; tests/package/run checks that); here the service user is nobody.
    if os.geteuid() == 0:
        text = re.sub(r"^user = mxfront$", "user = nobody", text, flags=re.M)
    conf.write_text(text)
    (tmp_path / "certs.d").mkdir()
    p = subprocess.run([*as_service_user(tmp_path), procs.MXFRONT_BIN, "-t", "-c", str(conf)],
                       capture_output=True, text=True, timeout=20)
    assert p.returncode == 3, (p.returncode, p.stderr)
    assert "no usable certificate" in p.stderr and "configuration ok" in p.stderr, p.stderr


def test_valid_config_passes(tmp_path):
    conf = tmp_path / "mxfront.conf"
    write_config(conf, mxfront_config("127.0.0.1:24", {
        "server": {"listen": "127.0.0.1:2525, [::1]:2525", "max_clients": "10",
                   "max_message_size": "10M", "max_recipients": "100000", "max_errors": "1"},
        "backend": {"connect_timeout": "90", "timeout": "1h", "xclient": "no", "protocol": "lmtp"},
        "timeouts": {"command": "5m", "data": "3m"},
    }))
    p = check(conf)
    assert p.returncode == 0, p.stderr


# (section, key, bad value, words the reason must contain (any of them))
BAD_VALUES = [
    ("server", "max_recipients", "0", ["between", "range", "1"]),
    ("server", "max_recipients", "100001", ["between", "range", "100000"]),
    ("server", "max_recipients", "ten", ["number", "integer", "invalid", "between"]),
    ("server", "max_clients", "0", ["between", "range"]),
    ("server", "max_message_size", "512", ["between", "range", "1k", "1024"]),
    ("server", "max_message_size", "5T", ["size", "suffix", "invalid", "between"]),
    ("server", "max_errors", "1001", ["between", "range"]),
    ("server", "listen", "nowhere", ["address", "port", "host", "invalid"]),
    ("backend", "timeout", "0s", ["between", "range", "1s"]),
    ("backend", "timeout", "2d", ["duration", "suffix", "invalid", "between"]),
    ("backend", "connect_timeout", "6m", ["between", "range", "5m"]),
    ("backend", "xclient", "maybe", ["yes", "no", "boolean"]),
    ("backend", "protocol", "smtp", ["lmtp", "supported", "unknown", "invalid"]),
    ("timeouts", "command", "2h", ["between", "range", "1h"]),
]


@pytest.mark.parametrize("section,key,value,words", BAD_VALUES,
                         ids=[f"{s}.{k}={v}" for s, k, v, _ in BAD_VALUES])
def test_bad_value_names_file_line_and_key(tmp_path, section, key, value, words):
    conf = tmp_path / "mxfront.conf"
    where = write_config(conf, mxfront_config("127.0.0.1:24", {section: {key: value}}))
    line = where[(section, key)]
    p = check(conf)
    assert p.returncode == 1, (p.returncode, p.stderr)
    m = re.search(re.escape(f"{conf}:{line}: ") + r"(?:\[\w+\] )?" + re.escape(key) + r": (.+)",
                  p.stderr)
    assert m, f"expected '{conf}:{line}: {key}: reason' in stderr:\n{p.stderr}"
    assert any(w.lower() in m.group(1).lower() for w in words), p.stderr


@pytest.mark.parametrize("text", [
    "[server]\nmax_recipients = 0\nlisen = 127.0.0.1:0\n",
    "[server]\nlisten = 127.0.0.1:0\n[backend]\nxclient = maybe\ntimeout = 2d\n",
], ids=["bad-value-then-unknown-key", "two-bad-values"])
def test_each_reported_error_names_its_own_line(tmp_path, text):
    """With several mistakes in a file, every `FILE:LINE: key` printed must
    point at the line holding that key."""
    conf = tmp_path / "mxfront.conf"
    conf.write_text(text)
    lines = text.splitlines()
    p = check(conf)
    assert p.returncode == 1, p.stderr
    reported = re.findall(re.escape(str(conf)) + r":(\d+): (?:\[\w+\] )?(\w+):", p.stderr)
    assert reported, p.stderr
    for number, key in reported:
        assert re.match(rf"\s*{key}\s*=", lines[int(number) - 1]), \
            f"line {number} is {lines[int(number) - 1]!r}, but stderr blames {key!r}:\n{p.stderr}"


def test_unknown_key_names_the_key_and_line(tmp_path):
    conf = tmp_path / "mxfront.conf"
    conf.write_text("# test\n[server]\nlisen = 127.0.0.1:0\n[backend]\naddress = 127.0.0.1:24\n")
    p = check(conf)
    assert p.returncode == 1, p.stderr
    assert re.search(re.escape(f"{conf}:3: ") + r".*\blisen\b.*unknown", p.stderr), p.stderr


def test_unknown_section_is_an_error(tmp_path):
    conf = tmp_path / "mxfront.conf"
    conf.write_text("[server]\nlisten = 127.0.0.1:0\n[sever]\nhostname = x.example\n")
    p = check(conf)
    assert p.returncode == 1, p.stderr
    assert re.search(re.escape(f"{conf}:") + r"[34]: .*\bsever\b", p.stderr), p.stderr


def test_overlong_config_line_is_an_error(tmp_path):
    # inih silently cuts lines over 199 characters; mxfront must refuse them
    conf = tmp_path / "mxfront.conf"
    conf.write_text("[server]\nhostname = " + "a" * 230 + ".example\n")
    p = check(conf)
    assert p.returncode == 1, p.stderr
    assert f"{conf}:2:" in p.stderr, p.stderr


def test_missing_config_file_is_an_error(tmp_path):
    conf = tmp_path / "absent.conf"
    p = check(conf)
    assert p.returncode == 1, p.stderr
    assert str(conf) in p.stderr, p.stderr


def test_version():
    p = run_mxfront("--version")
    assert p.returncode == 0, p.stderr
    assert re.fullmatch(r"mxfront \d+\.\d+\.\d+\S*\n", p.stdout), p.stdout


def test_help_goes_to_stdout():
    p = run_mxfront("--help")
    assert p.returncode == 0, p.stderr
    assert "Usage" in p.stdout and "--address-file" in p.stdout and "-t" in p.stdout, p.stdout


@pytest.mark.parametrize("args", [["--bogus"], ["-x"], ["-c"], ["-t", "extra-argument"]],
                         ids=["long", "short", "missing-value", "extra-argument"])
def test_bad_option_exits_2_with_usage_on_stderr(args):
    p = run_mxfront(*args)
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert "Usage" in p.stderr and p.stdout == "", (p.stdout, p.stderr)


# --------------------------------------------------------------------------
# -t tells the truth: everything that would stop the daemon is exit 1

def t_config(tmp_path, server=None, tls=None, backend="127.0.0.1:24"):
    conf = tmp_path / "mxfront.conf"
    sections = mxfront_config(backend, {"server": server or {}, "tls": tls or {}})
    for section in sections.values():
        for k in [k for k, v in section.items() if v is None]:
            del section[k]
    where = write_config(conf, sections)
    return conf, where


def start(conf, extra=()):
    """Starts the daemon itself on CONF; returns (exit code, stderr) if it
    stopped within a few seconds, or None if it is running (then stopped)."""
    proc = subprocess.Popen([procs.MXFRONT_BIN, "-c", str(conf), *extra], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        _, err = proc.communicate(timeout=3)
        return proc.returncode, err
    except subprocess.TimeoutExpired:
        proc.terminate()
        proc.communicate(timeout=10)
        return None


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (the daemon refuses to stay root)")
@pytest.mark.parametrize("server,key,words", [
    ({"user": "mxfrnt"}, "user", ["no such user", "mxfrnt"]),
    ({"user": "nobody", "group": "mxfrnt"}, "group", ["no such group", "mxfrnt"]),
    ({"user": None}, "user", ["root", "user"]),
], ids=["unknown-user", "unknown-group", "root-without-user"])
def test_t_fails_where_the_daemon_refuses_to_run_as(tmp_path, server, key, words):
    conf, where = t_config(tmp_path, server)
    p = check(conf)
    assert p.returncode == 1, (p.returncode, p.stderr)
    assert "configuration ok" not in p.stdout + p.stderr
    line = where.get(("server", key))
    at = f"{conf}:{line}: " if line else f"{conf}: "
    m = re.search(re.escape(at) + r"\[server\] " + key + r": (.+)", p.stderr)
    assert m, f"expected '{at}[server] {key}: reason':\n{p.stderr}"
    assert all(w in m.group(1) for w in words), p.stderr
    # and the daemon does refuse, with the same words
    rc, err = start(conf) or (None, "")
    assert rc == 1 and all(w in err for w in words), (rc, err)


def test_t_fails_on_a_mistyped_certs_dir_and_so_does_the_start(tmp_path):
    """A certs_dir that is not there would make a plaintext-only MX: an
    error for -t and for the start, naming the line."""
    conf, where = t_config(tmp_path, tls={"certs_dir": str(tmp_path / "cert.d")})
    (tmp_path / "certs.d").mkdir()
    p = check(conf)
    assert p.returncode == 1, (p.returncode, p.stderr)
    line = where[("tls", "certs_dir")]
    assert re.search(re.escape(f"{conf}:{line}: [tls] certs_dir: {tmp_path}/cert.d: ")
                     + r".*No such file", p.stderr), p.stderr
    assert "plaintext" in p.stderr, p.stderr
    rc, err = start(conf) or (None, "")
    assert rc == 1 and f"{tmp_path}/cert.d" in err, (rc, err)


def test_t_fails_on_an_unreadable_certs_dir(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root reads any directory")
    d = tmp_path / "certs.d"
    d.mkdir(mode=0)
    conf, _ = t_config(tmp_path, tls={"certs_dir": str(d)})
    p = check(conf)
    assert p.returncode == 1 and "ermission denied" in p.stderr, (p.returncode, p.stderr)


def test_t_accepts_an_empty_certs_dir_as_plaintext_on_purpose(tmp_path):
    conf, _ = t_config(tmp_path, tls={"certs_dir": ""})
    p = check(conf)
    assert p.returncode == 0, (p.returncode, p.stderr)
    assert "configuration ok" in p.stdout, p.stdout
    assert "plaintext" in p.stderr, p.stderr


def test_t_fails_on_an_address_held_by_another_program(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        conf, where = t_config(tmp_path, {"listen": f"127.0.0.1:{port}"})
        p = check(conf)
        assert p.returncode == 1, (p.returncode, p.stderr)
        line = where[("server", "listen")]
        m = re.search(re.escape(f"{conf}:{line}: [server] listen: ") + r"(.+)", p.stderr)
        assert m and f"127.0.0.1:{port}" in m.group(1), p.stderr
        assert f"pid {os.getpid()}" in m.group(1) and "python" in m.group(1), p.stderr
        rc, err = start(conf) or (None, "")
        assert rc == 1 and f"127.0.0.1:{port}" in err, (rc, err)


def test_t_fails_on_an_address_of_no_interface_here(tmp_path):
    conf, _ = t_config(tmp_path, {"listen": "192.0.2.1:2525"})
    p = check(conf)
    assert p.returncode == 1, (p.returncode, p.stderr)
    assert "192.0.2.1:2525" in p.stderr and "assign" in p.stderr, p.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run as nobody")
@pytest.mark.parametrize("caps,ok", [(False, False), (True, True)],
                         ids=["no-capability", "cap_net_bind_service"])
def test_t_says_a_privileged_port_needs_root_or_the_capability(tmp_path, caps, ok):
    procs.make_traversable(tmp_path)
    conf, _ = t_config(tmp_path, {"listen": "127.0.0.1:25", "user": None})
    prefix = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    prefix += (["--inh-caps=+net_bind_service", "--ambient-caps=+net_bind_service"] if caps
               else ["--inh-caps=-all"])
    p = subprocess.run([*prefix, procs.MXFRONT_BIN, "-t", "-c", str(conf)], capture_output=True,
                       text=True, timeout=20)
    if ok:
        # nothing may listen on port 25 of 127.0.0.1 here; if something does, it is named
        assert p.returncode == 0 or "127.0.0.1:25" in p.stderr, (p.returncode, p.stderr)
    else:
        assert p.returncode == 1, (p.returncode, p.stderr)
        assert "privileged" in p.stderr and "CAP_NET_BIND_SERVICE" in p.stderr, p.stderr


def test_t_before_a_reload_is_fine_with_the_running_mxfronts_own_port(tmp_path, mxfront,
                                                                     fake_backend):
    """The address a running mxfront listens on is no error for -t (the
    reload keeps that socket); -t says who holds it, and binds nothing that
    could take a connection from it."""
    mx = mxfront(fake_backend())
    conf, _ = t_config(tmp_path, {"listen": f"127.0.0.1:{mx.port}"})
    p = check(conf)
    assert p.returncode == 0, (p.returncode, p.stderr)
    assert re.search(rf"event=check listen=127\.0\.0\.1:{mx.port} note=\"in use by mxfront "
                     rf"\(pid {mx.pid}\b", p.stderr), p.stderr


@pytest.mark.parametrize("address,words", [
    ("nowhere", ["not host:port"]),
    ("no-such-host.invalid:24", ["no-such-host.invalid"]),
    ("127.0.0.1:99999", ["port"]),
    ("unix:", ["empty"]),
], ids=["no-port", "unresolvable", "bad-port", "empty-unix"])
def test_t_fails_on_a_backend_address_that_does_not_parse(tmp_path, address, words):
    conf, where = t_config(tmp_path, backend=address)
    p = check(conf)
    assert p.returncode == 1, (p.returncode, p.stderr)
    line = where[("backend", "address")]
    assert re.search(re.escape(f"{conf}:{line}: ") + r"(\[backend\] )?address: ", p.stderr), \
        p.stderr
    assert all(w in p.stderr for w in words), p.stderr


def test_t_reports_every_start_problem_at_once(tmp_path):
    """Independent problems are all named in one run, each with its line."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        conf, where = t_config(tmp_path, {"listen": f"127.0.0.1:{port}",
                                          "user": "mxfrnt" if os.geteuid() == 0 else None},
                               tls={"certs_dir": "cert.d"})
        p = check(conf)
    assert p.returncode == 1, (p.returncode, p.stderr)
    keys = [("server", "listen"), ("tls", "certs_dir")]
    if os.geteuid() == 0:
        keys.append(("server", "user"))
    for section, key in keys:
        assert f"{conf}:{where[(section, key)]}: [{section}] {key}: " in p.stderr, p.stderr
