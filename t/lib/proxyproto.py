"""The PROXY protocol (haproxy's doc/proxy-protocol.txt) as the tests see it: a strict
reader of v1 and v2 headers, a writer of the exact bytes a header should have, CRC32c,
and a test backend that records each connection's header and checks the bytes after it.
"""

import hashlib
import queue
import socket
import struct
import threading
import time

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"

PP2_TYPE_ALPN = 0x01
PP2_TYPE_AUTHORITY = 0x02
PP2_TYPE_CRC32C = 0x03
PP2_TYPE_SSL = 0x20
PP2_SUBTYPE_SSL_VERSION = 0x21
PP2_SUBTYPE_SSL_CN = 0x22
PP2_SUBTYPE_SSL_CIPHER = 0x23
PP2_SUBTYPE_SSL_SIG_ALG = 0x24
PP2_SUBTYPE_SSL_KEY_ALG = 0x25

PP2_CLIENT_SSL = 0x01
PP2_CLIENT_CERT_CONN = 0x02
PP2_CLIENT_CERT_SESS = 0x04


def _crc32c_table():
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ (0x82F63B78 if c & 1 else 0)
        table.append(c)
    return table


_CRC_TABLE = _crc32c_table()


def crc32c(data):
    """CRC32c (Castagnoli), bitwise-reflected table; see crc32c_selftest."""
    c = 0xFFFFFFFF
    for b in data:
        c = (c >> 8) ^ _CRC_TABLE[(c ^ b) & 0xFF]
    return c ^ 0xFFFFFFFF


def crc32c_selftest():
    """RFC 3720 Appendix B.4 test vectors (the CRC as a number; the RFC lists its bytes
    little-endian first) and the usual "123456789" check value."""
    return (crc32c(bytes(32)) == 0x8A9136AA and crc32c(b"\xff" * 32) == 0x62A8AB43
            and crc32c(bytes(range(32))) == 0x46DD794E
            and crc32c(bytes(range(31, -1, -1))) == 0x113FDB5C
            and crc32c(b"123456789") == 0xE3069283)


# --- writing the expected bytes ---------------------------------------------------------

def v1(family, src, dst, sport, dport):
    proto = {socket.AF_INET: "TCP4", socket.AF_INET6: "TCP6"}[family]
    return ("PROXY %s %s %s %d %d\r\n" % (proto, src, dst, sport, dport)).encode()


def tlv(type_, value):
    if isinstance(value, str):
        value = value.encode()
    return struct.pack(">BH", type_, len(value)) + value


def ssl_tlv(client, verify, subs):
    """subs: [(subtype, value)] in order."""
    return tlv(PP2_TYPE_SSL, struct.pack(">BI", client, verify)
               + b"".join(tlv(t, v) for t, v in subs))


def v2(family, src, dst, sport, dport, tlvs, crc=False):
    """The whole v2 header; tlvs: bytes of the TLVs after the CRC32C one (if crc)."""
    fam = {socket.AF_INET: 0x11, socket.AF_INET6: 0x21}[family]
    addrs = (socket.inet_pton(family, src) + socket.inet_pton(family, dst)
             + struct.pack(">HH", sport, dport))
    crc_tlv = tlv(PP2_TYPE_CRC32C, bytes(4)) if crc else b""
    body = addrs + crc_tlv + tlvs
    hdr = V2_SIGNATURE + bytes([0x21, fam]) + struct.pack(">H", len(body)) + body
    if crc:
        at = 16 + len(addrs) + 3
        hdr = hdr[:at] + struct.pack(">I", crc32c(hdr)) + hdr[at + 4:]
    return hdr


def v2_raw(ver_cmd, fam, body):
    """A v2 header as a balancer might send it, any version/command byte, family byte and
    body (addresses and TLVs): LOCAL headers and broken ones for accept-proxy's tests."""
    return V2_SIGNATURE + bytes([ver_cmd, fam]) + struct.pack(">H", len(body)) + body


def v2_local():
    """A v2 LOCAL header (a balancer's own connection, e.g. a health check)."""
    return v2_raw(0x20, 0x00, b"")


V1_UNKNOWN = b"PROXY UNKNOWN\r\n"


# --- reading -----------------------------------------------------------------------------

def parse_tlvs(data):
    """[(type, value)]; raises ValueError when a length runs past the end."""
    out, i = [], 0
    while i < len(data):
        if len(data) - i < 3:
            raise ValueError("truncated TLV header at %d" % i)
        t, n = struct.unpack(">BH", data[i:i + 3])
        if i + 3 + n > len(data):
            raise ValueError("TLV 0x%02x of %d bytes runs past the end" % (t, n))
        out.append((t, data[i + 3:i + 3 + n]))
        i += 3 + n
    return out


def parse_v2(raw):
    """A dict of the header's fields, TLVs parsed (SSL's sub-TLVs too); ValueError if bad."""
    if raw[:12] != V2_SIGNATURE:
        raise ValueError("no v2 signature")
    ver_cmd, fam, length = raw[12], raw[13], struct.unpack(">H", raw[14:16])[0]
    body = raw[16:]
    if len(body) != length:
        raise ValueError("length %d but %d bytes follow" % (length, len(body)))
    if fam == 0x11:
        family, n = socket.AF_INET, 4
    elif fam == 0x21:
        family, n = socket.AF_INET6, 16
    else:
        raise ValueError("family 0x%02x" % fam)
    if len(body) < 2 * n + 4:
        raise ValueError("addresses truncated")
    h = {"ver_cmd": ver_cmd, "fam": fam, "len": length, "family": family,
         "src": socket.inet_ntop(family, body[:n]), "dst": socket.inet_ntop(family, body[n:2 * n]),
         "sport": struct.unpack(">H", body[2 * n:2 * n + 2])[0],
         "dport": struct.unpack(">H", body[2 * n + 2:2 * n + 4])[0]}
    h["tlvs"] = parse_tlvs(body[2 * n + 4:])
    h["ssl"] = None
    for t, v in h["tlvs"]:
        if t == PP2_TYPE_SSL:
            if len(v) < 5:
                raise ValueError("SSL TLV shorter than 5 bytes")
            client, verify = struct.unpack(">BI", v[:5])
            h["ssl"] = {"client": client, "verify": verify, "subs": parse_tlvs(v[5:])}
    return h


def crc_valid(raw):
    """None when there is no CRC32C TLV, else whether it holds the header's CRC32c."""
    h = parse_v2(raw)
    n = 4 if h["family"] == socket.AF_INET else 16
    i = 16 + 2 * n + 4
    for t, v in h["tlvs"]:
        if t == PP2_TYPE_CRC32C:
            if len(v) != 4:
                return False
            zeroed = raw[:i + 3] + bytes(4) + raw[i + 7:]
            return struct.unpack(">I", v)[0] == crc32c(zeroed)
        i += 3 + len(v)
    return None


def _recv_exact(sock, n, chunk):
    buf = b""
    while len(buf) < n:
        d = sock.recv(min(chunk, n - len(buf)))
        if not d:
            raise EOFError("EOF after %d of %d bytes" % (len(buf), n))
        buf += d
    return buf


def read_header(sock, chunk=65536):
    """Read exactly one PROXY header (v1 or v2) off sock, never a byte beyond it."""
    first = _recv_exact(sock, 1, chunk)
    if first == b"P":
        raw = first
        while not raw.endswith(b"\r\n"):
            if len(raw) >= 107:
                raise ValueError("v1 header longer than 107 bytes: %r" % raw)
            raw += _recv_exact(sock, 1, 1)
        return raw
    raw = first + _recv_exact(sock, 15, chunk)
    if raw[:12] != V2_SIGNATURE:
        raise ValueError("neither a v1 nor a v2 header: %r" % raw)
    return raw + _recv_exact(sock, struct.unpack(">H", raw[14:16])[0], chunk)


class Backend:
    """A TCP backend on 127.0.0.1 in this process. Each connection: a PROXY header, then
    "N\\n" and N bytes; answers "OK N SHA256\\n", ends its side, reads to EOF. Records
    {"header", "n", "sha"} or {"error"} per connection, in order, on self.records.
    slow: waits before reading, then reads the header a byte and the rest 4 KB at a time,
    with a small receive buffer."""

    def __init__(self, slow=False):
        self.slow = slow
        self.records = queue.Queue()
        self.srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if slow:
            self.srv.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(64)
        self.port = self.srv.getsockname()[1]
        self.address = "127.0.0.1:%d" % self.port
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                sock, _ = self.srv.accept()
            except OSError:
                return
            threading.Thread(target=self._conn, args=(sock,), daemon=True).start()

    def _conn(self, sock):
        rec = {}
        try:
            sock.settimeout(30)
            if self.slow:
                time.sleep(0.5)
            rec["header"] = read_header(sock, 1 if self.slow else 65536)
            line = b""
            while not line.endswith(b"\n") and len(line) < 32:
                line += _recv_exact(sock, 1, 1)
            n = int(line)
            h, got = hashlib.sha256(), 0
            while got < n:
                d = sock.recv(min(4096 if self.slow else 262144, n - got))
                if not d:
                    break
                if self.slow:
                    time.sleep(0.001)
                h.update(d)
                got += len(d)
            rec["n"], rec["sha"] = got, h.hexdigest()
            sock.sendall(b"OK %d %s\n" % (got, rec["sha"].encode()))
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(65536):
                pass
        except Exception as e:
            rec["error"] = "%s: %s" % (type(e).__name__, e)
        finally:
            sock.close()
            self.records.put(rec)

    def next_record(self, timeout):
        try:
            return self.records.get(timeout=timeout)
        except queue.Empty:
            return {"error": "no connection reached the backend in %.0f s" % timeout}

    def close(self):
        self.srv.close()
