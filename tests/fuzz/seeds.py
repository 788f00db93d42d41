#!/usr/bin/env python3
"""Writes the hand-made seed inputs into tests/fuzz/corpus/<target>/seed-*.

Run from anywhere; it replaces the files named seed-* (and only those). Input layouts are
described in tests/fuzz/README. The fuzzer-found inputs (named by their SHA-1)
are added next to these by `tests/fuzz/run --merge`."""
import os

HERE = os.path.dirname(os.path.abspath(__file__))
MARK = b"@@@\n"  # fuzz_session: client bytes (ending in LF) | MARK | control bytes


for target in ("fuzz_command", "fuzz_reply", "fuzz_session", "fuzz_proxy"):
    d = os.path.join(HERE, "corpus", target)
    for old in os.listdir(d) if os.path.isdir(d) else []:
        if old.startswith("seed-"):
            os.remove(os.path.join(d, old))


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


# ---- fuzz_command: limit byte, read-size byte, client bytes ----
C = "fuzz_command"
commands = [
    b"EHLO mx.example.com\r\nHELO [192.0.2.1]\r\nEHLO [IPv6:2001:db8::1]\r\n",
    b"MAIL FROM:<a@example.com> SIZE=1000 BODY=8BITMIME\r\nRCPT TO:<b@example.org>\r\n",
    b"MAIL FROM:<> RET=HDRS ENVID=abc+2B+3Dx\r\nRCPT TO:<Postmaster> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b@example.org\r\n",
    b"MAIL FROM:<@a.example,@b.example:user@c.example>\r\nRCPT TO:<\"john doe\"@example.com>\r\n",
    b"MAIL FROM:<\"a\\\"b\\\\c\"@example.com>\r\nRCPT TO:<\"x>y\"@example.com>\r\n",
    "MAIL FROM:<jösé@exämple.com> SMTPUTF8\r\nRCPT TO:<用户@例子.广告>\r\n".encode(),
    b"MAIL FROM: <a@b.example>\r\nmail from:<a@b>   \r\nRCPT TO:<a@[<]> A=B C D=E F=G H=I J=K L=M N=O P=Q\r\n",
    b"DATA\r\nRSET\r\nNOOP\r\nQUIT\r\nVRFY x\r\nEXPN y\r\nHELP\r\nSTARTTLS\r\nBDAT 10 LAST\r\nAUTH PLAIN\r\nXYZZY\r\n",
    b"MAIL FROM:<a@b\x00c>\r\nRCPT TO:<a@b>\rx\r\nRCPT TO:<a@b>\n\n\r\n",
    b"\xc3\x28 \xe2\x82 \xf0\x9f\x98\x80 \xed\xa0\x80 \xc0\xaf\r\nMAIL FROM:<\xff@x>\r\n",
    b"MAIL FROM:<" + b"a" * 64 + b"@" + (b"b" * 63 + b".") * 4 + b"c>\r\n",
    b"RCPT TO:<a@" + b"x" * 600 + b">\r\n" + b"y" * 1200 + b"\n" + b"z" * 511 + b"\r\n",
    b"mx.example.com.",
    b"MX.Example.COM",
    b"*.example.com",
    b"a-.example.com",
]
for i, c in enumerate(commands):
    write(C, "cmd%02d" % i, bytes([i * 17 % 256, i * 37 % 256]) + c)
write(C, "limit512-oneread", b"\x00\x00" + b"MAIL FROM:<" + b"a" * 496 + b">\r\n")
write(C, "limit1000-bytewise", b"\xff\x01" + b"x" * 998 + b"\r\n" + b"y" * 999 + b"\r\n")

# ---- fuzz_reply: backend bytes ----
R = "fuzz_reply"
replies = {
    "lhlo": b"220 lmtp.example Dovecot ready.\r\n250-lmtp.example\r\n250-8BITMIME\r\n"
            b"250-CHUNKING\r\n250-ENHANCEDSTATUSCODES\r\n250-PIPELINING\r\n"
            b"250-SIZE 10000000\r\n250-SMTPUTF8\r\n250-DSN\r\n250 XCLIENT ADDR PORT HELO\r\n",
    "after-dot": b"250 2.0.0 <a@x> Ok: saved\r\n451 4.3.0 <b@x> Temporary failure\r\n"
                 b"550 5.1.1 <c@x> User doesn't exist\r\n452 4.2.2 <d@x> Quota exceeded\r\n",
    "multiline-mixed": b"250-first\r\n251 changed code\r\n250-\r\n250\r\n250 \r\n",
    "enhanced": b"250 2.1.5\r\n250 2.1.5x\r\n550 5.1000.1 x\r\n550 5.1.1000 x\r\n"
                b"451 5.1.1 wrong class\r\n354 3.0.0 Go\r\n250 2..0 x\r\n250 2.0.\r\n",
    "garbage": b"hello\r\n25\r\n600 x\r\n199 x\r\n250x\r\n250\t\r\n250 a\x00b\r\n250 a\rb\r\n"
               b"250 bare lf\n\xff\xfe\r\n",
    "long": b"250-" + b"x" * 2100 + b"\r\n250 " + b"y" * 600 + b"\r\n",
    "three-xx": b"354 go ahead\r\n",
}
for name, data in replies.items():
    write(R, name, data)

# ---- fuzz_session: options byte, client bytes, MARK, backend control ----
S = "fuzz_session"
EHLO = b"EHLO client.example\r\n"
TX = b"MAIL FROM:<a@client.example>\r\nRCPT TO:<b@mx.example>\r\nDATA\r\n"
BODY = b"Subject: hi\r\n\r\nbody\r\n"
sessions = {
    "basic": EHLO + TX + BODY + b".\r\nQUIT\r\n",
    "helo-two-tx": b"HELO c\r\n" + TX + BODY + b".\r\n" + TX + b"..dot\r\n.\r\nRSET\r\nQUIT\r\n",
    "pipelined": EHLO + b"MAIL FROM:<a@c> SIZE=100 BODY=8BITMIME\r\nRCPT TO:<b@m>\r\n"
                 b"RCPT TO:<c@m> NOTIFY=NEVER\r\nRCPT TO:<d@m>\r\nDATA\r\nx\r\n.\r\nQUIT\r\n",
    "refused-rcpts": EHLO + b"MAIL FROM:<a@c>\r\nRCPT TO:<b@m>\r\nRCPT TO:<c@m>\r\nDATA\r\n.\r\n",
    "utf8": EHLO + "MAIL FROM:<jösé@exämple.com> SMTPUTF8\r\nRCPT TO:<用户@例子.广告>\r\nDATA\r\nü\r\n.\r\n".encode(),
    "dsn": EHLO + b"MAIL FROM:<> RET=FULL ENVID=x+2B\r\nRCPT TO:<b@m> NOTIFY=SUCCESS ORCPT=rfc822;b@m\r\nDATA\r\n.\r\n",
    "starttls": EHLO + b"STARTTLS\r\nMAIL FROM:<dropped@x>\r\n" ,
    "starttls-then": b"EHLO c\r\nSTARTTLS\r\n" ,
    "errors": b"MAIL FROM:<a@b>\r\nDATA\r\nFOO\r\nEHLO\r\nEHLO a b\r\nMAIL FROM:<bad>\r\nRCPT TO:<>\r\n"
              b"RSET x\r\nDATA x\r\nSTARTTLS x\r\nVRFY a\r\nHELP\r\nNOOP\r\nEXPN x\r\nBDAT 1\r\n",
    "junk": b"NOOP\r\n" * 30,
    "nul-8bit": EHLO + b"MAIL FROM:<a\x00@b>\r\n" + TX + b"a\x00b\r\n\xff\xfe\r\n.\r\n",
    "long-lines": EHLO + b"MAIL FROM:<" + b"a" * 600 + b"@b>\r\n" + TX + b"x" * 1200 + b"\r\n.\r\n",
    "long-line-999": EHLO + TX + b"x" * 998 + b"\r\n" + b"y" * 999 + b"\n" + b"z" * 997 + b"\r\r\n.\r\n",
    "size": EHLO + b"MAIL FROM:<a@b> SIZE=99999999999\r\n" + TX + (b"y" * 998 + b"\r\n") * 12 + b".\r\n",
    "rset-mid": EHLO + b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nRSET\r\nEHLO again\r\nMAIL FROM:<a@b>\r\nEHLO x\r\n",
    "bare-lf-cmds": b"EHLO c\nMAIL FROM:<a@b>\nRCPT TO:<c@d>\nDATA\nx\n.\n.\r\n",
}
# SMTP smuggling (2023): every way a lone dot might be taken for the end.
smuggle = {
    "lf-dot-crlf": b"\n.\r\n",
    "crlf-dot-lf": b"\r\n.\n",
    "cr-dot-cr": b"\r.\r",
    "lf-dot-lf": b"\n.\n",
    "dot-cr-crlf": b".\r\r\n",
    "cr-dot-crlf": b"\r.\r\n",
    "real-crlf-dot-crlf": b"\r\n.\r\n",  # the real end: the rest is a new transaction
    "dot-nul": b"\r\n.\x00\r\n",
}
for name, seq in smuggle.items():
    body = b"Subject: x\r\n\r\nline" + seq + b"MAIL FROM:<evil@x>\r\nRCPT TO:<victim@m>\r\nDATA\r\nforged\r\n.\r\n"
    sessions["smuggle-" + name] = EHLO + TX + body + b"QUIT\r\n"
    body = b"Subject: x\r\n\r\nline\r\n" + seq + b"RSET\r\nMAIL FROM:<evil@x>\r\n"
    sessions["smuggle-bol-" + name] = EHLO + TX + body + b".\r\n"

for name, data in sorted(sessions.items()):
    # Options byte: configuration in bits 0-3 (bit 0: bare_newline =
    # normalize), STARTTLS offered (bit 4). Both bare_newline modes where
    # bare CR and LF are the point.
    modes = [(0x10, "reject")]
    if name.startswith("smuggle-") and not name.startswith("smuggle-bol-"):
        modes = []
    if name.startswith("smuggle-") or name in ("bare-lf-cmds", "long-line-999"):
        modes.append((0x11, "normalize"))
    for opt, tag in modes:
        write(S, "%s-%s" % (name, tag), bytes([opt]) + data)
# Backend answers other than the defaults. Control bytes (fuzz_session.c):
# one per read (0: all at once), then per backend call: hello (code, caps),
# command (low 4 bits code, high 4 bits text style), after the dot (count,
# one per recipient).
ctl_seeds = {
    "mail-refused": (EHLO + TX + b"x\r\n.\r\n", [0, 0, 0, 0x05]),
    "rcpt-refused": (EHLO + TX + b"x\r\n.\r\n", [0, 0, 0, 0, 0x02]),
    "data-refused": (EHLO + TX + b"x\r\n.\r\n", [0, 0, 0, 0, 0, 0x07]),
    "data-2xx": (EHLO + TX + b"x\r\n.\r\n", [0, 0, 0, 0, 0, 0x09]),
    "hello-unavailable": (EHLO + TX, [0, 0x05, 0]),
    "hello-no-caps": (EHLO + TX, [0, 0, 0x7f]),
    "mixed-after-dot": (EHLO + b"MAIL FROM:<a@c>\r\nRCPT TO:<b@m>\r\nRCPT TO:<c@m>\r\nDATA\r\nx\r\n.\r\n",
                        [0, 0, 0, 0, 0, 0, 0, 0, 0x05]),
    "lost-after-dot": (EHLO + TX + b"x\r\n.\r\n", [0, 0, 0, 0, 0, 0, 0, 0x01]),
    "lost-rcpt": (EHLO + TX + b"x\r\n.\r\nRSET\r\nEHLO y\r\n", [0, 0, 0, 0, 0x01, 0]),
    "chunked": (EHLO + TX + BODY + b".\r\n", [0x04, 0x08, 0x0c, 0x10, 0x84, 0x88] * 6),
    "failed-in-data": (EHLO + TX + BODY + b"more\r\n.\r\n" + TX, [0x80, 0x81, 0x81, 0]),
    "timeout-in-data": (EHLO + TX + BODY + b"more\r\n.\r\n", [0x80, 0x82]),
    "shutdown-idle": (EHLO + TX + BODY + b".\r\nNOOP\r\n", [0x80, 0x83, 0x83, 0x83]),
    "text-styles": (EHLO + b"MAIL FROM:<a@c>\r\nRCPT TO:<b@m>\r\nRCPT TO:<c@m>\r\nRCPT TO:<d@m>\r\n",
                    [0, 0, 0, 0x10, 0x20, 0x70, 0x05, 0x80]),
    "raw-text": (EHLO + TX, [0, 0, 0, 0x65, 10, 0x41, 0x09, 0x1f, 0xc3, 0xa9, 0x7f, 0x00, 0x20, 0x0d, 0x0a]),
    "long-text": (EHLO + TX, [0, 0, 0, 0x40]),
    "longer-text": (EHLO + TX, [0, 0, 0, 0x50, 0xff]),
    "empty-last-line": (EHLO + TX, [0, 0, 0, 0x30]),
    "many-lines": (EHLO + TX, [0, 0, 0, 0x75, 0xff]),
    "tls-fails": (EHLO + b"STARTTLS\r\n", [0, 0, 0, 1]),
    "tls-then-tx": (b"EHLO c\r\nSTARTTLS\r\nEHLO c\r\n" + TX + BODY + b".\r\n", [0x44, 0, 0, 0]),
    "tls-then-tx-1rcpt-v6": (b"EHLO c\r\nSTARTTLS\r\nHELO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nRCPT TO:<e@d>\r\nDATA\r\n.\r\n", [0x44, 0, 0, 0]),
    "arbitrary-code": (EHLO + TX, [0, 0, 0, 0x0f, 123, 0x0f, 200]),
    "tls-twice": (b"EHLO c\r\nSTARTTLS\r\nEHLO c\r\nSTARTTLS\r\nQUIT\r\n", [0x44, 0, 0, 0]),
    "tls-in-tx": (EHLO + b"MAIL FROM:<a@b>\r\nSTARTTLS\r\nRSET\r\nSTARTTLS x\r\n", [0]),
    "dsn-errors": (EHLO + b"MAIL FROM:<a@b> SMTPUTF8=x\r\nMAIL FROM:<a@b> RET=NONE\r\n"
                   b"MAIL FROM:<a@b> ENVID=a=b\r\nMAIL FROM:<a@b>\r\nRCPT TO:<b@c> NOTIFY\r\n"
                   b"RCPT TO:<b@c> ORCPT=x\r\nRCPT TO:<b@c> ORCPT=;x\r\nRCPT TO:<b@c> X=1\r\n", [0]),
    "count-mismatch": (EHLO + TX + b"x\r\n.\r\n", [0, 0, 0, 0, 0, 0, 0, 0xfe, 0, 0]),
}
for name, (data, ctl) in ctl_seeds.items():
    opt = 0x30 if name.endswith("-v6") else 0x10
    write(S, "ctl-" + name, bytes([opt]) + data + MARK + bytes(ctl))
# Small limits (configuration bit 1): 1k messages, 2 recipients, 3 errors.
write(S, "small-too-many-rcpts", bytes([0x12]) + EHLO + b"MAIL FROM:<a@c>\r\nRCPT TO:<b@m>\r\nRCPT TO:<c@m>\r\nRCPT TO:<d@m>\r\nDATA\r\n.\r\n")
write(S, "small-size", bytes([0x12]) + EHLO + TX + (b"z" * 98 + b"\r\n") * 12 + b".\r\n")
write(S, "small-errors", bytes([0x12]) + b"FOO\r\nBAR\r\nBAZ\r\nQUX\r\n")
write(S, "require-tls", bytes([0x14]) + EHLO + TX)
write(S, "long-hostname", bytes([0x38]) + EHLO + b"HELO x\r\nHELP\r\n" + TX + b".\r\nFOO\r\n" * 25)

# ---- fuzz_proxy: accept byte (1 v1, 2 v2, 3 or 0 both), then the connection's bytes ----
P = "fuzz_proxy"
V2SIG = b"\r\n\r\n\x00\r\nQUIT\n"
proxies = {
    "v1-tcp4": b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 25\r\nEHLO x\r\n",
    "v1-tcp6": b"PROXY TCP6 2001:db8::7 2001:db8::1 1234 25\r\n",
    "v1-unknown": b"PROXY UNKNOWN\r\n",
    "v1-unknown-junk": b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n",
    "v1-bad-port": b"PROXY TCP4 192.0.2.1 198.51.100.2 65536 25\r\n",
    "v1-long": b"PROXY UNKNOWN " + b"x" * 91 + b"\r\n",
    "v2-tcp4": V2SIG + b"\x21\x11\x00\x0c\xc0\x00\x02\x01\xc6\x33\x64\x02\xdc\x04\x00\x19EHLO",
    "v2-tcp6": V2SIG + b"\x21\x21\x00\x24" + bytes(range(32)) + b"\x04\xd2\x00\x19",
    "v2-tlv": V2SIG + b"\x21\x11\x00\x11\xc0\x00\x02\x01\xc6\x33\x64\x02\xdc\x04\x00\x19"
              b"\x02\x00\x02xy",
    "v2-local": V2SIG + b"\x20\x00\x00\x00",
    "v2-unix": V2SIG + b"\x21\x31\x00\xd8" + b"/" * 216,
    "v2-udp": V2SIG + b"\x21\x12\x00\x0c" + bytes(12),
    "v2-too-long": V2SIG + b"\x21\x11\x04\x01",
    "smtp": b"EHLO client.example\r\n",
}
for i, (name, data) in enumerate(sorted(proxies.items())):
    write(P, name, bytes([i % 4]) + data)
