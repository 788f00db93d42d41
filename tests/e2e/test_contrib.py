"""Running mxfront as a real service: privileges ([server] user/group, or
started unprivileged with CAP_NET_BIND_SERVICE), the systemd unit
contrib/mxfront.service, and contrib/deploy-hook run for real against a running
instance the way certbot, lego and acme.sh call it."""
import dataclasses
import os
import random
import re
import shutil
import socket
import stat
import subprocess
import threading
from pathlib import Path

import pytest

import procs
from certs import install_cert, make_cert, make_expired_cert
from procs import (NOBODY, NOGROUP, REPO, field_of, hup_ok, make_readable_by, mxfront_config,
                   proc_ids, reload_lines, run_mxfront, write_config)
from smtpclient import SmtpClient
from tlsclients import assert_served
from waits import wait_until

UNIT = REPO / "contrib" / "mxfront.service"
HOOK = REPO / "contrib" / "deploy-hook"
DEFAULT_NAME = procs.HOSTNAME
NOBODY_ID = 65534
CAP_NET_BIND_SERVICE = 1 << 10

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (switches users)")


def privileged_port():
    """A free port below 1024 on 127.0.0.1 (only root can probe it)."""
    ports = list(range(600, 1000))
    random.shuffle(ports)
    for port in ports:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.fail("no free port in 600-999")


def config_without_user(tmp_path, backend="127.0.0.1:24", **overrides):
    sections = mxfront_config(backend, overrides)
    sections["server"].pop("user", None)
    conf = tmp_path / "mxfront.conf"
    write_config(conf, sections)
    return conf


def nobody_workdir(tmp_path, name="mxfront"):
    """The directory the mxfront fixture will use, owned by nobody so that the
    daemon can rewrite its --address-file after dropping privileges."""
    d = tmp_path / name
    d.mkdir()
    os.chown(d, NOBODY_ID, NOBODY_ID)
    procs.make_traversable(d)
    return d


# --------------------------------------------------------------------------
# privileges

@as_root
def test_root_without_user_refuses_to_start(tmp_path):
    conf = config_without_user(tmp_path, server={"listen": "127.0.0.1:0"})
    p = run_mxfront("-c", str(conf), timeout=10)
    assert p.returncode == 1, (p.returncode, p.stderr)
    assert "root" in p.stderr and "user" in p.stderr, p.stderr


@as_root
@pytest.mark.parametrize("key,value", [("user", "no-such-user-mxf"),
                                       ("group", "no-such-group-mxf")])
def test_unknown_user_or_group_exits_1(tmp_path, key, value):
    sections = mxfront_config("127.0.0.1:24", {"server": {"user": NOBODY, key: value}})
    conf = tmp_path / "mxfront.conf"
    write_config(conf, sections)
    p = run_mxfront("-c", str(conf), timeout=10)
    assert p.returncode == 1, (p.returncode, p.stderr)
    assert value in p.stderr and key in p.stderr, p.stderr


@as_root
def test_user_nobody_binds_as_root_then_runs_and_reloads_as_nobody(mxfront, fake_backend,
                                                                   tmp_path):
    certs = tmp_path / "certs.d"
    scratch = tmp_path / "scratch"
    default = make_cert(scratch, [DEFAULT_NAME], 0x201)
    a1 = make_cert(scratch, ["mx.a.example"], 0x2a1)
    a2 = make_cert(scratch, ["mx.a.example"], 0x2a2)
    install_cert(certs, "default", default)
    install_cert(certs, "a", a1)
    make_readable_by(certs)
    nobody_workdir(tmp_path)
    port = privileged_port()
    mx = mxfront(fake_backend(), server={"user": NOBODY, "listen": f"127.0.0.1:{port}"},
                 tls={"certs_dir": str(certs)})
    assert mx.port == port
    uids, gids, capeff = proc_ids(mx.pid)
    assert uids == (NOBODY_ID,) * 4, f"Uid line {uids}"
    assert gids == (NOBODY_ID,) * 4, f"Gid line {gids}"
    groups = re.search(r"^Groups:(.*)$", Path(f"/proc/{mx.pid}/status").read_text(), re.M).group(1)
    assert groups.split() in ([], [str(NOBODY_ID)]), f"supplementary groups kept: {groups}"
    assert capeff == 0, f"capabilities kept: {capeff:#x}"
    mx.wait_log(r"\bevent=privileges user=nobody uid=65534 gid=65534\b")
    with SmtpClient("127.0.0.1", port) as c:
        assert c.read_reply().code == 220
    known = [default, a1, a2]
    assert_served(port, "mx.a.example", a1, known)

    # SIGHUP re-reads as nobody: a renewed key left readable by the group works,
    install_cert(certs, "a", a2)
    make_readable_by(certs)
    line = hup_ok(mx)
    assert field_of(line, "problems") == "0", line
    assert_served(port, "mx.a.example", a2, known)
    # one left root-only is reported, with the file.
    b = make_cert(scratch, ["mx.b.example"], 0x2b1)
    install_cert(certs, "b", b)
    os.chmod(certs / "b", 0o755)
    hup_ok(mx)
    mx.wait_log(r"\bevent=cert_error file=\S*/b/privkey\.pem reason=\"[^\"]*[Pp]ermission denied")


def setpriv_wrapper(tmp_path, caps=True):
    """A script that execs the real mxfront as nobody:nogroup, with
    CAP_NET_BIND_SERVICE as an ambient capability (as systemd's
    AmbientCapabilities= gives it) or with no capability at all."""
    if not shutil.which("setpriv"):
        pytest.skip("setpriv (util-linux) not installed")
    capargs = ("--inh-caps=+net_bind_service --ambient-caps=+net_bind_service" if caps
               else "--inh-caps=-all")
    w = tmp_path / ("mxfront-as-nobody" + ("" if caps else "-nocap"))
    w.write_text("#!/bin/sh\n"
                 f"exec setpriv --reuid={NOBODY} --regid={NOGROUP} --clear-groups {capargs} "
                 f"'{procs.MXFRONT_BIN}' \"$@\"\n")
    w.chmod(0o755)
    return w


@as_root
def test_unprivileged_start_with_cap_net_bind_service(mxfront, fake_backend, tmp_path,
                                                      monkeypatch):
    """How the systemd unit runs it: as an ordinary user holding only
    CAP_NET_BIND_SERVICE, with [server] user left empty."""
    monkeypatch.setattr(procs, "MXFRONT_BIN", str(setpriv_wrapper(tmp_path)))
    nobody_workdir(tmp_path)
    port = privileged_port()
    mx = mxfront(fake_backend(), server={"user": "", "listen": f"127.0.0.1:{port}"})
    uids, gids, capeff = proc_ids(mx.pid)
    assert uids == (NOBODY_ID,) * 4 and gids == (NOBODY_ID,) * 4, (uids, gids)
    assert capeff == CAP_NET_BIND_SERVICE, f"CapEff {capeff:#x}"
    assert mx.port == port
    with SmtpClient("127.0.0.1", port) as c:
        assert c.read_reply().code == 220
    hup_ok(mx)
    assert "event=privileges" not in mx.log()


@as_root
def test_unprivileged_start_without_the_capability_cannot_bind_port_25_style_ports(tmp_path):
    port = privileged_port()
    wrapper = setpriv_wrapper(tmp_path, caps=False)
    conf = config_without_user(tmp_path, server={"listen": f"127.0.0.1:{port}"})
    procs.make_traversable(tmp_path)
    p = subprocess.run([str(wrapper), "-c", str(conf)], capture_output=True, text=True,
                       timeout=10)
    assert p.returncode == 1, (p.returncode, p.stderr)
    assert f"127.0.0.1:{port}" in p.stderr and "permission" in p.stderr.lower(), p.stderr


# --------------------------------------------------------------------------
# the systemd unit

def unit_settings(path):
    """{section: {key: [values]}} of a systemd unit file."""
    out, section = {}, None
    for raw in Path(path).read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = out.setdefault(line.strip("[]"), {})
            continue
        key, value = line.split("=", 1)
        section.setdefault(key.strip(), []).append(value.strip())
    return out


def seconds(text):
    m = re.fullmatch(r"(\d+)\s*(s|min|m|h)?", text.strip())
    assert m, text
    return int(m.group(1)) * {"s": 1, None: 1, "m": 60, "min": 60, "h": 3600}[m.group(2)]


def test_systemd_unit_has_the_promised_settings():
    u = unit_settings(UNIT)
    svc = u["Service"]

    def one(key):
        assert key in svc and len(svc[key]) == 1, f"{key}: {svc.get(key)}"
        return svc[key][0]
    assert one("Type") == "notify" and one("NotifyAccess") == "main"
    assert "ExecStartPre" not in svc
    assert one("ExecStart") == "/usr/sbin/mxfront -c /etc/mxfront/mxfront.conf"
    # the reload waits for the daemon's verdict (over the control socket in
    # the runtime directory)
    assert one("ExecReload") == "/usr/sbin/mxfront reload -c /etc/mxfront/mxfront.conf"
    assert one("RuntimeDirectory") == "mxfront"
    assert one("KillSignal") == "SIGTERM"
    assert one("User") == "mxfront" and one("Group") == "mxfront"
    assert one("AmbientCapabilities") == "CAP_NET_BIND_SERVICE"
    assert one("CapabilityBoundingSet") == "CAP_NET_BIND_SERVICE"
    for key, want in [("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"),
                      ("ProtectHome", "yes"), ("PrivateTmp", "yes"), ("PrivateDevices", "yes"),
                      ("ReadOnlyPaths", "/etc/mxfront"), ("SystemCallFilter", "@system-service"),
                      ("LockPersonality", "yes"), ("MemoryDenyWriteExecute", "yes"),
                      ("Restart", "on-failure")]:
        assert one(key) == want, f"{key}={one(key)}"
    assert set(one("RestrictAddressFamilies").split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    # Longer than the default shutdown_timeout, or systemd SIGKILLs a
    # graceful stop in progress.
    conf = (REPO / "conf" / "mxfront.conf").read_text()
    grace = re.search(r"^shutdown_timeout = (\d+)s$", conf, re.M)
    assert grace, "conf/mxfront.conf: shutdown_timeout default not found"
    assert seconds(one("TimeoutStopSec")) > int(grace.group(1))
    assert "multi-user.target" in u["Install"]["WantedBy"]


@pytest.mark.parametrize("case,ok", [("no-certificate-left", False), ("broken-certificate", True),
                                     ("clean", True)])
def test_systemd_reload_fails_when_the_reload_fails(tmp_path, mxfront, fake_backend, monkeypatch,
                                                    case, ok):
    """The unit's ExecReload, run as systemd would (with $RUNTIME_DIRECTORY
    for the daemon and the command alike), after certs.d/ lost its last
    usable certificate / gained a broken one / nothing changed."""
    reload = unit_settings(UNIT)["Service"]["ExecReload"][0]
    certs = tmp_path / "certs.d"
    install_cert(certs, "default", make_cert(tmp_path / "scratch", [DEFAULT_NAME], 0x401))
    runtime = tmp_path / "run"
    runtime.mkdir()
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(runtime))
    m = mxfront(fake_backend(), tls={"certs_dir": str(certs)})
    if case == "broken-certificate":
        install_cert(certs, "broken", make_cert(tmp_path / "scratch", ["mx.x.example"], 0x402),
                     fullchain=b"garbage\n")
    elif case == "no-certificate-left":
        shutil.rmtree(certs / "default")
    argv = reload.replace("/usr/sbin/mxfront", procs.MXFRONT_BIN) \
                 .replace("/etc/mxfront/mxfront.conf", str(m.conf)).split()
    p = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert (p.returncode == 0) == ok, (p.returncode, p.stdout, p.stderr)
    assert m.log().count("event=reload result=") == 1


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
def test_systemd_unit_passes_systemd_analyze_verify(tmp_path):
    """With the binary path pointing at the built mxfront, `systemd-analyze
    verify` has nothing to say; the shipped file only lacks /usr/sbin/mxfront.
    The man pages its Documentation= names are the built ones (man/)."""
    manpath = tmp_path / "man"
    for page in ("mxfront.8", "mxfront.conf.5"):
        section = manpath / ("man" + page[-1])
        section.mkdir(parents=True, exist_ok=True)
        built = Path(procs.MXFRONT_BIN).parent / "man" / page
        assert built.is_file(), f"{built} not built (is scdoc installed?)"
        shutil.copy(built, section / page)
    env = dict(os.environ, MANPATH=str(manpath))
    unit = tmp_path / "mxfront.service"
    unit.write_text(UNIT.read_text().replace("/usr/sbin/mxfront", procs.MXFRONT_BIN))
    p = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                       text=True, timeout=30, env=env)
    mine = [ln for ln in (p.stdout + p.stderr).splitlines() if "mxfront" in ln]
    assert p.returncode == 0 and not mine, p.stdout + p.stderr

    shipped = tmp_path / "shipped" / "mxfront.service"
    shipped.parent.mkdir()
    shutil.copy(UNIT, shipped)
    p = subprocess.run(["systemd-analyze", "verify", str(shipped)], capture_output=True,
                       text=True, timeout=30, env=env)
    other = [ln for ln in (p.stdout + p.stderr).splitlines()
             if "mxfront" in ln and "Command /usr/sbin/mxfront is not executable" not in ln]
    assert not other, p.stdout + p.stderr


# --------------------------------------------------------------------------
# the deploy hook

class Deploy:
    """A running mxfront with certs.d/ = default + mx.a.example (a plain
    directory, as made by hand), and the ACME clients' own directories."""

    def __init__(self, tmp_path, mxfront, backend):
        self.tmp = tmp_path
        self.certs = tmp_path / "certs.d"
        self.scratch = tmp_path / "scratch"
        self.known = []
        self.serial = 0x300
        self.default = self.make([DEFAULT_NAME])
        install_cert(self.certs, "default", self.default)
        self.a1 = self.make(["mx.a.example"])
        install_cert(self.certs, "mx.a.example", self.a1)
        # group: the one group that may read the keys (the hook gives them to it)
        self.mx = mxfront(backend, server={"group": NOGROUP}, tls={"certs_dir": str(self.certs)})
        self.pidfile = tmp_path / "mxfront.pid"
        self.pidfile.write_text(f"{self.mx.pid}\n")
        self.gid = NOBODY_ID

    def make(self, names, **kw):
        self.serial += 1
        c = make_cert(self.scratch, names, self.serial, **kw)
        self.known.append(c)
        return c

    def lineage(self, kind, cert, name):
        """Writes cert where the ACME client kind would have it; returns
        (environment, arguments) for the hook."""
        d = self.tmp / kind / name
        d.mkdir(parents=True, exist_ok=True)
        if kind == "certbot":  # live/NAME/*.pem are symlinks into archive/
            arch = self.tmp / kind / "archive" / name
            arch.mkdir(parents=True, exist_ok=True)
            n = len(list(arch.glob("fullchain*.pem"))) + 1
            (arch / f"fullchain{n}.pem").write_bytes(cert.fullchain)
            (arch / f"privkey{n}.pem").write_bytes(cert.privkey)
            os.chmod(arch / f"privkey{n}.pem", 0o600)
            for f in ("fullchain", "privkey"):
                link = d / f"{f}.pem"
                if link.is_symlink():
                    link.unlink()
                link.symlink_to(arch / f"{f}{n}.pem")
            return {"RENEWED_LINEAGE": str(d), "RENEWED_DOMAINS": " ".join(cert.names)}, []
        crt, key = d / "cert.crt", d / "cert.key"
        crt.write_bytes(cert.fullchain)
        key.write_bytes(cert.privkey)
        os.chmod(key, 0o600)
        if kind == "lego4":
            return {"LEGO_CERT_PATH": str(crt), "LEGO_CERT_KEY_PATH": str(key),
                    "LEGO_CERT_DOMAIN": name}, []
        if kind == "lego5":
            return {"LEGO_HOOK_CERT_PATH": str(crt), "LEGO_HOOK_CERT_KEY_PATH": str(key),
                    "LEGO_HOOK_CERT_NAME": name, "LEGO_HOOK_CERT_NAME_SANITIZED": name,
                    "LEGO_HOOK_CERT_DOMAINS": ",".join(cert.names)}, []
        if kind == "acme.sh-env":
            return {"CERT_FULLCHAIN_PATH": str(crt), "CERT_KEY_PATH": str(key),
                    "CERT_PATH": str(crt), "Le_Domain": name}, []
        if kind == "acme.sh-args":
            return {}, [name, str(crt), str(key)]
        raise ValueError(kind)

    def run_hook(self, env, args, shell="sh", reload="pidfile", hook=HOOK):
        e = {k: v for k, v in os.environ.items()
             if not k.startswith(("RENEWED_", "LEGO_", "CERT_", "MXFRONT_")) and k != "Le_Domain"}
        e.update(env)
        e.update({"MXFRONT_CERTS_DIR": str(self.certs), "MXFRONT_CONFIG": str(self.mx.conf),
                  "MXFRONT_BIN": procs.MXFRONT_BIN, "MXFRONT_GROUP": NOGROUP})
        if reload == "pidfile":
            e["MXFRONT_PIDFILE"] = str(self.pidfile)
        else:
            e["MXFRONT_RELOAD_CMD"] = f"kill -HUP {self.mx.pid}"
        e.setdefault("MXFRONT_ALLOW", str(self.tmp / "deploy-hook.allow"))
        return subprocess.run([shell, str(hook), *args], env=e, capture_output=True, text=True,
                              timeout=30, cwd=self.tmp)

    def deploy_ok(self, env, args, **kw):
        before = len(reload_lines(self.mx))
        p = self.run_hook(env, args, **kw)
        assert p.returncode == 0, f"hook failed ({p.returncode}):\n{p.stderr}"
        lines = wait_until(lambda: (lambda ls: ls if len(ls) > before else None)(
            reload_lines(self.mx)), 10, "the reload the hook asked for")
        assert "result=ok" in lines[before], lines[before]
        return p

    def served(self, sni, want):
        assert_served(self.mx.port, sni, want, self.known)

    def assert_installed(self, name, cert):
        d = self.certs / name
        assert d.is_symlink(), f"{d} should be a symlink to the installed copy"
        target = os.readlink(d)
        assert target.startswith(f".{name}.") and "/" not in target, target
        assert (d / "fullchain.pem").read_bytes() == cert.fullchain
        assert (d / "privkey.pem").read_bytes() == cert.privkey
        key = os.stat(d / "privkey.pem")
        assert stat.S_IMODE(key.st_mode) == 0o640 and key.st_gid == self.gid, \
            f"privkey.pem mode {stat.S_IMODE(key.st_mode):o} gid {key.st_gid}"
        assert stat.S_IMODE(os.stat(d / "fullchain.pem").st_mode) == 0o644

    def leftovers(self):
        """Entries of certs.d/ other than the live labels and their targets."""
        live = {p.name for p in self.certs.iterdir() if not p.name.startswith(".")}
        targets = {os.readlink(self.certs / n) for n in live if (self.certs / n).is_symlink()}
        return sorted(p.name for p in self.certs.iterdir()
                      if p.name not in live and p.name not in targets)


@pytest.fixture
def deploy(tmp_path, mxfront, fake_backend):
    return Deploy(tmp_path, mxfront, fake_backend())


class PairWatcher:
    """Scans certs.d/ as fast as it can while the hook runs, the way mxfront
    would load it, and records every moment at which no non-hidden entry held
    a valid pair (one of the given certificates, chain and its own key)."""

    def __init__(self, certs_dir, valid):
        self.dir = certs_dir
        self.valid = {(c.fullchain, c.privkey) for c in valid}
        self.scans = 0
        self.gaps = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _read(self, dfd, name):
        fd = os.open(name, os.O_RDONLY, dir_fd=dfd)
        try:
            return os.read(fd, 1 << 16)
        finally:
            os.close(fd)

    def _scan(self):
        found = False
        for entry in os.scandir(self.dir):
            if entry.name.startswith("."):
                continue
            # Both files through one directory descriptor: what one label
            # held at one moment, not two moments of a symlink being swapped.
            try:
                dfd = os.open(entry.path, os.O_RDONLY | os.O_DIRECTORY)
            except (FileNotFoundError, NotADirectoryError):
                return None  # renamed between listing and opening: proves nothing
            try:
                pair = (self._read(dfd, "fullchain.pem"), self._read(dfd, "privkey.pem"))
            except FileNotFoundError:
                if os.fstat(dfd).st_nlink == 0:
                    return None  # a replaced copy being deleted: proves nothing
                pair = None      # a label without its pair
            finally:
                os.close(dfd)
            found |= pair in self.valid
        return found

    def _run(self):
        while not self._stop.is_set():
            found = self._scan()
            if found is None:
                continue
            self.scans += 1
            if not found:
                self.gaps.append(sorted(os.listdir(self.dir)))

    def stop(self):
        self._stop.set()
        self._t.join(5)
        return self.gaps


@as_root
@pytest.mark.parametrize("shell", ["dash", "bash"])
def test_deploy_hook_from_certbot_replaces_a_plain_directory_without_a_gap(deploy, shell):
    if not shutil.which(shell):
        pytest.skip(f"{shell} not installed")
    deploy.served("mx.a.example", deploy.a1)
    a2 = deploy.make(["mx.a.example", "smtp.a.example"])
    env, args = deploy.lineage("certbot", a2, "mx.a.example")
    watcher = PairWatcher(deploy.certs, [deploy.a1, a2])
    try:
        p = deploy.deploy_ok(env, args, shell=shell)
    finally:
        gaps = watcher.stop()
    assert watcher.scans > 20, f"the watcher only looked {watcher.scans} times"
    assert not gaps, f"moments with no valid pair for mx.a.example: {gaps[:5]}"
    deploy.assert_installed("mx.a.example", a2)
    deploy.served("mx.a.example", a2)
    deploy.served("smtp.a.example", a2)
    deploy.served(None, deploy.default)
    assert deploy.leftovers() == [], deploy.leftovers()
    assert "mx.a.example" in p.stderr, p.stderr

    # Renewed again: now a symlink swap, also without a gap.
    a3 = deploy.make(["mx.a.example", "smtp.a.example"])
    env, args = deploy.lineage("certbot", a3, "mx.a.example")
    watcher = PairWatcher(deploy.certs, [a2, a3])
    try:
        deploy.deploy_ok(env, args, shell=shell)
    finally:
        gaps = watcher.stop()
    assert not gaps, f"moments with no valid pair for mx.a.example: {gaps[:5]}"
    deploy.assert_installed("mx.a.example", a3)
    deploy.served("mx.a.example", a3)
    assert deploy.leftovers() == [], deploy.leftovers()


@as_root
@pytest.mark.parametrize("kind", ["lego4", "lego5", "acme.sh-env", "acme.sh-args"])
def test_deploy_hook_from_lego_and_acme_sh_adds_then_renews_a_name(deploy, kind):
    deploy.served("mx.b.example", deploy.default)
    b1 = deploy.make(["mx.b.example"])
    env, args = deploy.lineage(kind, b1, "mx.b.example")
    deploy.deploy_ok(env, args, reload="cmd" if kind.startswith("acme") else "pidfile")
    deploy.assert_installed("mx.b.example", b1)
    deploy.served("mx.b.example", b1)
    deploy.served("mx.a.example", deploy.a1)

    b2 = deploy.make(["mx.b.example"])
    env, args = deploy.lineage(kind, b2, "mx.b.example")
    deploy.deploy_ok(env, args)
    deploy.assert_installed("mx.b.example", b2)
    deploy.served("mx.b.example", b2)
    assert deploy.leftovers() == [], deploy.leftovers()


def truncated(deploy):
    a2 = deploy.make(["mx.a.example"])
    return a2, {"fullchain": a2.fullchain[: len(a2.fullchain) // 2]}


def key_of_another(deploy):
    a2 = deploy.make(["mx.a.example"])
    return a2, {"privkey": deploy.make(["mx.a.example"]).privkey}


def other_names(deploy):
    return deploy.make(["mx.z.example"]), {}


def expired(deploy):
    return make_expired_cert(deploy.scratch, ["mx.a.example"], 0x3ff), {}


@as_root
@pytest.mark.parametrize("bad", [truncated, key_of_another, other_names, expired])
def test_deploy_hook_refuses_a_bad_certificate_and_changes_nothing(deploy, bad):
    cert, broken = bad(deploy)
    cert = dataclasses.replace(cert, **broken)
    env, args = deploy.lineage("certbot", cert, "mx.a.example")
    env["RENEWED_DOMAINS"] = "mx.a.example"
    reloads = len(reload_lines(deploy.mx))
    before = sorted(os.listdir(deploy.certs))
    p = deploy.run_hook(env, args)
    assert p.returncode != 0, f"hook accepted a bad certificate:\n{p.stderr}"
    assert "nothing changed" in p.stderr, p.stderr
    assert sorted(os.listdir(deploy.certs)) == before
    assert (deploy.certs / "mx.a.example" / "fullchain.pem").read_bytes() == deploy.a1.fullchain
    assert (deploy.certs / "mx.a.example" / "privkey.pem").read_bytes() == deploy.a1.privkey
    assert len(reload_lines(deploy.mx)) == reloads, "the hook reloaded mxfront anyway"
    deploy.served("mx.a.example", deploy.a1)


@as_root
def test_deploy_hook_undoes_a_swap_that_mxfront_t_rejects(deploy):
    """A renewed default certificate that no longer serves the host name
    passes the pair check, but `mxfront -t` then finds no default: the old
    directory goes back and mxfront is not reloaded."""
    bad_default = deploy.make(["mx.other.example"])
    env, args = deploy.lineage("acme.sh-args", bad_default, "default")
    reloads = len(reload_lines(deploy.mx))
    p = deploy.run_hook(env, args)
    assert p.returncode != 0, p.stderr
    assert "old one is back" in p.stderr and DEFAULT_NAME in p.stderr, p.stderr
    d = deploy.certs / "default"
    assert (d / "fullchain.pem").read_bytes() == deploy.default.fullchain
    assert (d / "privkey.pem").read_bytes() == deploy.default.privkey
    assert len(reload_lines(deploy.mx)) == reloads
    assert deploy.leftovers() == [], deploy.leftovers()
    p = run_mxfront("-t", "-c", str(deploy.mx.conf))
    assert p.returncode == 0, p.stderr
    deploy.served(None, deploy.default)


@as_root
def test_deploy_hook_installs_despite_another_broken_certificate(deploy):
    """A broken directory of some other name must not block renewals: mxfront
    skips it, the hook installs and reloads (and says what is wrong)."""
    install_cert(deploy.certs, "broken", deploy.make(["mx.x.example"]), fullchain=b"garbage\n")
    b1 = deploy.make(["mx.b.example"])
    env, args = deploy.lineage("lego4", b1, "mx.b.example")
    p = deploy.deploy_ok(env, args)
    assert "/broken/fullchain.pem" in p.stderr, p.stderr
    deploy.served("mx.b.example", b1)


@as_root
def test_deploy_hook_with_an_already_broken_config_installs_but_does_not_reload(deploy):
    """A configuration typo made earlier must not hold a good renewal back
    (the running mxfront keeps its old configuration anyway), but reloading
    over it would only fail: the certificate is installed, no SIGHUP, exit 1."""
    good = deploy.mx.conf.read_text()
    deploy.mx.conf.write_text(good.replace("[backend]", "[backend]\nadress = 1"))
    b1 = deploy.make(["mx.b.example"])
    env, args = deploy.lineage("lego5", b1, "mx.b.example")
    reloads = len(reload_lines(deploy.mx))
    p = deploy.run_hook(env, args)
    assert p.returncode != 0 and "not reloaded" in p.stderr, p.stderr
    assert "adress" in p.stderr, p.stderr
    deploy.assert_installed("mx.b.example", b1)
    assert len(reload_lines(deploy.mx)) == reloads, "the hook reloaded mxfront anyway"
    deploy.mx.conf.write_text(good)
    hup_ok(deploy.mx)
    deploy.served("mx.b.example", b1)


def served_with(port, sni, sigalgs):
    """The DER an openssl client that accepts only SIGALGS gets for SNI."""
    import tlsclients
    return tlsclients.openssl(port, sni=sni, extra=["-sigalgs", sigalgs]).der


RSA_SIGALGS = "rsa_pss_rsae_sha256:RSA+SHA256"
ECDSA_SIGALGS = "ECDSA+SHA256"


@as_root
@pytest.mark.parametrize("kind", ["lego4", "acme.sh-env"])
def test_deploy_hook_keeps_an_rsa_and_an_ecdsa_certificate_of_one_domain(deploy, kind):
    """acme.sh and lego name both certificates of a domain after the domain:
    the second must not replace the first, on issue or on any renewal."""
    ec1 = deploy.make(["mx.c.example"])
    deploy.deploy_ok(*deploy.lineage(kind, ec1, "mx.c.example"))
    rsa1 = deploy.make(["mx.c.example"], rsa=True)
    p = deploy.deploy_ok(*deploy.lineage(kind, rsa1, "mx.c.example"))
    assert "mx.c.example.rsa" in p.stderr, p.stderr
    deploy.assert_installed("mx.c.example", ec1)
    deploy.assert_installed("mx.c.example.rsa", rsa1)
    for round_ in range(2):
        ec2 = deploy.make(["mx.c.example"])
        deploy.deploy_ok(*deploy.lineage(kind, ec2, "mx.c.example"))
        rsa2 = deploy.make(["mx.c.example"], rsa=True)
        deploy.deploy_ok(*deploy.lineage(kind, rsa2, "mx.c.example"))
        deploy.assert_installed("mx.c.example", ec2)
        deploy.assert_installed("mx.c.example.rsa", rsa2)
        assert served_with(deploy.mx.port, "mx.c.example", ECDSA_SIGALGS) == ec2.der
        assert served_with(deploy.mx.port, "mx.c.example", RSA_SIGALGS) == rsa2.der
    assert deploy.leftovers() == [], deploy.leftovers()


@as_root
def test_deploy_hook_as_a_global_certbot_hook_needs_an_allow_list(deploy):
    """Linked into renewal-hooks/deploy/, the hook sees every certificate of
    the host: without an allow-list it installs none; with one, only those
    it names (by lineage or domain), and skips the others quietly."""
    hooks = deploy.tmp / "letsencrypt" / "renewal-hooks" / "deploy"
    hooks.mkdir(parents=True)
    (hooks / "mxfront").symlink_to(HOOK)
    web = deploy.make(["www.example"])
    env, args = deploy.lineage("certbot", web, "www.example")
    p = deploy.run_hook(env, args, hook=hooks / "mxfront")
    assert p.returncode == 1 and "allow-list" in p.stderr, (p.returncode, p.stderr)
    assert not (deploy.certs / "www.example").exists()

    (deploy.tmp / "deploy-hook.allow").write_text("# for mxfront\nmx.b.example\n\n")
    p = deploy.run_hook(env, args, hook=hooks / "mxfront")
    assert p.returncode == 0 and "skipping www.example" in p.stderr, (p.returncode, p.stderr)
    assert not (deploy.certs / "www.example").exists()
    b1 = deploy.make(["mx.b.example"])
    env, args = deploy.lineage("certbot", b1, "mx.b.example")
    deploy.deploy_ok(env, args, hook=hooks / "mxfront")
    deploy.assert_installed("mx.b.example", b1)
    # an allow-list also binds the hook given to one certificate alone
    env, args = deploy.lineage("lego5", web, "www.example")
    p = deploy.run_hook(env, args)
    assert p.returncode == 0 and "skipping" in p.stderr, p.stderr
    assert not (deploy.certs / "www.example").exists()


@as_root
def test_deploy_hook_warns_loudly_when_a_renewal_changes_the_key(deploy):
    """DANE: a name whose key changes needs its new TLSA 3 1 1 record first.
    A renewal with the same key says nothing; one with a new key says so,
    with the new record and how to keep the key next time."""
    same = deploy.make(["mx.a.example"], reuse_key=deploy.a1.privkey)
    p = deploy.deploy_ok(*deploy.lineage("certbot", same, "mx.a.example"))
    assert "DANE" not in p.stderr, p.stderr
    fresh = deploy.make(["mx.a.example"])
    p = deploy.deploy_ok(*deploy.lineage("certbot", fresh, "mx.a.example"))
    assert "DANE" in p.stderr and "NEW KEY" in p.stderr, p.stderr
    assert "--reuse-key" in p.stderr and "lego" in p.stderr, p.stderr
    tlsa = procs.run_mxfront("certs", "--tlsa", "-c", str(deploy.mx.conf)).stdout
    rec = [ln.split(" ;")[0] for ln in tlsa.splitlines() if ln.startswith("_25._tcp.mx.a.example.")]
    assert len(rec) == 1 and rec[0] in p.stderr, (rec, p.stderr)
    deploy.served("mx.a.example", fresh)
