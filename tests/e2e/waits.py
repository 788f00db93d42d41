"""Waiting and ports for the end-to-end tests. Nothing here sleeps a fixed
time: every wait polls a condition against a deadline."""
import socket
import time

POLL = 0.02           # seconds between two looks at a condition


def wait_until(cond, timeout=5.0, what="condition"):
    """Polls cond() every POLL seconds until it returns a true value, which is
    returned; raises AssertionError after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(POLL)


def refuses(port, host="127.0.0.1"):
    """True once nothing listens on port: connecting is refused. A reset
    means the listening socket is being closed under the attempt (SYNs that
    hit a closing listener are answered with RST), so it counts as "not
    yet": callers poll with wait_until until the port refuses."""
    try:
        socket.create_connection((host, port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    except ConnectionResetError:
        return False
    return False


def free_port(host="127.0.0.1"):
    """A TCP port that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_accepts(host, port):
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def closed_port_address():
    """host:port where nothing listens (a port just released)."""
    return f"127.0.0.1:{free_port()}"
