"""`meson install` of the build under test into a --destdir (no root, no
package; tests/package/run builds, installs and purges the .deb): what goes
where, with which paths inside, and the man pages it installs checked against
the code: every (section, key) of server/config.c's config_keys[] table in
mxfront.conf(5) (and in conf/mxfront.conf), every option and command of
`mxfront --help` in mxfront(8)."""
import json
import os
import pwd
import re
import stat
import subprocess
from pathlib import Path

import pytest

import procs
from procs import REPO

BUILD = Path(procs.MXFRONT_BIN).resolve().parent


def meson(*args, **kw):
    p = subprocess.run(["meson", *map(str, args)], capture_output=True, text=True, timeout=120,
                       **kw)
    assert p.returncode == 0, f"meson {' '.join(map(str, args))}:\n{p.stdout}{p.stderr}"
    return p.stdout


class Install:
    """One `meson install --destdir` of BUILD, and where its parts went."""

    def __init__(self, dest):
        self.dest = dest
        opts = {o["name"]: o["value"]
                for o in json.loads(meson("introspect", BUILD, "--buildoptions"))}
        prefix = opts["prefix"]
        self.sbindir = os.path.join(prefix, opts["sbindir"])
        self.confdir = os.path.join(prefix, opts["sysconfdir"], "mxfront")
        self.mandir = os.path.join(prefix, opts["mandir"])
        self.installed = json.loads(meson("introspect", BUILD, "--installed"))
        self.run()

    def run(self):
        return meson("install", "-C", BUILD, "--no-rebuild", "--destdir", self.dest)

    def path(self, installed):
        """Where a path of the installation is inside the destdir."""
        return self.dest / installed.lstrip("/")

    def where(self, name):
        """The installed path of the built file called name."""
        hits = [v for k, v in self.installed.items() if os.path.basename(k) == name]
        assert len(hits) == 1, f"{name}: installed as {hits}"
        return hits[0]


@pytest.fixture(scope="module")
def install(tmp_path_factory):
    if not (BUILD / "meson-private").is_dir():
        pytest.skip(f"{BUILD} (MXFRONT_BIN's directory) is not a meson build directory")
    return Install(tmp_path_factory.mktemp("destdir"))


def mode(p):
    return stat.S_IMODE(p.stat().st_mode)


def test_meson_install_puts_each_part_where_a_debian_daemon_has_it(install):
    i = install
    binary = i.path(i.sbindir + "/mxfront")
    assert binary.is_file() and mode(binary) == 0o755, binary
    # Its default configuration file is the installed one.
    p = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=10)
    assert f"(default {i.confdir}/mxfront.conf)" in p.stdout, p.stdout

    conf = i.path(i.confdir + "/mxfront.conf")
    assert conf.read_bytes() == (REPO / "conf" / "mxfront.conf").read_bytes()
    assert mode(conf) == 0o644
    certs = i.path(i.confdir + "/certs.d")
    assert certs.is_dir() and mode(certs) == 0o750 and not any(certs.iterdir())

    # The unit runs the installed binary on the installed configuration.
    unit = i.path(i.where("mxfront.service"))
    assert os.path.basename(os.path.dirname(i.where("mxfront.service"))) == "system"
    text = unit.read_text()
    assert f"\nExecStart={i.sbindir}/mxfront -c {i.confdir}/mxfront.conf\n" in text, text
    assert f"\nReadOnlyPaths={i.confdir}\n" in text, text

    hook = i.path(i.sbindir + "/mxfront-deploy-hook")
    assert mode(hook) == 0o755
    text = hook.read_text()
    assert f"certs_dir=${{MXFRONT_CERTS_DIR:-{i.confdir}/certs.d}}" in text
    assert f"config=${{MXFRONT_CONFIG:-{i.confdir}/mxfront.conf}}" in text
    assert subprocess.run(["sh", "-n", hook]).returncode == 0

    for page in ("man8/mxfront.8", "man5/mxfront.conf.5", "man8/mxfront-deploy-hook.8"):
        roff = i.path(f"{i.mandir}/{page}")
        assert roff.is_file(), f"{page} not installed (is scdoc installed?)"
        assert i.confdir in roff.read_text(), f"{page} does not name {i.confdir}"
        r = subprocess.run(["man", "--warnings", "-l", "-Tutf8", "-Z", roff],
                           capture_output=True, text=True, timeout=30,
                           env=dict(os.environ, MANWIDTH="80", LC_ALL="C.UTF-8"))
        assert r.returncode == 0 and not r.stderr.strip(), f"{page}: {r.stderr}"


def test_installed_configuration_passes_the_check_and_is_never_overwritten(install):
    i = install
    conf = i.path(i.confdir + "/mxfront.conf")
    # The shipped `user = mxfront` exists once the package's postinst made
    # it (tests/package/run checks that); here it is checked as the user the
    # test runs as. Relative certs_dir: the installed (empty) certs.d next to
    # it, so: no configuration error, only "no certificate yet" (exit 3).
    checked = conf.with_name("checked.conf")
    me = pwd.getpwuid(os.geteuid()).pw_name
    checked.write_text(re.sub(r"^user = mxfront$", f"user = {me}", conf.read_text(), flags=re.M))
    p = subprocess.run([i.path(i.sbindir + "/mxfront"), "-t", "-c", checked],
                       capture_output=True, text=True, timeout=20)
    assert p.returncode == 3 and "configuration ok" in p.stderr, p.stdout + p.stderr
    assert f'event=tls_disabled reason="no usable certificate in {conf.parent}/certs.d"' \
        in p.stderr, p.stderr
    checked.unlink()

    edited = conf.read_text() + "\n# an operator's edit\n"
    conf.write_text(edited)
    i.run()
    assert conf.read_text() == edited


# --------------------------------------------------------------------------
# man pages against the code

def config_keys():
    """(section, key) of every row of config_keys[] in server/config.c."""
    src = (REPO / "server" / "config.c").read_text()
    table = re.search(r"config_keys\[\] = \{(.*?)\n\};", src, re.S)
    assert table, "config_keys[] not found in server/config.c"
    keys = re.findall(r'\{\s*"(\w+)",\s*"(\w+)",', table.group(1))
    assert len(keys) >= 20, keys
    return set(keys)


def roff(install, page):
    return install.path(f"{install.mandir}/{page}").read_text()


def roff_section(text, name):
    """The lines of one .SH section of a man page."""
    m = re.search(rf"^\.SH {name}\n(.*?)(?=^\.SH |\Z)", text, re.M | re.S)
    assert m, f"no section {name}"
    return m.group(1)


def documented_keys(text):
    """(section, key) for each `*key* = ...` term under a `## [section]`."""
    keys, section = set(), None
    for line in roff_section(text, "SECTIONS").splitlines():
        m = re.fullmatch(r"\.SS \[(\w+)\]", line)
        if m:
            section = m.group(1)
        m = re.match(r"\\fB(\w+)\\fR = ", line)
        if m:
            assert section, f"{line}: key before any section"
            keys.add((section, m.group(1)))
    return keys


def test_mxfront_conf_5_documents_every_config_key_and_no_other(install):
    code = config_keys()
    man = documented_keys(roff(install, "man5/mxfront.conf.5"))
    assert not code - man, f"keys of server/config.c missing in mxfront.conf(5): {code - man}"
    assert not man - code, f"mxfront.conf(5) documents keys the code does not have: {man - code}"


def test_conf_mxfront_conf_shows_every_config_key():
    keys, section = set(), None
    for line in (REPO / "conf" / "mxfront.conf").read_text().splitlines():
        m = re.fullmatch(r"\[(\w+)\]", line)
        if m:
            section = m.group(1)
        m = re.match(r"#?(\w+) =", line)
        if m and section:
            keys.add((section, m.group(1)))
    code = config_keys()
    assert not code - keys, f"keys missing in conf/mxfront.conf: {code - keys}"
    assert not keys - code, f"conf/mxfront.conf shows keys the code does not have: {keys - code}"


def help_text():
    p = subprocess.run([procs.MXFRONT_BIN, "--help"], capture_output=True, text=True, timeout=10)
    assert p.returncode == 0, p.stderr
    return p.stdout


def test_mxfront_8_documents_every_option_and_command_of_help(install):
    text = help_text()
    options = set(re.findall(r"^ +(-\w), (--[\w-]+)|^ +(--[\w-]+)", text, re.M))
    options = {o for row in options for o in row if o}
    commands = set(re.findall(r"^(?:Usage:)? +mxfront (\w+)", text, re.M))
    assert {"-c", "--config", "-t", "-h", "--help"} <= options, options
    assert "certs" in commands, commands

    page = roff(install, "man8/mxfront.8")
    opts = roff_section(page, "OPTIONS")
    in_man = set(re.findall(r"^\\fB(--?[\w-]+)\\fR(?:, \\fB(--?[\w-]+)\\fR)?", opts, re.M))
    in_man = {o for row in in_man for o in row if o}
    assert not options - in_man, f"options of --help missing in mxfront(8): {options - in_man}"
    assert not in_man - options, f"mxfront(8) documents options --help lacks: {in_man - options}"
    cmds = set(re.findall(r"^\\fB(\w+)\\fR$", roff_section(page, "COMMANDS"), re.M))
    assert cmds == commands, f"commands: --help {commands}, mxfront(8) {cmds}"
    synopsis = roff_section(page, "SYNOPSIS")
    for word in commands:
        assert f"\\fB{word}\\fR" in synopsis, f"{word} not in mxfront(8)'s SYNOPSIS"


def test_mxfront_deploy_hook_8_documents_every_variable_of_the_hook(install):
    hook = (REPO / "contrib" / "deploy-hook").read_text()
    header = hook[:hook.index("\nset ")]
    own = set(re.findall(r"\b(MXFRONT_[A-Z_]+)", header))
    acme = set(re.findall(r"\b((?:RENEWED|LEGO|CERT)_[A-Z_]+|Le_Domain)\b", header))
    assert {"MXFRONT_CERTS_DIR", "MXFRONT_CONFIG", "RENEWED_LINEAGE"} <= own | acme
    page = roff(install, "man8/mxfront-deploy-hook.8")
    missing = {v for v in own | acme if f"\\fB{v}\\fR" not in page}
    assert not missing, f"variables of contrib/deploy-hook missing in mxfront-deploy-hook(8): " \
        f"{missing}"
