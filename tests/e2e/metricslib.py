"""Reading what mxfront tells an operator: its [metrics] HTTP listener
(/metrics in the Prometheus text format, /healthz) and its control socket
(mxfront health / reload / stats senders). Used by the test_metrics_*,
test_health, test_senders and test_systemd files."""
import re
import subprocess
import urllib.error
import urllib.request

import procs

METRICS_ON = {"listen": "127.0.0.1:0"}
SAMPLE_RX = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
LABEL_RX = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def metrics_address(m):
    """host:port of a running mxfront's [metrics] listener, from its start
    line (listen = 127.0.0.1:0 picks a free port)."""
    match = m.wait_log(r"\bevent=start\b.* metrics=(\S+)")[0]
    return match.group(1)


def http_get(address, path, timeout=10.0):
    """(status, body text) of GET http://address/path."""
    try:
        with urllib.request.urlopen(f"http://{address}{path}", timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def parse(text):
    """{(name, ((label, value), ...)): float} of an exposition; checks that
    every sample belongs to a family announced by # TYPE."""
    samples, types = {}, {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            types[name] = kind
            continue
        if not line or line.startswith("#"):
            continue
        m = SAMPLE_RX.match(line)
        assert m, f"not a sample line: {line!r}"
        name, labels, value = m.groups()
        family = re.sub(r"_(bucket|sum|count)$", "", name) if name not in types else name
        assert family in types, f"{name} has no # TYPE line"
        key = (name, tuple(sorted(LABEL_RX.findall(labels or ""))))
        assert key not in samples, f"series given twice: {line!r}"
        samples[key] = float(value)
    return samples


class Scrape:
    """One scrape; s.get(metric, label=value, ...) is the sample (0 when the
    series is absent: counters that never moved are not all listed)."""

    def __init__(self, address):
        status, self.text = http_get(address, "/metrics")
        assert status == 200, f"/metrics: {status} {self.text[:500]}"
        self.samples = parse(self.text)

    def get(self, metric, **labels):
        return self.samples.get((metric, tuple(sorted(labels.items()))), 0.0)

    def series(self, name):
        """{labels dict as a tuple: value} of every series of name."""
        return {k[1]: v for k, v in self.samples.items() if k[0] == name}

    def delta(self, before, metric, **labels):
        return self.get(metric, **labels) - before.get(metric, **labels)


def mxfront_cli(*args, timeout=30):
    """Runs mxfront ARGS to completion; returns the CompletedProcess."""
    return procs.run_mxfront(*args, timeout=timeout)


def wait_disconnects(m, n, timeout=10.0):
    """Waits until the log has n event=disconnect lines."""
    return m.wait_log(r"\bevent=disconnect\b", timeout=timeout, count=n)
