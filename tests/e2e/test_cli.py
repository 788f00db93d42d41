"""mxfront's command line: -t (config check), --version, --help, bad options."""
import re

import pytest

from lib import REPO, mxfront_config, run_mxfront, write_config


def check(path):
    return run_mxfront("-t", "-c", str(path))


def test_shipped_example_config_is_valid():
    p = check(REPO / "conf" / "mxfront.conf")
    assert p.returncode == 0, p.stderr


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
