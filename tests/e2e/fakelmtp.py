"""A scripted fake LMTP backend (FakeLmtp) on 127.0.0.1 that records every
byte mxfront sends it; its script may change while it runs (a backend that
heals), and at_eod="gate" holds the end-of-data replies until the test
releases them."""
import re
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

from waits import wait_until


@dataclass
class FakeConnection:
    received: bytearray = field(default_factory=bytearray)  # every byte, in order
    chunks: list = field(default_factory=list)              # the bytes of each recv()
    commands: list = field(default_factory=list)            # command lines (no DATA payload)
    messages: list = field(default_factory=list)            # complete DATA payloads (wire form)
    partial: bytearray = field(default_factory=bytearray)   # DATA bytes of an unfinished message
    eof: threading.Event = field(default_factory=threading.Event)  # peer closed or reset
    peer: tuple = None


class FakeLmtp:
    """A scripted LMTP server on 127.0.0.1:0 (one thread per connection).

    Script keywords:
      greeting      first line, or None to never greet
      capabilities  LHLO keywords after the name line
      after_lhlo    "ok" | "close" | "hang" | "garbage"
      mail_reply    reply to MAIL, or "close" to close the connection instead
      rcpt_replies  {address: reply}; others get rcpt_default
      data_reply    reply to DATA
      rset_reply    reply to RSET
      at_eod        "reply" | "hang" | "garbage" | "close" | "gate" (reply
                    once release() was called: got_dot is set when a final
                    dot arrives)
      eod_replies   replies, one per accepted recipient (the last one repeats)
      cut_in_data   None, or close the connection once that many bytes of a
                    message have arrived (before its end): a backend dying
                    mid-DATA
      cut_how       "close" (FIN) | "reset" (RST) for cut_in_data
    port: 0 for any free port, or a given one (e.g. one a test freed).
    The script keywords are read as each connection goes, so a test may
    change them on the running server (a backend that heals).
    Every connection is recorded (FakeConnection); lifetime is bounded."""

    def __init__(self, greeting="220 fake.backend LMTP ready",
                 capabilities=("PIPELINING", "ENHANCEDSTATUSCODES", "8BITMIME"),
                 after_lhlo="ok", mail_reply="250 2.1.0 Ok", rcpt_replies=None,
                 rcpt_default="250 2.1.5 Ok", data_reply="354 Send data",
                 at_eod="reply", eod_replies=None, xclient_reply="220 fake.backend ready",
                 rset_reply="250 2.0.0 Ok",
                 lifetime=60.0, cut_in_data=None, cut_how="close", port=0):
        self.greeting = greeting
        self.capabilities = list(capabilities)
        self.after_lhlo = after_lhlo
        self.mail_reply = mail_reply
        self.rcpt_replies = {k.lower(): v for k, v in (rcpt_replies or {}).items()}
        self.rcpt_default = rcpt_default
        self.data_reply = data_reply
        self.at_eod = at_eod
        self.eod_replies = eod_replies
        self.xclient_reply = xclient_reply
        self.rset_reply = rset_reply
        self.cut_in_data = cut_in_data
        self.cut_how = cut_how
        self.connections = []
        self.gate = threading.Event()      # at_eod="gate": set by release()
        self.got_dot = threading.Event()   # a final dot arrived
        self._stop = threading.Event()
        self._deadline = time.monotonic() + lifetime
        self._lock = threading.Lock()
        self._threads = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(16)
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        t = threading.Thread(target=self._accept_loop, daemon=True)
        t.start()
        self._threads.append(t)

    def _running(self):
        return not self._stop.is_set() and time.monotonic() < self._deadline

    def _accept_loop(self):
        while self._running():
            try:
                conn, peer = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            rec = FakeConnection(peer=peer)
            with self._lock:
                self.connections.append(rec)
            t = threading.Thread(target=self._serve, args=(conn, rec), daemon=True)
            t.start()
            self._threads.append(t)

    @property
    def used(self):
        """The connections that carried more than LHLO: mxfront's pool opens
        one per worker at start only to learn the capabilities."""
        return [c for c in self.connections
                if any(cmd.split(" ", 1)[0].upper() != "LHLO" for cmd in c.commands)]

    def wait_connections(self, n=1, timeout=5.0):
        return wait_until(lambda: self.connections if len(self.connections) >= n else None,
                          timeout, f"{n} connection(s) to the fake backend")

    def _serve(self, conn, rec):
        conn.settimeout(0.05)
        buf = b""
        mode = "command"          # command | data | hang
        accepted = []
        in_tx = False             # MAIL accepted, transaction open

        def send(line):
            try:
                conn.sendall(line.encode() + b"\r\n")
            except OSError:
                pass

        try:
            if self.greeting is None:
                mode = "hang"
            else:
                send(self.greeting)
            while self._running():
                try:
                    chunk = conn.recv(65536)
                except socket.timeout:
                    continue
                except OSError:
                    rec.eof.set()
                    return
                if not chunk:
                    rec.eof.set()
                    return
                rec.received += chunk
                rec.chunks.append(bytes(chunk))
                if mode == "hang":
                    continue
                buf += chunk
                while mode != "hang":
                    if mode == "data":
                        data = bytes(rec.partial) + buf
                        buf = b""
                        if data.startswith(b".\r\n"):     # empty message
                            cut = 3
                        else:
                            end = data.find(b"\r\n.\r\n")
                            if end < 0:
                                rec.partial = bytearray(data)
                                if self.cut_in_data is not None and \
                                        len(data) >= self.cut_in_data:
                                    if self.cut_how == "reset":
                                        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                                        struct.pack("ii", 1, 0))
                                    return
                                break
                            cut = end + 5
                        rec.messages.append(bytes(data[:cut]))
                        self.got_dot.set()
                        rec.partial = bytearray()
                        buf = data[cut:]
                        mode = "command"
                        in_tx = False
                        if self.at_eod == "hang":
                            mode = "hang"
                            break
                        if self.at_eod == "gate":
                            self.gate.wait(max(0.0, self._deadline - time.monotonic()))
                        if self.at_eod == "garbage":
                            send("HELLO?")
                        elif self.at_eod == "close":
                            return
                        else:
                            replies = self.eod_replies or []
                            for i, rcpt in enumerate(accepted):
                                r = replies[min(i, len(replies) - 1)] if replies else \
                                    f"250 2.0.0 <{rcpt}> Ok delivered"
                                send(r)
                        accepted = []
                        continue
                    if b"\r\n" not in buf:
                        break
                    line, buf = buf.split(b"\r\n", 1)
                    text = line.decode("utf-8", "replace")
                    rec.commands.append(text)
                    verb = text.split(" ", 1)[0].upper()
                    if verb == "LHLO":
                        if self.after_lhlo == "close":
                            return
                        if self.after_lhlo == "hang":
                            mode = "hang"
                            break
                        if self.after_lhlo == "garbage":
                            send("HELLO?")
                            continue
                        caps = ["fake.backend", *self.capabilities]
                        for i, cap in enumerate(caps):
                            send(f"250{'-' if i < len(caps) - 1 else ' '}{cap}")
                    elif verb == "XCLIENT":
                        send(self.xclient_reply)
                    elif verb == "MAIL":
                        accepted = []
                        if self.mail_reply == "close":
                            return
                        in_tx = self.mail_reply.startswith("2")
                        send(self.mail_reply)
                    elif verb == "RCPT":
                        m = re.search(r"<([^>]*)>", text)
                        addr = m.group(1).lower() if m else ""
                        r = self.rcpt_replies.get(addr, self.rcpt_default)
                        if not in_tx:
                            r = "503 5.5.1 MAIL needed first"
                        if r.startswith("2"):
                            accepted.append(addr)
                        send(r)
                    elif verb == "DATA":
                        if not accepted:
                            send("503 5.5.1 No valid recipients")
                        else:
                            send(self.data_reply)
                            mode = "data"
                    elif verb == "RSET":
                        accepted = []
                        in_tx = False
                        send(self.rset_reply)
                    elif verb == "NOOP":
                        send("250 2.0.0 Ok")
                    elif verb == "QUIT":
                        send("221 2.0.0 Bye")
                        return
                    else:
                        send("500 5.5.2 Unknown command")
        finally:
            try:
                conn.close()
            except OSError:
                pass

    def release(self):
        """at_eod="gate": the end-of-data replies held so far, and all
        later ones, go out."""
        self.gate.set()

    def stop(self):
        self._stop.set()
        self.gate.set()
        try:
            self.sock.close()
        except OSError:
            pass
        for t in self._threads:
            t.join(timeout=2.0)
