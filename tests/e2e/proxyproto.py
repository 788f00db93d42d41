"""PROXY protocol headers (HAProxy's doc/proxy-protocol.txt) as a load
balancer sends them, a raw client that sends one before talking SMTP, and
a reader that tells a FIN from a reset, for the tests of mxfront's proxy=
listeners (test_proxy_protocol.py) and of its closes (test_clean_close.py)."""
import ipaddress
import socket
import struct

from smtpclient import SmtpClient

V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def v1(src, sport, dst="192.0.2.25", dport=25):
    """A v1 line: PROXY TCP4|TCP6 SRC DST SPORT DPORT CRLF."""
    fam = "TCP6" if ":" in src else "TCP4"
    return f"PROXY {fam} {src} {dst} {sport} {dport}\r\n".encode()


def v2(src, sport, dst=None, dport=25, tlvs=b""):
    """A v2 PROXY command for a TCP client at SRC:SPORT."""
    a = ipaddress.ip_address(src)
    if dst is None:
        dst = "2001:db8::25" if a.version == 6 else "192.0.2.25"
    d = ipaddress.ip_address(dst)
    block = a.packed + d.packed + struct.pack("!HH", sport, dport) + tlvs
    fam = 0x21 if a.version == 6 else 0x11
    return V2_SIG + bytes([0x21, fam]) + struct.pack("!H", len(block)) + block


def v2_local():
    """A v2 LOCAL command: the proxy's own connection (health checks)."""
    return V2_SIG + b"\x20\x00\x00\x00"


def client(port, header, source=None, timeout=10.0):
    """Connects, sends HEADER (bytes, may be followed by more) and returns
    the raw client, nothing read yet."""
    c = SmtpClient("127.0.0.1", port, source=source, timeout=timeout)
    c.send(header)
    return c


def read_to_eof(sock, timeout=5.0):
    """Reads a raw socket until EOF: (bytes, "eof" | "reset" | "timeout"),
    which tells a clean close (FIN) from a reset (test_clean_close.py too)."""
    data = b""
    sock.settimeout(timeout)
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return data, "eof"
            data += chunk
    except ConnectionResetError:
        return data, "reset"
    except socket.timeout:
        return data, "timeout"
