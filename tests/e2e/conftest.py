"""Fixtures for the mxfront end-to-end tests.

dovecot       a private Dovecot LMTP (users alice, bob, carol) in the test's tmp_path
              (its lmtp service settings by indirect parametrization)
mxfront       factory: mxfront(target, server={...}, backend={...}, timeouts={...})
              (target: the dovecot or a fake_backend fixture value, or "host:port";
              nofile=N or (soft, hard): the daemon's RLIMIT_NOFILE)
fake_backend  factory: fake_backend(**script), a scripted LMTP server (see fakelmtp.FakeLmtp)
pki           (session) generated CA, intermediate and leaf certificates (see certs.Pki)

Logs of everything a test started are attached to the report of a failed test
(and of a failed teardown, e.g. a sanitizer report or a bad exit status)."""
import os
import signal
import subprocess
import time

import pytest

import dovecotlmtp
import fakelmtp
import procs

DOVECOT_GRACE = 3.0


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)
    if rep.failed:
        for title, read in getattr(item, "e2e_logs", []):
            try:
                text = read()
            except Exception as e:  # a log must never hide the real failure
                text = f"(cannot read: {e})"
            rep.sections.append((title, text or "(empty)"))


def _attach_log(request, title, read):
    if not hasattr(request.node, "e2e_logs"):
        request.node.e2e_logs = []
    request.node.e2e_logs.append((title, read))


def pytest_configure(config):
    if not os.path.exists(procs.MXFRONT_BIN):
        raise pytest.UsageError(f"mxfront binary not found: {procs.MXFRONT_BIN} "
                                "(build it, or set MXFRONT_BIN)")


@pytest.fixture(scope="session")
def _dovecot_reaper():
    """Dovecot's master needs about a second to stop after SIGTERM (and
    sometimes ~5 s more, when an lmtp child was still starting). Each test
    sends SIGTERM at its teardown; the waiting happens once, at the end of the
    session, so those seconds overlap instead of adding up. A Dovecot still
    running DOVECOT_GRACE seconds after its SIGTERM gets SIGKILL, sent to the
    process group it leads (its children)."""
    pending = []
    yield pending
    for dv in pending:
        left = dv.terminated_at + DOVECOT_GRACE - time.monotonic()
        try:
            dv.proc.wait(timeout=max(0.0, left))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(dv.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            dv.proc.wait(timeout=procs.STOP_DEADLINE)
        dv.cleanup()


@pytest.fixture
def dovecot(tmp_path, request, _dovecot_reaper):
    """Settings of its `service lmtp` may be given by indirect
    parametrization: parametrize("dovecot", [dovecotlmtp.STOCK_LMTP_LIMITS], indirect=True)."""
    dv = dovecotlmtp.Dovecot(tmp_path / "dovecot", lmtp_service=getattr(request, "param", None))
    _attach_log(request, "dovecot log", dv.log)
    yield dv
    dv.terminate()
    _dovecot_reaper.append(dv)


@pytest.fixture
def mxfront(tmp_path, request):
    """Factory: starts mxfront with a config relaying to target (an object
    with .address, or an address string), plus per-section overrides. At
    teardown each daemon gets SIGTERM and must exit 0 with no sanitizer
    report."""
    started = []

    def start(target, nofile=None, **overrides):
        address = target if isinstance(target, str) else target.address
        workdir = tmp_path / f"mxfront{len(started) or ''}"
        m = procs.Mxfront(workdir, procs.mxfront_config(address, overrides), nofile=nofile)
        started.append(m)
        _attach_log(request, f"mxfront log ({workdir.name}, pid {m.pid})", m.log)
        return m

    yield start
    problems = []
    for m in started:
        code = m.stop()
        if m.killed:
            problems.append(f"mxfront pid {m.pid} ignored SIGTERM for {procs.STOP_DEADLINE}s")
        elif code != 0:
            problems.append(f"mxfront pid {m.pid} exited with {code} after SIGTERM")
        found = procs.sanitizer_report(m.log())
        if found:
            problems.append(f"mxfront pid {m.pid}: sanitizer report {found}")
    assert not problems, "; ".join(problems)


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    import certs
    return certs.Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def fake_backend(request):
    made = []

    def make(**script):
        fb = fakelmtp.FakeLmtp(**script)
        made.append(fb)

        def describe(fb=fb):
            return "\n".join(f"connection {i} from {c.peer}: eof={c.eof.is_set()}\n"
                             f"  received: {bytes(c.received)[:4000]!r}"
                             for i, c in enumerate(fb.connections)) or "(no connection)"
        _attach_log(request, f"fake backend {fb.address}", describe)
        return fb

    yield make
    for fb in made:
        fb.stop()
