"""Certificates for the TLS end-to-end tests, generated with certtool at test
time (never committed): a root CA, an intermediate CA, and leaves signed by
the intermediate, so that a client trusting only the root verifies a chain
only if the server sends fullchain.pem's intermediate too.

Every leaf's subject is `OU=<label>, CN=<first name>`, where label is the
certs.d/ subdirectory it is installed in: whatever a client prints about the
certificate it was served names the directory it came from. Each leaf also
has its own serial number, and tests compare the exact DER they were served.

The set (Pki.LEAVES) and the broken entries (Pki.BROKEN) are described there;
Pki.install() copies a selection into a certs.d/ of a test's own.

Tests that need one certificate of their own (a reload swapping it, a deploy
hook installing it) make a self-signed one with make_cert (openssl: a serial
number of the test's choice, any DNS or IP names) or make_expired_cert, and
put it in place with install_cert (each file replaced atomically)."""
import datetime
import hashlib
import os
import shutil
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

DAYS = 30  # lifetime of every valid leaf


@dataclass(frozen=True)
class Leaf:
    label: str       # certs.d/ subdirectory, and the subject's OU
    names: tuple     # DNS subjectAltNames (empty: CN only)
    cn: str
    keytype: str     # as `mxfront certs` prints it: ECDSA-P256, RSA-2048
    serial: int
    fullchain: bytes  # leaf PEM + intermediate PEM
    privkey: bytes
    der: bytes        # the leaf as a TLS client receives it
    not_after: datetime.date

    @property
    def pem(self):
        """The leaf alone."""
        end = b"-----END CERTIFICATE-----\n"
        return self.fullchain[:self.fullchain.index(end) + len(end)]

    @property
    def fingerprint(self):
        return hashlib.sha256(self.der).hexdigest()

    def describe(self):
        return f"{self.label} (CN={self.cn} SAN={','.join(self.names) or '-'} {self.keytype})"


def _run(args, cwd):
    p = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, f"{' '.join(map(str, args))} failed:\n{p.stdout}\n{p.stderr}"
    return p


def _key(d, name, keytype):
    path = d / f"{name}.key"
    if keytype.startswith("RSA"):
        opts = ["--key-type", "rsa", "--bits", keytype.split("-")[1]]
    else:
        opts = ["--key-type", "ecdsa", "--curve", "secp256r1"]
    _run(["certtool", "--generate-privkey", "--no-text", *opts, "--outfile", path], d)
    return path


def _template(d, name, lines):
    path = d / f"{name}.tmpl"
    path.write_text("\n".join(lines) + "\n")
    return path


class Pki:
    """Generates everything in directory d (session scope: ~1 s)."""

    # label, DNS names, CN (when it differs from the first name), key type
    LEAVES = [
        ("default", ("mx.test.example",), None, "ECDSA-P256"),   # serves [server] hostname
        ("a", ("mx.a.example",), None, "ECDSA-P256"),
        ("wild-b", ("*.b.example",), None, "RSA-2048"),
        ("c", ("mx.c.example",), None, "ECDSA-P256"),               # a listener's default
        ("dual-ecdsa", ("dual.example",), None, "ECDSA-P256"),
        ("dual-rsa", ("dual.example",), None, "RSA-2048"),
        ("legacy", (), "legacy.example", "ECDSA-P256"),             # CN only, no SAN
    ]
    # label -> what is wrong; each would serve the name bad-<label>.example
    BROKEN = {
        "bad-mismatch": "privkey.pem belongs to another certificate",
        "bad-garbled": "fullchain.pem's base64 is corrupt",
        "bad-nokey": "privkey.pem is missing",
        "bad-expired": "the leaf expired in 2021",
    }

    def __init__(self, d):
        self.dir = Path(d)
        self.dir.mkdir(parents=True, exist_ok=True)
        d = self.dir
        serial = iter(range(0x1001, 0x2000))
        root_key = _key(d, "root", "ECDSA-P256")
        root_tmpl = _template(d, "root", ['cn = "mxfront test root CA"', "ca",
                                          "cert_signing_key", "crl_signing_key",
                                          "expiration_days = 60", f"serial = {next(serial)}"])
        self.root = d / "root.pem"
        _run(["certtool", "--generate-self-signed", "--no-text", "--load-privkey", root_key,
              "--template", root_tmpl, "--outfile", self.root], d)
        inter_key = _key(d, "inter", "ECDSA-P256")
        inter_tmpl = _template(d, "inter", ['cn = "mxfront test intermediate CA"', "ca",
                                            "cert_signing_key", "path_len = 0",
                                            "expiration_days = 59", f"serial = {next(serial)}"])
        self.intermediate = d / "inter.pem"
        _run(["certtool", "--generate-certificate", "--no-text", "--load-privkey", inter_key,
              "--load-ca-certificate", self.root, "--load-ca-privkey", root_key,
              "--template", inter_tmpl, "--outfile", self.intermediate], d)
        self._inter_key = inter_key
        self.ca_file = self.root  # what clients trust
        self.leaves = {}
        for label, names, cn, keytype in self.LEAVES:
            self.leaves[label] = self._leaf(label, names, cn or names[0], keytype, next(serial))
        self._broken = {}
        for label in self.BROKEN:
            self._broken[label] = self._make_broken(label, next(serial))

    def _leaf(self, label, names, cn, keytype, serial, dates=None):
        d = self.dir
        key = _key(d, label, keytype)
        lines = [f'cn = "{cn}"', f'unit = "{label}"', f"serial = {serial}",
                 "tls_www_server", "signing_key"]
        if keytype.startswith("RSA"):
            lines.append("encryption_key")
        lines += [f'dns_name = "{n}"' for n in names]
        if dates:
            lines += [f'activation_date = "{dates[0]}"', f'expiration_date = "{dates[1]}"']
        else:
            lines.append(f"expiration_days = {DAYS}")
        tmpl = _template(d, label, lines)
        crt = d / f"{label}.crt"
        _run(["certtool", "--generate-certificate", "--no-text", "--load-privkey", key,
              "--load-ca-certificate", self.intermediate, "--load-ca-privkey", self._inter_key,
              "--template", tmpl, "--outfile", crt], d)
        pem = crt.read_bytes()
        end = _run(["openssl", "x509", "-noout", "-enddate", "-in", crt], d).stdout
        not_after = datetime.datetime.strptime(end.strip().split("=", 1)[1],
                                               "%b %d %H:%M:%S %Y GMT").date()
        return Leaf(label, tuple(names), cn, keytype, serial, pem + self.intermediate.read_bytes(),
                    key.read_bytes(), ssl.PEM_cert_to_DER_cert(pem.decode()), not_after)

    def _make_broken(self, label, serial):
        """{file name: bytes} for one broken certs.d/ entry."""
        name = f"{label}.example"
        if label == "bad-expired":
            leaf = self._leaf(label, (name,), name, "ECDSA-P256", serial,
                              dates=("2020-01-01 00:00:00 UTC", "2021-01-01 00:00:00 UTC"))
            return {"fullchain.pem": leaf.fullchain, "privkey.pem": leaf.privkey}
        leaf = self._leaf(label, (name,), name, "ECDSA-P256", serial)
        if label == "bad-mismatch":
            other = _key(self.dir, label + "-other", "ECDSA-P256")
            return {"fullchain.pem": leaf.fullchain, "privkey.pem": other.read_bytes()}
        if label == "bad-garbled":
            lines = leaf.fullchain.split(b"\n")
            # break the leaf's base64 in its middle (a line that is not a marker)
            lines[5] = b"!!!!garbled" + lines[5][11:]
            return {"fullchain.pem": b"\n".join(lines), "privkey.pem": leaf.privkey}
        if label == "bad-nokey":
            return {"fullchain.pem": leaf.fullchain}
        raise AssertionError(label)

    def install(self, certs_dir, labels=None, broken=()):
        """Copies leaves (all by default) and broken entries into certs_dir,
        one subdirectory each, keys mode 0600; returns certs_dir."""
        certs_dir = Path(certs_dir)
        certs_dir.mkdir(parents=True, exist_ok=True)
        for label in (self.leaves if labels is None else labels):
            leaf = self.leaves[label]
            self._write(certs_dir / label, {"fullchain.pem": leaf.fullchain,
                                            "privkey.pem": leaf.privkey})
        for label in broken:
            self._write(certs_dir / label, self._broken[label])
        return certs_dir

    @staticmethod
    def _write(d, files):
        if d.exists():
            shutil.rmtree(d)
        d.mkdir()
        for name, data in files.items():
            (d / name).write_bytes(data)
            if name == "privkey.pem":
                (d / name).chmod(0o600)

    def by_der(self, der):
        """The leaf whose DER is der, or None."""
        for leaf in self.leaves.values():
            if leaf.der == der:
                return leaf
        return None

    def name_of(self, der):
        """A label for what a client was served, for assertion messages."""
        leaf = self.by_der(der)
        if leaf:
            return leaf.label
        if der is None:
            return "(no certificate)"
        return f"(unknown certificate sha256={hashlib.sha256(der).hexdigest()[:16]})"


# --------------------------------------------------------------------------
# single self-signed certificates (reload, service and check tests)

@dataclass
class Cert:
    """One generated certificate: its PEM files and its DER encoding (what a
    TLS client sees)."""
    names: tuple
    serial: int
    fullchain: bytes
    privkey: bytes
    der: bytes

    def describe(self):
        return f"cert serial={self.serial:#x} names={','.join(self.names)}"


def make_cert(scratch, names, serial, days=30, rsa=False, reuse_key=None):
    """A self-signed ECDSA P-256 (or RSA-2048) certificate for names (first
    one as CN; "IP:a.b.c.d" for an address), with a serial number of our
    choice so that tests can tell certificates apart; REUSE_KEY (PEM bytes)
    keeps a key instead of making one. scratch is a directory for openssl's
    output files."""
    scratch = Path(scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    key, crt = scratch / f".{serial:x}.key", scratch / f".{serial:x}.crt"
    san = ",".join(n if n.startswith("IP:") else f"DNS:{n}" for n in names)
    if reuse_key is not None:
        key.write_bytes(reuse_key)
        keyargs = ["-key", str(key)]
    elif rsa:
        keyargs = ["-newkey", "rsa:2048", "-keyout", str(key)]
    else:
        keyargs = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-keyout", str(key)]
    p = subprocess.run(
        ["openssl", "req", "-x509", *keyargs,
         "-nodes", "-out", str(crt), "-days", str(days),
         "-subj", f"/CN={names[0]}", "-addext", f"subjectAltName={san}",
         "-set_serial", str(serial)],
        capture_output=True, text=True, timeout=20)
    assert p.returncode == 0, p.stderr
    pem = crt.read_bytes()
    cert = Cert(tuple(names), serial, pem, key.read_bytes(),
                ssl.PEM_cert_to_DER_cert(pem.decode()))
    key.unlink()
    crt.unlink()
    return cert


def make_expired_cert(scratch, names, serial):
    """Like make_cert, but valid only in January 2020 (openssl req cannot
    make one in the past; certtool can)."""
    scratch = Path(scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    key, crt, tmpl = (scratch / f".{serial:x}.{ext}" for ext in ("key", "crt", "tmpl"))
    tmpl.write_text(f'cn = "{names[0]}"\n' + "".join(f'dns_name = "{n}"\n' for n in names) +
                    f"serial = {serial}\n"
                    'activation_date = "2020-01-01 00:00:00"\n'
                    'expiration_date = "2020-02-01 00:00:00"\n'
                    "tls_www_server\n")
    for args in (["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt",
                  "ec_paramgen_curve:P-256", "-out", str(key)],
                 ["certtool", "--generate-self-signed", "--no-text", "--load-privkey", str(key),
                  "--template", str(tmpl), "--outfile", str(crt)]):
        p = subprocess.run(args, capture_output=True, text=True, timeout=20)
        assert p.returncode == 0, f"{args[0]}: {p.stderr}"
    pem = crt.read_bytes()
    cert = Cert(tuple(names), serial, pem, key.read_bytes(),
                ssl.PEM_cert_to_DER_cert(pem.decode()))
    for f in (key, crt, tmpl):
        f.unlink()
    return cert


def write_atomic(path, data, mode=0o644):
    """Writes data to path through a hidden temporary file and a rename, so a
    reader (mxfront reloading) sees the old file or the new one, never half."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def install_cert(certs_dir, label, cert, fullchain=None, privkey=None):
    """Puts cert into certs_dir/label/ (created if needed), each file replaced
    atomically; fullchain/privkey override the bytes written (broken files)."""
    d = Path(certs_dir) / label
    d.mkdir(parents=True, exist_ok=True)
    write_atomic(d / "privkey.pem", cert.privkey if privkey is None else privkey, 0o600)
    write_atomic(d / "fullchain.pem", cert.fullchain if fullchain is None else fullchain)


def describe_der(der, known):
    for c in known:
        if c.der == der:
            return c.describe()
    return f"an unknown certificate ({len(der)} bytes)"
