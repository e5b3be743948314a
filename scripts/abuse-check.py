#!/usr/bin/env python3
"""Outside check of Herald under connection abuse (issue 21's bar).

Starts the server (embedded, its own data directory), then, while two
ordinary users chat and /healthz is polled:
  1. `--idle` (20,000) TCP connections that send nothing, reopened as the
     server closes them, held for `--hold` seconds;
  2. `--frames` (50) WebSocket connections of a few users, each holding a
     2,000,000-byte STOMP frame without its NUL, held past the server's
     frame timeout.
Fails (exit 1) if /healthz or a chat message ever takes longer than
`--max-latency` seconds, or the server's RSS passes `--max-rss-mb`.

    python3 scripts/abuse-check.py --bin target/release/herald

Standard library only: the minimal WebSocket client is in scripts/herald_ws.py.
"""

import argparse
import json
import multiprocessing
import os
import resource
import selectors
import socket
import subprocess
import sys
import tempfile
import threading
import time

# ---------------------------------------------------------------- helpers

# The HTTP, WebSocket and STOMP clients and the /proc readings are shared
# with scripts/soak.py (this script's directory is on sys.path).
sys.dont_write_bytecode = True  # no scripts/__pycache__ left in the work tree
from herald_ws import connect, fd_count, free_port, http, rss_mb  # noqa: E402


# ---------------------------------------------------------------- load


def idle_flood(port, count, hold, rate, stop_at):
    """Keeps `count` silent connections open, reopening closed ones."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        pass
    sel = selectors.DefaultSelector()
    opened = 0
    reopened = 0
    refused = 0
    deadline = time.time() + hold

    def open_one():
        nonlocal opened
        s = socket.socket()
        s.setblocking(False)
        try:
            s.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        except OSError:
            s.close()
            return False
        sel.register(s, selectors.EVENT_READ)
        opened += 1
        return True

    while len(sel.get_map()) < count and time.time() < deadline:
        batch_end = time.time() + 1
        for _ in range(rate):
            if len(sel.get_map()) >= count or not open_one():
                break
        time.sleep(max(0.0, batch_end - time.time()))
    while time.time() < deadline:
        for key, _ in sel.select(timeout=0.5):
            s = key.fileobj
            try:
                data = s.recv(4096)
            except OSError:
                data = b""
            if data.startswith(b"HTTP/1.1 503"):
                refused += 1
            sel.unregister(s)
            s.close()
            if open_one():
                reopened += 1
    for key in list(sel.get_map().values()):
        key.fileobj.close()
    print(f"  flood worker: opened {opened}, reopened {reopened}, refused {refused}", flush=True)


def half_frames(port, tokens, count, hold, results):
    conns = []
    body = b"SEND\ndestination:/topic/public.abuse\n\n" + b"x" * 2_000_000
    for i in range(count):
        try:
            ws = connect(port, tokens[i % len(tokens)])
            ws.send(body)  # no NUL: the frame never ends
            conns.append(ws)
        except (OSError, ConnectionError) as e:
            results.append(f"connect/send refused: {e}")
    time.sleep(hold)
    closed = 0
    for ws in conns:
        ws.sock.settimeout(0.1)
        try:
            for cmd, hdrs, _ in ws.frames():
                if cmd == "ERROR":
                    results.append(f"ERROR: {hdrs.get('message')}")
                    closed += 1
                    break
        except (OSError, ConnectionError):
            closed += 1
        ws.sock.close()
    results.append(f"{closed}/{len(conns)} half-sent frames closed by the server")


# ---------------------------------------------------------------- monitor


class Monitor:
    def __init__(self, port, pid, sender, receiver):
        self.port, self.pid = port, pid
        self.sender, self.receiver = sender, receiver
        self.worst_health = 0.0
        self.worst_chat = 0.0
        self.failures = []
        self.max_rss = 0.0
        self.max_fds = 0
        self.stop = False
        self.rx = connect(port, receiver["token"])
        self.rx.stomp("SUBSCRIBE", {"id": "m", "destination": "/user/queue/message"})
        self.rx.sock.settimeout(10)
        self.frames = self.rx.frames()

    def run(self):
        n = 0
        while not self.stop:
            n += 1
            self.max_rss = max(self.max_rss, rss_mb(self.pid))
            self.max_fds = max(self.max_fds, fd_count(self.pid))
            t = time.time()
            try:
                http(self.port, "GET", "/healthz", timeout=10)
                self.worst_health = max(self.worst_health, time.time() - t)
            except OSError as e:
                self.failures.append(f"healthz: {e}")
            t = time.time()
            try:
                req = {"toUserId": self.receiver["userId"], "messageType": 1,
                       "content": f"ping {n}", "clientMessageId": f"m{n}-{t}"}
                http(self.port, "POST", "/api/v1/messages", req, self.sender["token"], timeout=10)
                while True:
                    cmd, _, body = next(self.frames)
                    if cmd == "MESSAGE" and json.loads(body).get("content") == f"ping {n}":
                        break
                self.worst_chat = max(self.worst_chat, time.time() - t)
            except (OSError, ConnectionError, StopIteration) as e:
                self.failures.append(f"chat: {e}")
            time.sleep(0.5)


def user(port, name):
    http(port, "POST", "/api/v1/auth/register",
         {"username": name, "password": "password123", "nickname": name})
    _, login = http(port, "POST", "/api/v1/auth/login", {"username": name, "password": "password123"})
    return login


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=os.environ.get("HERALD_BIN", "target/release/herald"))
    ap.add_argument("--idle", type=int, default=20_000)
    ap.add_argument("--frames", type=int, default=50)
    ap.add_argument("--hold", type=float, default=40.0)
    ap.add_argument("--max-rss-mb", type=float, default=150.0)
    ap.add_argument("--max-latency", type=float, default=1.0)
    args = ap.parse_args()

    port = free_port()
    data = tempfile.mkdtemp(prefix="herald-abuse-")
    env = dict(os.environ, HERALD_LISTEN=f"127.0.0.1:{port}", HERALD_DATA_DIR=data,
               HERALD_REGISTRATIONS_PER_HOUR="0", RUST_LOG="warn")
    log = open(os.path.join(data, "server.log"), "w")
    server = subprocess.Popen([args.bin, "serve"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(100):
            try:
                http(port, "GET", "/healthz", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        stamp = int(time.time())
        a, b = user(port, f"alice{stamp}"), user(port, f"bob{stamp}")
        attackers = [user(port, f"mallory{stamp}x{i}")["token"] for i in range(4)]
        print(f"server pid {server.pid}, RSS at start {rss_mb(server.pid):.1f} MB")
        mon = Monitor(port, server.pid, a, b)
        mt = threading.Thread(target=mon.run, daemon=True)
        mt.start()

        print(f"phase 1: {args.idle} idle TCP connections for {args.hold:.0f} s")
        per = args.idle // 2
        workers = [multiprocessing.Process(target=idle_flood, args=(port, per, args.hold, 5000, 0))
                   for _ in range(2)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        print(f"  worst /healthz {mon.worst_health*1000:.0f} ms, worst chat {mon.worst_chat*1000:.0f} ms, "
              f"max RSS {mon.max_rss:.1f} MB, max fds {mon.max_fds}")

        print(f"phase 2: {args.frames} half-sent 2 MB frames for {args.hold:.0f} s")
        results = []
        half_frames(port, attackers, args.frames, args.hold, results)
        summary = {}
        for r in results:
            summary[r] = summary.get(r, 0) + 1
        for r, n in summary.items():
            print(f"  {n} x {r}")
        mon.stop = True
        mt.join(timeout=15)
        print(f"  worst /healthz {mon.worst_health*1000:.0f} ms, worst chat {mon.worst_chat*1000:.0f} ms, "
              f"max RSS {mon.max_rss:.1f} MB, max fds {mon.max_fds}")
        ok = True
        if mon.failures:
            ok = False
            print(f"FAIL: {len(mon.failures)} failed checks, first: {mon.failures[:3]}")
        if max(mon.worst_health, mon.worst_chat) > args.max_latency:
            ok = False
            print(f"FAIL: latency above {args.max_latency} s")
        if mon.max_rss > args.max_rss_mb:
            ok = False
            print(f"FAIL: RSS {mon.max_rss:.1f} MB above {args.max_rss_mb} MB")
        if server.poll() is not None:
            ok = False
            print("FAIL: the server exited")
        print("PASS" if ok else "FAILED")
        return 0 if ok else 1
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()


if __name__ == "__main__":
    sys.exit(main())
