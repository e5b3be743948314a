"""Minimal standard-library clients for Herald: JSON over HTTP, WebSocket,
STOMP 1.2, and /proc readings of a server process.

Shared by scripts/abuse-check.py and scripts/soak.py (import it with the
scripts directory on sys.path, as running either script does). Python 3.11,
no third-party packages.
"""

import base64
import http.client as httpclient
import json
import os
import socket
import threading
import urllib.error
import urllib.request

# ---------------------------------------------------------------- HTTP


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(port, method, path, body=None, token=None, timeout=5.0):
    """One request on a new connection; raises urllib's HTTPError on non-2xx."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        req.add_header("content-type", "application/json")
    if token:
        req.add_header("authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, data=data, timeout=timeout) as r:
        return r.status, _parse(r.read())


def _parse(raw):
    """JSON if it is, else the text (e.g. /healthz's), None if empty."""
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")


def http_status(port, method, path, body=None, token=None, timeout=5.0):
    """Like http() but answers (status, parsed body or None) for any status."""
    try:
        return http(port, method, path, body, token, timeout)
    except urllib.error.HTTPError as e:
        return e.code, _parse(e.read())


class Rest:
    """A keep-alive JSON client (one connection, reopened when the server
    closed it, e.g. after its idle timeout). Not thread-safe: one per thread."""

    def __init__(self, port, timeout=10.0):
        self.port, self.timeout = port, timeout
        self.conn = None

    def request(self, method, path, body=None, token=None):
        """(status, parsed body or None); OSError if the server cannot be reached."""
        headers = {}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["content-type"] = "application/json"
        if token:
            headers["authorization"] = f"Bearer {token}"
        for attempt in (1, 2):
            fresh = self.conn is None
            if fresh:
                self.conn = httpclient.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            try:
                self.conn.request(method, path, body=data, headers=headers)
                r = self.conn.getresponse()
                raw = r.read()
                if r.getheader("connection", "").lower() == "close":
                    self.close()
                return r.status, _parse(raw)
            except (httpclient.HTTPException, OSError):
                self.close()
                # A kept-alive connection the server closed meanwhile: once more
                # on a new one (sends are idempotent on clientMessageId).
                if fresh or attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


# ---------------------------------------------------------------- /proc


def proc_status(pid):
    """VmRSS, RssAnon, RssFile (kB) and Threads of a process, from /proc."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM", "Threads"):
                out[key] = int(rest.split()[0])
    return out


def rss_mb(pid):
    return proc_status(pid).get("VmRSS", 0) / 1024


def fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def cpu_seconds(pid):
    """User + system CPU time of a process, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- WebSocket


def _mask(payload, mask):
    m = int.from_bytes(mask * ((len(payload) + 3) // 4), "big") >> (8 * ((-len(payload)) % 4))
    return (int.from_bytes(payload, "big") ^ m).to_bytes(len(payload), "big")


def ws_frame(payload: bytes, opcode=1, fin=True, masked=True):
    """One WebSocket frame as a client sends it."""
    n = len(payload)
    b0 = (0x80 if fin else 0) | opcode
    mbit = 0x80 if masked else 0
    if n < 126:
        header = bytes([b0, mbit | n])
    elif n < 65536:
        header = bytes([b0, mbit | 126]) + n.to_bytes(2, "big")
    else:
        header = bytes([b0, mbit | 127]) + n.to_bytes(8, "big")
    if not masked:
        return header + payload
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload)) if n < 4096 else _mask(payload, mask)
    return header + mask + body


class Ws:
    """A minimal WebSocket client speaking STOMP: masked frames out; data
    messages in (fragments joined, pings answered). Sends are serialized by a
    lock, so one thread may read while others write. A read that times out
    (socket.timeout) loses nothing: call it again."""

    def __init__(self, port, timeout=10.0, headers=None, rcvbuf=None, protocol="v12.stomp"):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            # Before connect, so the window advertised to the server stays small.
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(("127.0.0.1", port))
            key = base64.b64encode(os.urandom(16)).decode()
            extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
            proto = f"Sec-WebSocket-Protocol: {protocol}\r\n" if protocol else ""
            self.sock.sendall(
                (
                    f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                    f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                    f"Sec-WebSocket-Version: 13\r\n{proto}{extra}\r\n"
                ).encode()
            )
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = self.sock.recv(4096)
                if not chunk:
                    raise ConnectionError("closed during the handshake")
                head += chunk
        except BaseException:
            self.sock.close()
            raise
        if not head.startswith(b"HTTP/1.1 101"):
            self.sock.close()
            raise ConnectionError(head.split(b"\r\n")[0].decode(errors="replace"))
        self.buf = head.split(b"\r\n\r\n", 1)[1]
        self.fragments = []
        self.pending = b""  # STOMP bytes received but not yet a whole frame
        self.lock = threading.Lock()
        self.closed_by_peer = None  # (code, reason) of a close frame

    def send(self, payload: bytes, opcode=1):
        frame = ws_frame(payload, opcode)
        with self.lock:
            self.sock.sendall(frame)

    def send_raw(self, data: bytes):
        with self.lock:
            self.sock.sendall(data)

    def _frame(self):
        """The next WebSocket frame from the buffer, (fin, opcode, payload),
        or None if it has not fully arrived yet; consumes it only when whole."""
        buf = self.buf
        if len(buf) < 2:
            return None
        b0, b1 = buf[0], buf[1]
        n, at = b1 & 0x7F, 2
        if n == 126:
            if len(buf) < 4:
                return None
            n, at = int.from_bytes(buf[2:4], "big"), 4
        elif n == 127:
            if len(buf) < 10:
                return None
            n, at = int.from_bytes(buf[2:10], "big"), 10
        if b1 & 0x80:  # a server must not mask, but tolerate it
            if len(buf) < at + 4 + n:
                return None
            mask = buf[at:at + 4]
            payload = _mask(buf[at + 4:at + 4 + n], mask)
            at += 4
        else:
            if len(buf) < at + n:
                return None
            payload = buf[at:at + n]
        self.buf = buf[at + n:]
        return bool(b0 & 0x80), b0 & 0x0F, payload

    def recv(self):
        """The next data message's payload (control frames handled).
        ConnectionError when the server closes (by a close frame or EOF)."""
        while True:
            f = self._frame()
            if f is None:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError("closed")
                self.buf += chunk
                continue
            fin, op, payload = f
            if op == 8:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
                self.closed_by_peer = (code, payload[2:].decode(errors="replace"))
                raise ConnectionError(f"close frame {code}")
            if op == 9:
                try:
                    self.send(payload, opcode=10)
                except OSError:
                    pass
                continue
            if op == 10:
                continue
            if op in (1, 2) and not fin:
                self.fragments = [payload]
                continue
            if op == 0:
                self.fragments.append(payload)
                if not fin:
                    continue
                payload, self.fragments = b"".join(self.fragments), []
            return payload

    def stomp(self, command, headers, body=b""):
        lines = [command] + [f"{k}:{v}" for k, v in headers.items()]
        self.send(("\n".join(lines) + "\n\n").encode() + body + b"\0")

    def next_frame(self):
        """The next STOMP frame (command, headers, body), heart-beats skipped."""
        while True:
            frame = self._stomp_frame()
            if frame is not None:
                return frame
            self.pending += self.recv()

    def _stomp_frame(self):
        p = self.pending.lstrip(b"\r\n")
        self.pending = p
        if not p:
            return None
        end = p.find(b"\n\n")
        sep = 2
        crlf = p.find(b"\r\n\r\n")
        if crlf != -1 and (end == -1 or crlf < end):
            end, sep = crlf, 4
        if end == -1:
            return None
        lines = p[:end].decode(errors="replace").replace("\r\n", "\n").split("\n")
        command = lines[0]
        hdrs = {}
        for line in lines[1:]:
            k, colon, v = line.partition(":")
            if colon and k not in hdrs:  # STOMP 1.2: the first one wins
                if command != "CONNECTED":
                    k, v = _unescape(k), _unescape(v)
                hdrs[k] = v
        start = end + sep
        length = hdrs.get("content-length")
        if length is not None and length.isdigit():
            stop = start + int(length)
            if len(p) < stop + 1:
                return None
            body = p[start:stop]
            rest = p[stop + 1:]
        else:
            nul = p.find(b"\0", start)
            if nul == -1:
                return None
            body = p[start:nul]
            rest = p[nul + 1:]
        self.pending = rest
        return command, hdrs, body

    def frames(self):
        """Yields STOMP frames (command, headers, body) as they arrive."""
        while True:
            yield self.next_frame()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def _unescape(s):
    if "\\" not in s:
        return s
    out, i = [], 0
    while i < len(s):
        c = s[i]
        if c == "\\" and i + 1 < len(s):
            out.append({"n": "\n", "r": "\r", "c": ":", "\\": "\\"}.get(s[i + 1], s[i + 1]))
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def connect(port, token, heart_beat="0,0", timeout=10.0, rcvbuf=None):
    """A WebSocket with a CONNECTED STOMP session, or ConnectionError."""
    ws = Ws(port, timeout=timeout, rcvbuf=rcvbuf)
    try:
        ws.stomp("CONNECT", {"accept-version": "1.2", "host": "x", "passcode": token, "heart-beat": heart_beat})
        cmd, hdrs, _ = ws.next_frame()
    except BaseException:
        ws.close()
        raise
    if cmd != "CONNECTED":
        ws.close()
        raise ConnectionError(f"{cmd} {hdrs}")
    ws.connected = hdrs
    return ws
