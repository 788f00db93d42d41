"""A raw SMTP client for the end-to-end tests: it sends exactly the bytes it
is given and parses replies (Reply), plus the usual openings (smtp_session,
open_transaction) and one whole delivery that records every reply
(attempt_delivery)."""
import re
import socket
import time
from dataclasses import dataclass, field


class ConnectionClosed(Exception):
    pass


@dataclass
class Reply:
    code: int
    lines: list  # full reply lines, without CRLF

    @property
    def first(self):
        return self.lines[0]

    @property
    def text(self):
        """The first line after the code and separator."""
        return self.lines[0][4:]

    @property
    def enhanced(self):
        """The enhanced status code of the first line (RFC 2034), or None."""
        m = re.match(r"\d{3}[ -]([245]\.\d{1,3}\.\d{1,3})(?: |$)", self.lines[0])
        return m.group(1) if m else None

    @property
    def keywords(self):
        """EHLO keywords: every line but the first, upper-cased."""
        return [ln[4:].upper() for ln in self.lines[1:]]

    def __str__(self):
        return " | ".join(self.lines)


class SmtpClient:
    """A line-level SMTP client that sends exactly the bytes it is given."""

    def __init__(self, host, port, source=None, timeout=10.0):
        self.sock = socket.create_connection(
            (host, port), timeout=timeout,
            source_address=(source, 0) if source else None)
        self.buf = b""
        self.closed = False

    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            self.closed = True
            raise ConnectionClosed("server closed the connection")
        self.buf += chunk

    def read_line(self):
        while b"\r\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line.decode("utf-8", "replace")

    def read_reply(self):
        lines = []
        while True:
            line = self.read_line()
            lines.append(line)
            if not re.match(r"\d{3}[ -]|\d{3}$", line):
                raise AssertionError(f"malformed reply line {line!r} (so far {lines})")
            if len(line) == 3 or line[3] == " ":
                return Reply(int(line[:3]), lines)

    def cmd(self, line):
        """Sends one command line (CRLF appended) and reads its reply."""
        self.send(line.encode() + b"\r\n" if isinstance(line, str) else line + b"\r\n")
        return self.read_reply()

    def wait_closed(self, timeout=5.0):
        """True once the server has closed the connection (EOF or reset)
        within timeout; data that arrives meanwhile is kept in buf."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                break
            except OSError:
                self.closed = True
                return True
            if not chunk:
                self.closed = True
                return True
            self.buf += chunk
        return False

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def smtp_session(server, helo="client.example", source=None, ehlo=True):
    """Connects, checks the greeting, sends EHLO (or HELO); returns the
    client and the EHLO/HELO reply."""
    c = SmtpClient("127.0.0.1", server.port, source=source)
    greeting = c.read_reply()
    assert greeting.code == 220, greeting
    hello = c.cmd(f"{'EHLO' if ehlo else 'HELO'} {helo}")
    return c, hello


def open_transaction(target, rcpts="alice@dest.example", sender="sender@client.example",
                     helo="client.example", source=None):
    """MAIL FROM:<sender>, RCPT TO for each of rcpts (one address or a list)
    and DATA, asserting 250 to each and 354 to DATA; returns the client, ready
    for the message. target is a server (connected to, greeted, EHLO helo
    from source) or an SmtpClient already past EHLO (then helo and source are
    unused). A test that checks one of those replies on purpose writes the
    commands out instead."""
    if isinstance(target, SmtpClient):
        c = target
    else:
        c, hello = smtp_session(target, helo=helo, source=source)
        assert hello.code == 250, hello
    try:
        r = c.cmd(f"MAIL FROM:<{sender}>")
        assert r.code == 250, f"MAIL: {r}"
        for rcpt in [rcpts] if isinstance(rcpts, str) else rcpts:
            r = c.cmd(f"RCPT TO:<{rcpt}>")
            assert r.code == 250, f"RCPT TO:<{rcpt}>: {r}"
        r = c.cmd("DATA")
        assert r.code == 354, f"DATA: {r}"
    except BaseException:
        if c is not target:
            c.close()
        raise
    return c


@dataclass
class Attempt:
    """What happened to one attempted delivery: (stage, Reply or None) in
    order, None meaning the server had closed the connection."""
    steps: list = field(default_factory=list)

    @property
    def final(self):
        """The reply that decided the outcome: the first 4xx/5xx reply to the
        greeting, EHLO, MAIL or DATA, the end-of-data reply, or the last RCPT
        reply when every recipient was refused. None if the server closed
        the connection without saying why."""
        rcpt_replies = []
        for stage, r in self.steps:
            if r is None:
                return None
            if stage == "rcpt":
                rcpt_replies.append(r)
            elif r.code >= 400 or stage == "eod":
                return r
        if rcpt_replies and all(r.code >= 400 for r in rcpt_replies):
            return rcpt_replies[-1]
        return None

    @property
    def any_250_for_message(self):
        return any(stage == "eod" and r is not None and r.code // 100 == 2
                   for stage, r in self.steps)

    def __str__(self):
        return "; ".join(f"{stage}: {r}" for stage, r in self.steps)


def attempt_delivery(port, rcpts, body, sender="sender@client.example",
                     helo="client.example", source=None):
    """Runs EHLO, MAIL, RCPT..., DATA and the message, stopping at the first
    step that makes going on pointless, and records every reply."""
    a = Attempt()
    # The client waits longer than any timeout the tests configure, so that a
    # slow mxfront shows up as a measured delay, not as a client timeout.
    c = SmtpClient("127.0.0.1", port, source=source, timeout=15.0)
    try:
        def step(stage, line=None, raw=None):
            try:
                if raw is not None:
                    c.send(raw)
                    r = c.read_reply()
                elif line is None:
                    r = c.read_reply()
                else:
                    r = c.cmd(line)
            except (ConnectionClosed, ConnectionResetError, BrokenPipeError):
                r = None
            except socket.timeout:
                a.steps.append((stage, None))
                raise AssertionError(f"no reply to {stage} within 15 s: {a}") from None
            a.steps.append((stage, r))
            return r

        r = step("greeting")
        if r is None or r.code != 220:
            return a
        r = step("ehlo", f"EHLO {helo}")
        if r is None or r.code != 250:
            return a
        r = step("mail", f"MAIL FROM:<{sender}>")
        if r is None or r.code != 250:
            return a
        accepted = 0
        for rcpt in rcpts:
            r = step("rcpt", f"RCPT TO:<{rcpt}>")
            if r is None:
                return a
            accepted += r.code // 100 == 2
        if not accepted:
            return a
        r = step("data", "DATA")
        if r is None or r.code != 354:
            return a
        step("eod", raw=dot_stuff(body) + b".\r\n")
        try:
            c.cmd("QUIT")
        except (ConnectionClosed, OSError):
            pass
        return a
    finally:
        c.close()


def dot_stuff(body):
    """Dot-stuffs a CRLF message for the wire (RFC 5321 4.5.2); the result
    ends with CRLF, ready for the final '.\\r\\n'."""
    if not body.endswith(b"\r\n"):
        body += b"\r\n"
    lines = body.split(b"\r\n")[:-1]
    return b"".join((b"." + ln if ln.startswith(b".") else ln) + b"\r\n" for ln in lines)
