#!/usr/bin/env python3
"""Soak test of Herald (issue 21 item 6; not in CI): an hour of mixed load
on one server, reporting its RSS, open fds and latency every minute, and
failing if RSS or fds keep growing after the warm-up.

Usually run through scripts/soak.sh (DURATION, WARMUP, HERALD_BIN). The
script starts the server itself on the embedded default, in a temp data
directory, on a free port, with registration and login throttling off and
high rate limits (no other HERALD_* variable of the caller's environment
reaches it, and it runs in the temp directory so no ./herald.toml applies).

The load, all at once, at rates a 2-core machine shared with this generator
carries (each knob is an option, see --help):
  * 1:1 chat between --chat-users users, each on one STOMP connection
    subscribed to its messages (ack:auto; or client-individual acked by a
    STOMP ACK; or acked by SEND /app/ack, sometimes also a read-ack), its
    SendAcks and errors, half of them with heart-beats, half also to a
    public typing topic; sends alternate between POST /messages and STOMP
    SEND /app/send (a third of them with a receipt); some sends recalled;
    REST reads (sessions, unread, history, presence, mark-read) meanwhile.
  * group chat in groups of --group-sizes members.
  * --reconnect-users clients that connect, sync by cursor (GET
    /api/v1/inbox/sync, checking inboxSeq has no gaps), stay a few
    seconds, sometimes send one message, disconnect (DISCONNECT with a
    receipt, or just a dropped socket) and start again.
  * --slow-users slow consumers: client-individual subscribers with a
    small receive buffer that never read nor ack, sent to at --slow-rate
    (and members of the largest group); each is replaced every
    --slow-hold seconds, after reading what was buffered to see whether
    the server had given up on it (its ERROR comes after those bytes).
  * abusive clients in a separate process: --idle-conns idle TCP
    connections that send nothing (reopened when the server closes
    them), plus, in turn, half-sent HTTP headers, STOMP frames without
    their NUL, oversized WebSocket messages, bad tokens (REST and STOMP),
    garbage STOMP frames, garbage TCP, WebSocket protocol violations and
    upgrades that never CONNECT; each outcome counted as expected or odd.

Every --sample-secs (60) a line: the server's RSS and open fds (medians of
readings every 5 s), its CPU, the load done, and the send-to-push latency
(from just before a send to its MESSAGE at each online recipient, 1:1 and
group; measured here, so it includes this generator's own delays). The
samples, with the server's own counters from /metrics, go to a JSONL file
(--jsonl; default: the run's temp directory).
At the end a summary that can be pasted into docs/BENCHMARKS.md.

Exit status 1 if RSS or fds keep growing after the warm-up (the rule is
growth_verdict() below, checked by --self-test), if the server exits or
logs a panic, or if no push was measured at all (the load did not run);
0 otherwise; 2 for a usage error.

Standard library only (Python 3.11); the clients are in scripts/herald_ws.py.
"""

import argparse
import base64
import collections
import datetime
import hashlib
import hmac
import itertools
import json
import math
import multiprocessing
import os
import random
import resource
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

sys.dont_write_bytecode = True  # no scripts/__pycache__ left in the work tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from herald_ws import (  # noqa: E402
    Rest,
    Ws,
    cpu_seconds,
    fd_count,
    free_port,
    http_status,
    proc_status,
    ws_frame,
)

API = "/api/v1"
TYPING = "/topic/public.soak-typing"

# ---------------------------------------------------------------- the rule
#
# "Keeps growing after the warm-up" is judged on the per-minute values after
# the warm-up (each the median of that minute's 5-second readings, so one
# odd reading does not count), split in thirds: first, middle, last. A
# series grew if BOTH
#   (a) max(last third) - max(middle third) > tolerance: it was still
#       climbing at the end. A step that happened before the last third and
#       then held (a cache filling, the allocator keeping a high-water mark,
#       the first slow consumers' queues) passes, and so does a sawtooth
#       whose peaks repeat (slow consumers filling and being closed), since
#       both thirds hold the same peaks;
#   (b) median(last third) - median(middle third) > tolerance: the last
#       third is higher as a whole, not by a spike or a few (a median
#       ignores anything under half of its samples).
# A steady leak satisfies both once it has grown by more than the tolerance
# over a third of the window; noise, plateaus and sawtooths satisfy neither
# or only one. A step up within the last third that holds for most of it
# counts as growth: it is what a leaking table's capacity doubling looks
# like, and nothing shows it would not be followed by the next one.
# The tolerance is max(absolute, relative x the middle third's max): for the
# hour (50 samples after a 10-minute warm-up) a leak above about
# 5 MB / 17 min (0.3 MB/min, 18 MB/h) or 20 fds / 17 min fails. The
# Theil-Sen slope (median of the pairwise slopes) is reported, not judged.


def theil_sen_slope(values):
    """Median of the slopes between every pair of samples (units per sample)."""
    n = len(values)
    slopes = [(values[j] - values[i]) / (j - i) for i in range(n) for j in range(i + 1, n)]
    return statistics.median(slopes) if slopes else 0.0


def growth_verdict(values, abs_tol, rel_tol):
    """Whether per-minute `values` (after the warm-up, in order) keep growing.
    Answers a dict: grew (bool), judged (False with fewer than 3 samples),
    rise (max of the last third - max of the middle third), rise_median
    (the same with medians), slope (Theil-Sen, per sample), tol."""
    n = len(values)
    if n < 3:
        return {"grew": False, "judged": False, "n": n, "rise": None, "rise_median": None,
                "slope": None, "tol": None, "why": "fewer than 3 samples after the warm-up"}
    a, b = n // 3, (2 * n) // 3
    middle, last = values[a:b], values[b:]
    tol = max(abs_tol, rel_tol * abs(max(middle)))
    rise = max(last) - max(middle)
    rise_median = statistics.median(last) - statistics.median(middle)
    grew = rise > tol and rise_median > tol
    why = ("the last third rose above the middle third, as a whole" if grew
           else "no new high in the last third" if rise <= tol
           else "only a few high samples in the last third")
    return {"grew": grew, "judged": True, "n": n, "rise": rise, "rise_median": rise_median,
            "slope": theil_sen_slope(values), "tol": tol, "why": why}


def self_test(seeds=range(20)):
    """The rule on synthetic series (each with 20 draws of its noise):
    leaks must fail, the rest must pass."""
    n = 50  # an hour sampled every minute after a 10-minute warm-up
    rss = dict(abs_tol=5.0, rel_tol=0.05)
    fds = dict(abs_tol=20.0, rel_tol=0.10)
    # (name, value at minute i given noise(amplitude), tolerances, expected grew)
    cases = [
        ("rss flat with noise +-2 MB", lambda i, e: 80 + e(2), rss, False),
        ("rss leak 1 MB/min", lambda i, e: 80 + i + e(2), rss, True),
        ("rss leak 0.5 MB/min", lambda i, e: 80 + 0.5 * i + e(1), rss, True),
        ("rss leak 0.1 MB/min (under the tolerance)", lambda i, e: 80 + 0.1 * i + e(1), rss, False),
        ("rss step +30 MB at minute 5, then flat", lambda i, e: 80 + 30 * (i >= 5) + e(2), rss, False),
        ("rss step +30 MB in the middle third, then flat", lambda i, e: 80 + 30 * (i >= 24) + e(2), rss, False),
        ("rss one spike +40 MB in the last third", lambda i, e: 80 + 40 * (i == 45) + e(2), rss, False),
        ("rss three spikes +40 MB in the last third",
         lambda i, e: 80 + 40 * (i in (36, 41, 46)) + e(2), rss, False),
        ("rss step +20 MB in the last third that holds (a table doubling?)",
         lambda i, e: 80 + 20 * (i >= 38) + e(1), rss, True),
        ("rss staircase +10 MB every 10 min", lambda i, e: 80 + 10 * (i // 10) + e(1), rss, True),
        ("rss sawtooth 0-15 MB, period 4 min", lambda i, e: 80 + 5 * (i % 4) + e(1), rss, False),
        ("rss sawtooth 0-15 MB, period 7 min", lambda i, e: 80 + 2.5 * (i % 7) + e(1), rss, False),
        ("rss growth that levels off at minute 15", lambda i, e: 80 + 2 * min(i, 15) + e(1), rss, False),
        ("rss leak starting at minute 30", lambda i, e: 80 + 2 * max(0, i - 30) + e(1), rss, True),
        ("fds flat with churn +-15", lambda i, e: 240 + round(e(15)), fds, False),
        ("fds leak 3 per minute", lambda i, e: 240 + 3 * i + round(e(10)), fds, True),
        ("fds leak 1 per minute (under the tolerance)", lambda i, e: 240 + i + round(e(5)), fds, False),
    ]
    short = [
        ("short: 3 samples flat", [80, 81, 80], rss, False),
        ("short: 3 samples +20 MB/min", [80, 100, 120], rss, True),
        ("short: 2 samples (not judged)", [80, 200], rss, False),
    ]
    failures = 0
    for name, f, tol, want in cases:
        wrong, v = 0, None
        for seed in seeds:
            rng = random.Random(seed)
            series = [f(i, lambda amp: rng.uniform(-amp, amp)) for i in range(n)]
            v = growth_verdict(series, **tol)
            wrong += v["grew"] != want
        failures += wrong > 0
        print(f"{'ok  ' if not wrong else 'FAIL'} {name}: grew={want if not wrong else not want} "
              f"(want {want}) in {len(seeds) - wrong}/{len(seeds)} draws; last: rise of the max "
              f"{v['rise']:+.1f}, of the median {v['rise_median']:+.1f}, tol {v['tol']:.1f}")
    for name, series, tol, want in short:
        v = growth_verdict(series, **tol)
        ok = v["grew"] == want
        failures += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {name}: grew={v['grew']} (want {want})")
    total = len(cases) + len(short)
    print(f"self-test: {total - failures}/{total} cases as expected")
    return 0 if failures == 0 else 1


# ---------------------------------------------------------------- bookkeeping


class Stats:
    """Thread-safe counters and a few examples of each odd event."""

    def __init__(self):
        self.lock = threading.Lock()
        self.c = collections.Counter()
        self.examples = collections.defaultdict(list)

    def inc(self, key, n=1):
        with self.lock:
            self.c[key] += n

    def note(self, key, text):
        with self.lock:
            self.c[key] += 1
            if len(self.examples[key]) < 3:
                self.examples[key].append(str(text)[:200])

    def snapshot(self):
        with self.lock:
            return dict(self.c)


class Tracker:
    """Send-to-push latency: a send registers its measured recipients; each
    one's first push of it gives a sample; what is still awaited after
    `late_after` seconds counts as missing."""

    def __init__(self):
        self.lock = threading.Lock()
        self.pending = {}  # clientMessageId -> [t0, {userId}, kind]
        self.interval = collections.defaultdict(list)
        self.all = collections.defaultdict(list)
        self.missing = 0
        self.missing_total = 0

    def sent(self, cmid, recipients, kind, t0):
        if recipients:
            with self.lock:
                self.pending[cmid] = [t0, set(recipients), kind]

    def cancel(self, cmid):
        with self.lock:
            self.pending.pop(cmid, None)

    def pushed(self, user_id, cmid, now):
        with self.lock:
            p = self.pending.get(cmid)
            if p is None or user_id not in p[1]:
                return
            p[1].discard(user_id)
            if not p[1]:
                del self.pending[cmid]
            ms = (now - p[0]) * 1000
            self.interval[p[2]].append(ms)
            self.all[p[2]].append(ms)

    def expire(self, now, late_after):
        with self.lock:
            late = [k for k, p in self.pending.items() if now - p[0] > late_after]
            for k in late:
                n = len(self.pending.pop(k)[1])
                self.missing += n
                self.missing_total += n

    def take_interval(self):
        with self.lock:
            out, self.interval = self.interval, collections.defaultdict(list)
            missing, self.missing = self.missing, 0
            return out, missing

    def outstanding(self):
        with self.lock:
            return sum(len(p[1]) for p in self.pending.values())


def pct(sorted_vals, q):
    if not sorted_vals:
        return None
    return sorted_vals[max(0, math.ceil(q / 100 * len(sorted_vals)) - 1)]


def lat_summary(values):
    s = sorted(values)

    def r(v):
        return None if v is None else round(v, 2)

    return {"n": len(s), "p50": r(pct(s, 50)), "p99": r(pct(s, 99)), "max": r(s[-1] if s else None)}


def fmt_ms(v):
    if v is None:
        return "-"
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}"


class User:
    def __init__(self, name, user_id, token):
        self.name, self.user_id, self.token = name, user_id, token


def make_user(port, name, password="soak-password-1"):
    st, body = http_status(port, "POST", f"{API}/auth/register",
                           {"username": name, "password": password, "nickname": name}, timeout=60)
    if st not in (201, 409):
        raise RuntimeError(f"register {name}: {st} {body}")
    st, body = http_status(port, "POST", f"{API}/auth/login",
                           {"username": name, "password": password}, timeout=60)
    if st != 200:
        raise RuntimeError(f"login {name}: {st} {body}")
    return User(name, body["userId"], body["token"])


# ---------------------------------------------------------------- chat clients


class ChatClient:
    """One always-online user: a STOMP connection read by its own thread,
    reconnected if it drops (counted: it should not)."""

    def __init__(self, soak, user, ack, heart_beat, typing, auth_header):
        self.soak, self.user = soak, user
        self.ack = ack  # "auto", "stomp-ack" or "app-ack"
        self.heart_beat = heart_beat
        self.typing = typing
        self.auth_header = auth_header
        self.ws = None
        self.up = threading.Event()
        self.sessions = collections.deque(maxlen=20)
        self.thread = threading.Thread(target=self.run, name=f"chat-{user.name}", daemon=True)

    def open(self):
        ws = Ws(self.soak.port, timeout=10)
        try:
            hdrs = {"accept-version": "1.2", "host": "x", "heart-beat": self.heart_beat}
            if self.auth_header:
                hdrs["Authorization"] = f"Bearer {self.user.token}"
            else:
                hdrs["passcode"] = self.user.token
            ws.stomp("CONNECT", hdrs)
            cmd, h, _ = ws.next_frame()
            if cmd != "CONNECTED":
                raise ConnectionError(f"{cmd} {h.get('message')}")
            mode = "auto" if self.ack == "auto" else "client-individual"
            ws.stomp("SUBSCRIBE", {"id": "m", "destination": "/user/queue/message", "ack": mode})
            ws.stomp("SUBSCRIBE", {"id": "a", "destination": "/user/queue/ack"})
            ws.stomp("SUBSCRIBE", {"id": "e", "destination": "/user/queue/errors"})
            if self.typing:
                ws.stomp("SUBSCRIBE", {"id": "t", "destination": TYPING})
            ws.sock.settimeout(1.0)
        except BaseException:
            ws.close()
            raise
        self.ws = ws
        self.up.set()

    def send_frame(self, command, headers, body=b""):
        ws = self.ws
        if ws is None or not self.up.is_set():
            return False
        try:
            ws.stomp(command, headers, body)
            return True
        except OSError:
            return False

    def run(self):
        soak, stats = self.soak, self.soak.stats
        first = True
        while not soak.done.is_set():
            if not self.up.is_set():
                if not first:
                    soak.done.wait(0.5)
                try:
                    self.open()
                    if not first:
                        stats.inc("chat_reconnects")
                    first = False
                except (OSError, ConnectionError) as e:
                    stats.note("chat_connect_failed", e)
                    soak.done.wait(1.0)
                    continue
            try:
                cmd, hdrs, body = self.ws.next_frame()
            except TimeoutError:
                continue
            except (OSError, ConnectionError) as e:
                self.up.clear()
                self.ws.close()
                if not soak.done.is_set():
                    stats.note("chat_dropped", f"{self.user.name}: {e} {self.ws.closed_by_peer or ''}")
                continue
            now = time.monotonic()
            if cmd == "MESSAGE":
                try:
                    self.on_message(hdrs, body, now)
                except (KeyError, TypeError, ValueError, AttributeError) as e:
                    stats.note("bad_push", f"{e!r}: {body[:100]!r}")
            elif cmd == "RECEIPT":
                stats.inc("receipts")
            elif cmd == "ERROR":
                stats.note("chat_error_frames", f"{self.user.name}: {hdrs.get('message')}")

    def on_message(self, hdrs, body, now):
        stats = self.soak.stats
        sub = hdrs.get("subscription")
        if sub == "m":
            try:
                ev = json.loads(body)
            except ValueError:
                stats.note("bad_push_json", body[:100])
                return
            stats.inc("pushes")
            if ev.get("type") == "message":
                self.soak.tracker.pushed(self.user.user_id, ev.get("clientMessageId"), now)
                sid = ev.get("sessionId")
                if sid and sid not in self.sessions:
                    self.sessions.append(sid)
            else:
                stats.inc(f"push_{ev.get('type')}")
            self.acknowledge(hdrs, ev)
        elif sub == "a":
            stats.inc("sendacks")
        elif sub == "e":
            try:
                err = json.loads(body)
            except ValueError:
                err = {}
            self.soak.tracker.cancel(err.get("clientMessageId"))
            stats.note(f"send_rejected_{err.get('code')}", err.get("message"))
        elif sub == "t":
            stats.inc("typing_received")

    def acknowledge(self, hdrs, ev):
        if self.ack == "stomp-ack" and "ack" in hdrs:
            self.send_frame("ACK", {"id": hdrs["ack"]})
        elif self.ack == "app-ack":
            mid = hdrs.get("message-id")
            if mid:
                body = {"messageIds": [mid], "ackType": "received"}
                self.send_frame("SEND", {"destination": "/app/ack", "content-type": "application/json"},
                                json.dumps(body).encode())
            if ev.get("type") == "message" and random.random() < 0.1:
                body = {"sessionId": ev["sessionId"], "upToSeq": ev["seq"], "ackType": "read"}
                self.send_frame("SEND", {"destination": "/app/ack", "content-type": "application/json"},
                                json.dumps(body).encode())
        if self.ack != "auto":
            self.soak.stats.inc("acks_sent")


# ---------------------------------------------------------------- the soak


class Soak:
    def __init__(self, args, port, pid):
        self.args, self.port, self.pid = args, port, pid
        self.stats = Stats()
        self.tracker = Tracker()
        self.stop = threading.Event()  # stop generating load
        self.done = threading.Event()  # stop reading too
        self.ids = itertools.count(1)
        self.run_tag = f"{int(time.time()) % 10**8:x}"
        self.chat = []  # ChatClient
        self.reconnect_users = []
        self.slow_users = []
        self.groups = []  # (groupId, [ChatClient members], sessionId)
        self.recallable = collections.deque(maxlen=200)  # (time, sender token, messageId)
        self.threads = []

    # -- sends

    def send(self, rest, sender, target, recipients, kind, content=None, stomp_share=0.5):
        cmid = f"{self.run_tag}-{next(self.ids)}"
        body = {**target, "messageType": 1, "content": content or f"soak {kind} {cmid}",
                "clientMessageId": cmid, "clientTimestamp": int(time.time() * 1000)}
        t0 = time.monotonic()
        self.tracker.sent(cmid, recipients, kind, t0)
        if sender is not None and random.random() < stomp_share:
            headers = {"destination": "/app/send", "content-type": "application/json"}
            if random.random() < 1 / 3:
                headers["receipt"] = f"r-{cmid}"
            if sender.send_frame("SEND", headers, json.dumps(body).encode()):
                self.stats.inc(f"sent_{kind}")
                self.stats.inc("sent_stomp")
                return
        token = sender.user.token if isinstance(sender, ChatClient) else sender.token
        try:
            st, ack = rest.request("POST", f"{API}/messages", body, token)
        except OSError as e:
            self.tracker.cancel(cmid)
            self.stats.note("send_http_failed", e)
            return
        except BaseException:
            self.tracker.cancel(cmid)
            raise
        if st == 202:
            self.stats.inc(f"sent_{kind}")
            self.stats.inc("sent_rest")
            if kind != "slow" and ack and random.random() < 0.05:
                self.recallable.append((time.monotonic(), token, ack.get("messageId")))
        else:
            self.tracker.cancel(cmid)
            self.stats.note(f"send_http_{st}", ack)

    def online(self, clients):
        return {c.user.user_id for c in clients if c.up.is_set()}

    def send_direct(self, rest):
        a = random.choice(self.chat)
        if self.reconnect_users and random.random() < self.args.reconnect_share:
            b = random.choice(self.reconnect_users)
            self.send(rest, a, {"toUserId": b.user_id}, (), "direct-offline")
            return
        b = random.choice(self.chat)
        while b is a:
            b = random.choice(self.chat)
        self.send(rest, a, {"toUserId": b.user.user_id}, self.online([b]), "direct")

    def send_group(self, rest):
        gid, members, _ = random.choice(self.groups)
        sender = random.choice(members)
        recipients = self.online(m for m in members if m is not sender)
        self.send(rest, sender, {"groupId": gid}, recipients, "group")

    def send_slow(self, rest):
        if not self.slow_users:
            return
        b = random.choice(self.slow_users)
        a = random.choice(self.chat)
        content = f"slow {next(self.ids)} " + "s" * self.args.slow_bytes
        self.send(rest, a, {"toUserId": b.user_id}, (), "slow", content=content)

    def send_typing(self, _rest):
        a = random.choice(self.chat)
        if a.send_frame("SEND", {"destination": TYPING, "content-type": "application/json"},
                        json.dumps({"typing": a.user.user_id}).encode()):
            self.stats.inc("typing_sent")

    def rest_read(self, rest):
        c = random.choice(self.chat)
        tok = c.user.token
        r = random.random()
        sid = c.sessions[-1] if c.sessions else None
        if r < 0.25:
            st, _ = rest.request("GET", f"{API}/sessions", token=tok)
        elif r < 0.45:
            st, _ = rest.request("GET", f"{API}/messages/unread?limit=20", token=tok)
        elif r < 0.60 and sid:
            st, _ = rest.request("GET", f"{API}/sessions/{sid}/messages?limit=20", token=tok)
        elif r < 0.75 and sid:
            st, _ = rest.request("POST", f"{API}/messages/mark-read", {"sessionId": sid}, tok)
        elif r < 0.90:
            ids = ",".join(random.choice(self.chat).user.user_id for _ in range(10))
            st, _ = rest.request("GET", f"{API}/presence?userIds={ids}", token=tok)
        else:
            st, _ = rest.request("GET", f"{API}/users/me", token=tok)
        if 200 <= st < 300:
            self.stats.inc("rest_reads")
        else:
            self.stats.note(f"rest_read_{st}", "")

    def recall(self, rest):
        now = time.monotonic()
        while self.recallable:
            t, token, mid = self.recallable.popleft()
            if now - t < 90 and mid:
                st, body = rest.request("POST", f"{API}/messages/{mid}/recall", token=token)
                if st == 200:
                    self.stats.inc("recalls")
                else:
                    self.stats.note(f"recall_{st}", body)
                return

    def paced(self, rate, fn, name):
        """Calls fn(rest) about `rate` times a second until stopped (open loop:
        a generator more than 1 s behind drops the backlog and counts it)."""
        if rate <= 0:
            return
        rest = Rest(self.port)
        interval = 1.0 / rate
        next_t = time.monotonic() + random.uniform(0, interval)
        while not self.stop.is_set():
            now = time.monotonic()
            if next_t > now:
                self.stop.wait(next_t - now)
                continue
            if now - next_t > 1.0:
                self.stats.inc("generator_behind")
                next_t = now
            try:
                fn(rest)
            except Exception as e:  # noqa: BLE001 - counted, the load goes on
                rest.close()
                self.stats.note(f"{name}_failed", repr(e))
            next_t += interval

    def heartbeats(self):
        while not self.done.wait(2.0):
            for c in self.chat:
                if c.heart_beat != "0,0" and c.up.is_set():
                    try:
                        c.ws.send(b"\n")
                    except OSError:
                        pass

    # -- reconnecting clients

    def reconnecting(self, user):
        stats, rest = self.stats, Rest(self.port)
        cursor, cycles = 0, 0
        self.stop.wait(random.uniform(0, 3))
        while not self.stop.is_set():
            cycles += 1
            ws = None
            try:
                if cycles % 5 == 0:
                    st, login = rest.request("POST", f"{API}/auth/login",
                                             {"username": user.name, "password": "soak-password-1"})
                    if st == 200:
                        user.token = login["token"]
                        stats.inc("relogins")
                    else:
                        stats.note(f"relogin_{st}", login)
                hb = random.choice(["0,0", "10000,10000"])
                ws = Ws(self.port, timeout=10)
                ws.stomp("CONNECT", {"accept-version": "1.2", "host": "x", "passcode": user.token,
                                     "heart-beat": hb})
                cmd, h, _ = ws.next_frame()
                if cmd != "CONNECTED":
                    raise ConnectionError(f"{cmd} {h.get('message')}")
                ws.stomp("SUBSCRIBE", {"id": "m", "destination": "/user/queue/message"})
                stats.inc("reconnects")
                while True:
                    st, page = rest.request("GET", f"{API}/inbox/sync?afterInboxSeq={cursor}&limit=100",
                                            token=user.token)
                    if st != 200:
                        stats.note(f"sync_{st}", page)
                        break
                    seqs = [m["inboxSeq"] for m in page["messages"]]
                    if seqs and seqs != list(range(cursor + 1, cursor + 1 + len(seqs))):
                        stats.note("sync_gaps", f"{user.name} after {cursor}: {seqs[:5]}...")
                    stats.inc("synced_messages", len(seqs))
                    if seqs:
                        cursor = seqs[-1]
                    if not page.get("hasMore") or not seqs:
                        break
                stats.inc("syncs")
                if random.random() < 0.3 and self.chat:
                    b = random.choice(self.chat)
                    cmid = f"{self.run_tag}-{next(self.ids)}"
                    body = {"toUserId": b.user.user_id, "messageType": 1, "content": f"from {user.name}",
                            "clientMessageId": cmid, "clientTimestamp": int(time.time() * 1000)}
                    self.tracker.sent(cmid, self.online([b]), "direct", time.monotonic())
                    ws.stomp("SEND", {"destination": "/app/send", "content-type": "application/json",
                                      "receipt": "s"}, json.dumps(body).encode())
                    stats.inc("sent_direct")
                    stats.inc("sent_stomp")
                deadline = time.monotonic() + random.uniform(2, 6)
                ws.sock.settimeout(0.5)
                while time.monotonic() < deadline and not self.stop.is_set():
                    try:
                        cmd, h, _ = ws.next_frame()
                    except TimeoutError:
                        continue
                    if cmd == "MESSAGE":
                        stats.inc("reconnect_pushes")
                    elif cmd == "ERROR":
                        stats.note("reconnect_error_frames", h.get("message"))
                        break
                if random.random() < 0.5:
                    ws.stomp("DISCONNECT", {"receipt": "bye"})
                    ws.sock.settimeout(5)
                    while True:
                        cmd, h, _ = ws.next_frame()
                        if cmd == "RECEIPT" and h.get("receipt-id") == "bye":
                            stats.inc("graceful_disconnects")
                            break
            except TimeoutError as e:
                stats.note("reconnect_timeouts", e)
            except (OSError, ConnectionError, KeyError, ValueError) as e:
                stats.note("reconnect_failed", repr(e))
            finally:
                if ws is not None:
                    ws.close()
            self.stop.wait(random.uniform(1, 4))

    # -- slow consumers

    def slow_consumer(self, user):
        stats = self.stats
        self.stop.wait(random.uniform(0, 5))
        while not self.stop.is_set():
            try:
                ws = Ws(self.port, timeout=10, rcvbuf=4096)
                ws.stomp("CONNECT", {"accept-version": "1.2", "host": "x", "passcode": user.token,
                                     "heart-beat": "0,0"})
                cmd, h, _ = ws.next_frame()
                if cmd != "CONNECTED":
                    raise ConnectionError(f"{cmd} {h.get('message')}")
                ws.stomp("SUBSCRIBE", {"id": "m", "destination": "/user/queue/message",
                                       "ack": "client-individual"})
            except (OSError, ConnectionError) as e:
                stats.note("slow_connect_failed", e)
                self.stop.wait(5)
                continue
            stats.inc("slow_connects")
            if self.stop.wait(self.args.slow_hold * random.uniform(0.8, 1.2)):
                ws.close()
                break
            # Did the server give up on it meanwhile? Its ERROR and close come
            # after the megabytes the kernels buffered: read them all.
            ws.sock.settimeout(2.0)
            seen, closed, deadline = b"", False, time.monotonic() + 20
            while time.monotonic() < deadline:
                try:
                    chunk = ws.sock.recv(1 << 20)
                except TimeoutError:
                    if b"slow consumer" not in seen:
                        break  # nothing more is coming: the server still holds it
                    continue
                except OSError:
                    closed = True
                    break
                if not chunk:
                    closed = True
                    break
                seen = (seen + chunk)[-4096:]
            if closed:
                stats.inc("slow_closed_by_server")
                if b"slow consumer" in seen:
                    stats.inc("slow_told_why")
            else:
                stats.inc("slow_still_open")
            ws.close()
            self.stop.wait(2)

    def start(self, target, *args, name):
        t = threading.Thread(target=target, args=args, name=name, daemon=True)
        t.start()
        self.threads.append(t)


# ---------------------------------------------------------------- abuse (own process)

ABUSE_KINDS = ("half_http", "nul_less", "oversized", "bad_token", "garbage_stomp",
               "garbage_tcp", "bad_ws", "ws_no_connect")
# Outcomes that are what the server should do; anything else is odd.
ABUSE_OK = {
    "half_http": {"closed"},
    "nul_less": {"error", "closed"},
    "oversized": {"error"},
    "bad_token": {"refused"},
    "garbage_stomp": {"error", "closed"},
    "garbage_tcp": {"http_4xx", "closed"},
    "bad_ws": {"closed", "error"},
    "ws_no_connect": {"closed", "error"},
}


def _b64u(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def _forged_token(alg, user_id="1", key=b"not-the-secret"):
    head = _b64u(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    claims = _b64u(json.dumps({"sub": user_id, "exp": int(time.time()) + 3600}).encode())
    signing = f"{head}.{claims}"
    if alg == "none":
        return signing + "."
    return signing + "." + _b64u(hmac.new(key, signing.encode(), hashlib.sha256).digest())


def _wait_closed(sock, limit):
    """'closed' if the peer closes within `limit` seconds (answer bytes
    ignored, an HTTP 4xx noted), else 'open'."""
    sock.settimeout(0.5)
    deadline = time.monotonic() + limit
    first = b""
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            return "closed", first
        if not chunk:
            return "closed", first
        if len(first) < 64:
            first += chunk
    return "open", first


def _stomp_outcome(ws, limit):
    """'error' if an ERROR frame comes within `limit` s, 'closed' if the
    connection ends without one, else 'open'."""
    ws.sock.settimeout(0.5)
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            cmd, _, _ = ws.next_frame()
        except TimeoutError:
            continue
        except ConnectionResetError:
            return "reset"
        except (OSError, ConnectionError):
            return "closed"
        if cmd == "ERROR":
            return "error"
    return "open"


def _stomp_session(port, token):
    ws = Ws(port, timeout=10)
    ws.stomp("CONNECT", {"accept-version": "1.2", "host": "x", "passcode": token, "heart-beat": "0,0"})
    cmd, h, _ = ws.next_frame()
    if cmd != "CONNECTED":
        ws.close()
        raise ConnectionError(f"{cmd} {h.get('message')}")
    return ws


class Abuse:
    def __init__(self, port, tokens, cfg):
        self.port, self.tokens, self.cfg = port, tokens, cfg
        self.lock = threading.Lock()
        self.counts = collections.Counter()
        self.examples = collections.defaultdict(list)
        self.idle_lifetimes = []
        self.turn = itertools.count()
        self.holders = threading.BoundedSemaphore(cfg["max_holders"])

    def count(self, key, example=None):
        with self.lock:
            self.counts[key] += 1
            if example is not None and len(self.examples[key]) < 3:
                self.examples[key].append(str(example)[:200])

    def token(self):
        return self.tokens[next(self.turn) % len(self.tokens)]

    def idle_pool(self, stop):
        try:
            _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass
        sel = selectors.DefaultSelector()

        def open_one():
            s = socket.socket()
            s.setblocking(False)
            try:
                s.connect(("127.0.0.1", self.port))
            except BlockingIOError:
                pass
            except OSError as e:
                s.close()
                self.count("idle:connect_failed", e)
                return
            sel.register(s, selectors.EVENT_READ, time.monotonic())

        while not stop.is_set():
            while len(sel.get_map()) < self.cfg["idle_conns"] and not stop.is_set():
                before = len(sel.get_map())
                open_one()
                if len(sel.get_map()) == before:
                    stop.wait(1)
                    break
            for key, _ in sel.select(timeout=0.5):
                s = key.fileobj
                try:
                    data = s.recv(4096)
                except OSError:
                    data = b""
                if data.startswith(b"HTTP/1.1 503"):
                    self.count("idle:refused_503")
                elif data.startswith(b"HTTP/1.1 408"):
                    self.count("idle:closed_408")
                else:
                    self.count("idle:closed")
                with self.lock:
                    self.idle_lifetimes.append(time.monotonic() - key.data)
                sel.unregister(s)
                s.close()
        for key in list(sel.get_map().values()):
            key.fileobj.close()

    def act(self, kind):
        """One abusive action; its outcome counted as `kind:outcome`, with
        the variant as an example of an odd one."""
        try:
            outcome = getattr(self, kind)()
        except (OSError, ConnectionError) as e:
            self.count(f"{kind}:client_error", repr(e))
            return
        finally:
            self.holders.release()
        outcome, variant = outcome if isinstance(outcome, tuple) else (outcome, kind)
        self.count(f"{kind}:{outcome}", None if outcome in ABUSE_OK[kind] else variant)

    def half_http(self):
        s = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        try:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Half: ")
            return _wait_closed(s, 60)[0]
        finally:
            s.close()

    def nul_less(self):
        ws = _stomp_session(self.port, self.token())
        try:
            ws.send(b"SEND\ndestination:/topic/public.soak-abuse\n\n" + b"x" * self.cfg["nul_less_bytes"])
            return _stomp_outcome(ws, 90)
        finally:
            ws.close()

    def oversized(self):
        ws = _stomp_session(self.port, self.token())
        try:
            body = b"y" * (self.cfg["max_frame_bytes"] + 128 * 1024)
            try:
                ws.send(b"SEND\ndestination:/topic/public.soak-abuse\n\n" + body + b"\0")
            except OSError:
                pass  # the server may stop reading first; what it answered is still there
            return _stomp_outcome(ws, 20)
        finally:
            ws.close()

    def bad_token(self):
        variant = next(self.turn) % 6
        real = self.token()
        flipped = real[:-2] + ("A" if real[-2] != "A" else "B") + real[-1]
        tokens = ["garbage", _forged_token("none"), _forged_token("HS256"), flipped, ""]
        if variant < 4:
            st, _ = http_status(self.port, "GET", f"{API}/users/me", token=tokens[variant] or None)
            return "refused" if st == 401 else f"http_{st}"
        ws = Ws(self.port, timeout=10)
        try:
            hdrs = {"accept-version": "1.2", "host": "x"}
            if variant == 4:
                hdrs["passcode"] = random.choice(tokens[:4])
            ws.stomp("CONNECT", hdrs)
            try:
                cmd, _, _ = ws.next_frame()
            except (OSError, ConnectionError):
                return "refused"
            return "refused" if cmd == "ERROR" else "accepted"
        finally:
            ws.close()

    def garbage_stomp(self):
        junk = {
            "unknown command": b"HELLO\nfoo:bar\n\n\0",
            "SEND without destination": b"SEND\n\nno destination\0",
            "random bytes": os.urandom(300) + b"\n\n\0",  # ended, or the frame would wait
            "100 headers": (b"SEND\ndestination:/topic/public.x\n"
                            + b"".join(b"h%d:v\n" % i for i in range(100)) + b"\n\0"),
            "SUBSCRIBE without id": b"SUBSCRIBE\ndestination:/user/queue/message\n\n\0",
            "ACK without id": b"ACK\n\n\0",
        }
        variant = random.choice(sorted(junk))
        payload = junk[variant]
        ws = _stomp_session(self.port, self.token())
        try:
            ws.send(payload, opcode=1 if variant != "random bytes" else 2)
            return _stomp_outcome(ws, 10), variant
        finally:
            ws.close()

    def garbage_tcp(self):
        s = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        try:
            s.sendall(os.urandom(512) + b"\r\n\r\n")
            outcome, first = _wait_closed(s, 20)
            if first.startswith(b"HTTP/1.1 4"):
                return "http_4xx"
            return outcome
        finally:
            s.close()

    def bad_ws(self):
        ws = _stomp_session(self.port, self.token())
        try:
            if random.random() < 0.5:
                variant = "unmasked frame"
                ws.send_raw(ws_frame(b"SEND\ndestination:/topic/public.x\n\nunmasked\0", masked=False))
            else:
                variant = "reserved opcode"
                ws.send_raw(ws_frame(b"reserved opcode", opcode=3))
            return _stomp_outcome(ws, 15), variant
        finally:
            ws.close()

    def ws_no_connect(self):
        ws = Ws(self.port, timeout=10)
        try:
            return _stomp_outcome(ws, 30)
        finally:
            ws.close()

    def snapshot(self):
        with self.lock:
            lifetimes, self.idle_lifetimes = self.idle_lifetimes, []
            return {"counts": dict(self.counts), "examples": dict(self.examples),
                    "idle_lifetimes": lifetimes}


def abuse_main(port, tokens, cfg, out_q, stop):
    """Entry point of the abuse process (spawned: shares nothing with the
    load, so its work does not distort the latency measured there)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    ab = Abuse(port, tokens, cfg)
    threading.Thread(target=ab.idle_pool, args=(stop,), daemon=True).start()

    def report():
        while True:
            done = stop.wait(2)
            snap = ab.snapshot()
            r = resource.getrusage(resource.RUSAGE_SELF)
            snap["cpu"] = r.ru_utime + r.ru_stime
            out_q.put(snap)
            if done:
                return

    reporter = threading.Thread(target=report, daemon=True)
    reporter.start()
    interval = 1.0 / cfg["rate"] if cfg["rate"] > 0 else None
    kinds = itertools.cycle(ABUSE_KINDS)
    while interval and not stop.wait(interval):
        kind = next(kinds)
        if not ab.holders.acquire(blocking=False):
            ab.count("skipped_busy")
            continue
        threading.Thread(target=ab.act, args=(kind,), daemon=True).start()
    reporter.join(timeout=10)


# ---------------------------------------------------------------- server and monitor


def server_env(port, data, extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
    env.update(
        HERALD_LISTEN=f"127.0.0.1:{port}",
        HERALD_DATA_DIR=data,
        HERALD_REGISTRATIONS_PER_HOUR="0",
        HERALD_LOGIN_MAX_FAILURES="0",
        HERALD_HTTP_RATE_PER_SEC="100000",
        HERALD_SEND_RATE_PER_SEC="100000",
        HERALD_SEND_BURST="100000",
        HERALD_LOG=os.environ.get("SOAK_SERVER_LOG_LEVEL", "warn"),
    )
    for item in extra.split():
        k, _, v = item.partition("=")
        env[k] = v
    return env


# Server-side counters worth a line in the summary (from GET /metrics).
KEY_METRICS = (
    "herald_messages_sent_total", "herald_messages_delivered_total", "herald_messages_redelivered_total",
    "herald_messages_dead_lettered_total", "herald_slow_consumers_total", "herald_dropped_pushes_total",
    "herald_stalled_frames_total", "herald_partial_frames_refused_total", "herald_tcp_connections_refused_total",
    "herald_tcp_connections_evicted_total", "herald_tokens_rejected_total", "herald_topic_keys_in_memory",
    "herald_tcp_connections", "herald_ws_connections",
)


def scrape_metrics(port):
    """herald_* counters and gauges from /metrics, labelled series summed
    (histograms left out); {} if the server does not answer."""
    st, text = http_status(port, "GET", "/metrics", timeout=5)
    out = {}
    if st != 200 or not isinstance(text, str):
        return out
    for line in text.splitlines():
        if not line.startswith("herald_"):
            continue
        name_labels, _, value = line.rpartition(" ")
        name = name_labels.split("{", 1)[0]
        if name.endswith(("_bucket", "_sum", "_count")) or name.endswith(("_seconds",)):
            continue
        try:
            out[name] = out.get(name, 0) + float(value)
        except ValueError:
            pass
    return {k: (int(v) if v == int(v) else v) for k, v in out.items()}


def summarize_abuse(counts):
    """{kind: (ok, odd, {outcome: n})} from the abuse process's counters."""
    out = {}
    for key, n in counts.items():
        kind, _, outcome = key.partition(":")
        if kind not in ABUSE_OK:
            continue
        ok, odd, by = out.get(kind, (0, 0, {}))
        by[outcome] = by.get(outcome, 0) + n
        if outcome in ABUSE_OK[kind]:
            ok += n
        else:
            odd += n
        out[kind] = (ok, odd, by)
    return out


def diff(now, before):
    return {k: v - before.get(k, 0) for k, v in now.items() if v - before.get(k, 0)}


def main():
    class Fmt(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
        pass

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=Fmt)
    env = os.environ.get
    ap.add_argument("--self-test", action="store_true", help="check the growth rule on synthetic series and exit")
    ap.add_argument("--bin", help="the server binary (HERALD_BIN)", default=env("HERALD_BIN", os.path.join(env("CARGO_TARGET_DIR", "target"),
                                                                   "release", "herald")))
    ap.add_argument("--duration", type=float, default=float(env("DURATION", 3600)), help="seconds of load")
    ap.add_argument("--warmup", type=float, default=float(env("WARMUP", 600)),
                    help="seconds of load not judged for growth")
    ap.add_argument("--sample-secs", type=float, default=float(env("SOAK_SAMPLE_SECS", 60)),
                    help="seconds between two reported samples (the rule assumes minutes)")
    ap.add_argument("--jsonl", default=env("SOAK_JSONL"), help="per-minute samples (default: the run's temp dir)")
    ap.add_argument("--keep", action="store_true", default=env("SOAK_KEEP") == "1",
                    help="keep the server's data directory")
    ap.add_argument("--server-env", default=env("SOAK_SERVER_ENV", ""),
                    help="extra K=V settings for the server, space-separated")
    ap.add_argument("--chat-users", type=int, default=60, help="always-online users, one STOMP connection each")
    ap.add_argument("--chat-rate", type=float, default=40.0, help="1:1 sends per second, all users")
    ap.add_argument("--group-sizes", default="20,35,50", help="one group per size, members among the chat users")
    ap.add_argument("--group-rate", type=float, default=2.0, help="group sends per second, all groups")
    ap.add_argument("--reconnect-users", type=int, default=10, help="clients that connect, sync, disconnect, repeat")
    ap.add_argument("--reconnect-share", type=float, default=0.1,
                    help="share of 1:1 sends that go to reconnecting users")
    ap.add_argument("--slow-users", type=int, default=3, help="subscribers that never read")
    ap.add_argument("--slow-rate", type=float, default=15.0,
                    help="sends per second to slow consumers, in all (with the redeliveries of what they never "
                         "ack, enough to fill the kernel's buffers and the server's queue within --slow-hold)")
    ap.add_argument("--slow-bytes", type=int, default=4000, help="content size of the sends to slow consumers")
    ap.add_argument("--slow-hold", type=float, default=180.0,
                    help="seconds a slow consumer stays connected (+-20 %%) before it is replaced")
    ap.add_argument("--typing-rate", type=float, default=1.0, help="public-topic broadcasts per second")
    ap.add_argument("--read-rate", type=float, default=5.0, help="REST reads per second")
    ap.add_argument("--recall-every", type=float, default=20.0, help="seconds between recalls")
    ap.add_argument("--idle-conns", type=int, default=100, help="idle TCP connections kept open")
    ap.add_argument("--abuse-rate", type=float, default=2.0, help="abusive actions per second")
    ap.add_argument("--abusers", type=int, default=6, help="users whose tokens the abusive clients use")
    ap.add_argument("--nul-less-bytes", type=int, default=200_000, help="bytes of a frame sent without its NUL")
    ap.add_argument("--max-frame-bytes", type=int, default=2 * 1024 * 1024,
                    help="the server's limit; oversized messages are 128 KiB over it")
    ap.add_argument("--late-after", type=float, default=60.0, help="a push not seen after this is missing")
    ap.add_argument("--rss-tol-mb", type=float, default=float(env("SOAK_RSS_TOL_MB", 5.0)),
                    help="absolute RSS growth tolerance (see growth_verdict)")
    ap.add_argument("--rss-tol-rel", type=float, default=0.05, help="relative RSS growth tolerance")
    ap.add_argument("--fd-tol", type=float, default=float(env("SOAK_FD_TOL", 20)),
                    help="absolute open-fd growth tolerance")
    ap.add_argument("--fd-tol-rel", type=float, default=0.10, help="relative open-fd growth tolerance")
    args = ap.parse_args()

    if args.self_test:
        return self_test()
    if args.duration <= 0 or args.warmup < 0 or args.warmup >= args.duration:
        ap.error("need 0 <= WARMUP < DURATION")
    if not os.access(args.bin, os.X_OK):
        ap.error(f"no server binary at {args.bin} (cargo build --release, or set HERALD_BIN)")
    sizes = [int(x) for x in args.group_sizes.split(",") if x.strip()]
    if any(s > args.chat_users for s in sizes) or args.chat_users < 2:
        ap.error("every group size must be at most --chat-users (and --chat-users >= 2)")

    binary = os.path.abspath(args.bin)
    try:
        version = subprocess.run([binary, "--version"], capture_output=True, text=True,
                                 timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        version = "?"
    tmp = tempfile.mkdtemp(prefix="herald-soak-")
    data = os.path.join(tmp, "data")
    jsonl_path = args.jsonl or os.path.join(tmp, "soak.jsonl")
    if os.path.dirname(jsonl_path):
        os.makedirs(os.path.dirname(jsonl_path), exist_ok=True)
    port = free_port()
    log_path = os.path.join(tmp, "server.log")
    log = open(log_path, "w")
    started_at = datetime.datetime.now(datetime.timezone.utc)
    print(f"soak: {binary} ({version}), port {port}, temp dir {tmp}", flush=True)
    print(f"soak: {args.duration:.0f} s of load, warm-up {args.warmup:.0f} s, a sample every "
          f"{args.sample_secs:.0f} s; samples to {jsonl_path}", flush=True)
    server = subprocess.Popen([binary, "serve"], env=server_env(port, data, args.server_env),
                              cwd=tmp, stdout=log, stderr=subprocess.STDOUT)
    abuse_proc = None
    abuse_stop = None
    soak = None
    failed = []
    try:
        for _ in range(600):
            if server.poll() is not None:
                raise SystemExit(f"soak: the server exited at start ({server.returncode}); see {log_path}")
            try:
                st, _ = http_status(port, "GET", "/healthz", timeout=1) if _alive(port) else (0, None)
            except OSError:
                st = 0
            if st == 200:
                break
            time.sleep(0.1)
        else:
            raise SystemExit("soak: the server did not answer /healthz within 60 s")

        soak = Soak(args, port, server.pid)
        tag = soak.run_tag
        names = ([f"sk{tag}c{i}" for i in range(args.chat_users)]
                 + [f"sk{tag}r{i}" for i in range(args.reconnect_users)]
                 + [f"sk{tag}s{i}" for i in range(args.slow_users)]
                 + [f"sk{tag}x{i}" for i in range(args.abusers)])
        t = time.monotonic()
        with ThreadPoolExecutor(4) as pool:
            users = list(pool.map(lambda n: make_user(port, n), names))
        chat_users = users[:args.chat_users]
        soak.reconnect_users = users[args.chat_users:args.chat_users + args.reconnect_users]
        soak.slow_users = users[args.chat_users + args.reconnect_users:
                                args.chat_users + args.reconnect_users + args.slow_users]
        abusers = users[len(users) - args.abusers:] if args.abusers else []
        acks = ["auto", "auto", "stomp-ack", "app-ack"]
        for i, u in enumerate(chat_users):
            soak.chat.append(ChatClient(soak, u, ack=acks[i % 4],
                                        heart_beat="5000,10000" if i % 2 else "0,0",
                                        typing=i % 2 == 0, auth_header=i % 3 == 0))
        for i, size in enumerate(sizes):
            members = random.sample(soak.chat, size)
            owner = members[0]
            member_ids = [m.user.user_id for m in members[1:]]
            if i == len(sizes) - 1:
                member_ids += [u.user_id for u in soak.slow_users]
            st, g = http_status(port, "POST", f"{API}/groups",
                                {"name": f"soak group {i}", "memberIds": member_ids}, owner.user.token)
            if st != 201:
                raise SystemExit(f"soak: creating a group: {st} {g}")
            soak.groups.append((g["groupId"], members, g.get("sessionId")))
        for c in soak.chat:
            c.thread.start()
        for c in soak.chat:
            c.up.wait(30)
        down = sum(not c.up.is_set() for c in soak.chat)
        print(f"soak: {len(users)} users registered, {len(sizes)} groups ({args.group_sizes} members), "
              f"{len(soak.chat) - down}/{len(soak.chat)} chat clients online "
              f"in {time.monotonic() - t:.1f} s", flush=True)

        # The abuse process first, then the load threads.
        ctx = multiprocessing.get_context("spawn")
        abuse_q = ctx.Queue()
        abuse_stop = ctx.Event()
        abuse_cfg = {"idle_conns": args.idle_conns, "rate": args.abuse_rate, "max_holders": 40,
                     "nul_less_bytes": args.nul_less_bytes, "max_frame_bytes": args.max_frame_bytes}
        if args.abusers:
            abuse_proc = ctx.Process(target=abuse_main, name="soak-abuse",
                                     args=(port, [u.token for u in abusers], abuse_cfg, abuse_q, abuse_stop))
            abuse_proc.start()
        senders = 4
        for i in range(senders):
            soak.start(soak.paced, args.chat_rate / senders, soak.send_direct, "direct", name=f"direct-{i}")
        if soak.groups:
            soak.start(soak.paced, args.group_rate, soak.send_group, "group", name="group")
        soak.start(soak.paced, args.slow_rate, soak.send_slow, "slow", name="slow-sender")
        soak.start(soak.paced, args.typing_rate, soak.send_typing, "typing", name="typing")
        soak.start(soak.paced, args.read_rate, soak.rest_read, "reads", name="reads")
        if args.recall_every > 0:
            soak.start(soak.paced, 1 / args.recall_every, soak.recall, "recall", name="recall")
        soak.start(soak.heartbeats, name="heartbeats")
        for u in soak.reconnect_users:
            soak.start(soak.reconnecting, u, name=f"reconnect-{u.name}")
        for u in soak.slow_users:
            soak.start(soak.slow_consumer, u, name=f"slow-{u.name}")

        failed = monitor(soak, server, args, abuse_q, abuse_stop, abuse_proc, jsonl_path, binary, version,
                         started_at, log_path)
    except KeyboardInterrupt:
        print("soak: interrupted", flush=True)
        failed = ["interrupted"]
    finally:
        if soak is not None:
            soak.stop.set()
            soak.done.set()
        if abuse_stop is not None:
            abuse_stop.set()
        if abuse_proc is not None:
            abuse_proc.join(timeout=15)
            if abuse_proc.is_alive():
                abuse_proc.terminate()
        if server.poll() is None:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        log.close()
        if not args.keep:
            shutil.rmtree(data, ignore_errors=True)
    return 1 if failed else 0


def _alive(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def monitor(soak, server, args, abuse_q, abuse_stop, abuse_proc, jsonl_path, binary, version, started_at,
            log_path):
    """Samples the server until the end of the load; then stops everything
    and prints the summary. Answers the list of failures (empty: pass)."""
    pid = server.pid
    out = open(jsonl_path, "w")
    config = {k: v for k, v in vars(args).items() if k not in ("self_test",)}
    out.write(json.dumps({"run": {"binary": binary, "version": version, "started": started_at.isoformat(),
                                  "cpus": os.cpu_count(), "config": config}}) + "\n")
    clk_start = time.monotonic()
    cpu0 = cpu_seconds(pid)
    gen0 = _gen_cpu()
    st0 = proc_status(pid)
    start = {"rss_mb": st0["VmRSS"] / 1024, "fds": fd_count(pid)}
    abuse_latest = {"counts": {}, "examples": {}, "cpu": 0.0}
    abuse_prev_counts, abuse_prev_cpu = {}, 0.0
    idle_lifetimes, all_idle_lifetimes = [], []
    samples = []
    readings = []
    all_readings = []
    prev = soak.stats.snapshot()
    prev_cpu, prev_gen, prev_t = cpu0, gen0, clk_start
    failures = []
    n_samples = max(1, round(args.duration / args.sample_secs))
    next_sample = clk_start + args.sample_secs
    next_reading = clk_start
    last = None
    i = 0
    while i < n_samples:
        now = time.monotonic()
        wake = min(next_reading, next_sample)
        if wake > now:
            time.sleep(wake - now)
            continue
        if server.poll() is not None:
            failures.append(f"the server exited during the run (status {server.returncode})")
            print(f"soak: FAIL: the server exited (status {server.returncode}); see {log_path}", flush=True)
            break
        while not abuse_q.empty():
            try:
                abuse_latest = abuse_q.get_nowait()
                idle_lifetimes.extend(abuse_latest.get("idle_lifetimes", []))
                all_idle_lifetimes.extend(abuse_latest.get("idle_lifetimes", []))
            except Exception:  # noqa: BLE001 - queue.Empty
                break
        if now >= next_reading:
            try:
                st = proc_status(pid)
                r = {"t": now - clk_start, "rss_mb": st["VmRSS"] / 1024, "anon_mb": st.get("RssAnon", 0) / 1024,
                     "fds": fd_count(pid), "threads": st.get("Threads")}
                readings.append(r)
                all_readings.append(r)
                last = r
            except (FileNotFoundError, ProcessLookupError):
                pass
            next_reading += 5
        if now < next_sample:
            continue
        i += 1
        next_sample += args.sample_secs
        soak.tracker.expire(now, args.late_after)
        lat, missing = soak.tracker.take_interval()
        snap = soak.stats.snapshot()
        d = diff(snap, prev)
        prev = snap
        cpu, gen = cpu_seconds(pid), _gen_cpu()
        abuse_cpu = abuse_latest.get("cpu", 0.0)
        wall = now - prev_t
        server_cpu = (cpu - prev_cpu) / wall * 100
        gen_cpu = ((gen - prev_gen) + (abuse_cpu - abuse_prev_cpu)) / wall * 100
        prev_cpu, prev_gen, prev_t, abuse_prev_cpu = cpu, gen, now, abuse_cpu
        ab_counts = abuse_latest.get("counts", {})
        ab = summarize_abuse(diff(ab_counts, abuse_prev_counts))
        abuse_prev_counts = ab_counts
        rs = readings or ([last] if last else [])
        readings = []
        both = lat.get("direct", []) + lat.get("group", [])
        s = {
            "sample": i, "t": round(now - clk_start, 1),
            "rss_mb": round(statistics.median(x["rss_mb"] for x in rs), 2),
            "rss_max_mb": round(max(x["rss_mb"] for x in rs), 2),
            "anon_mb": round(statistics.median(x["anon_mb"] for x in rs), 2),
            "fds": statistics.median(x["fds"] for x in rs),
            "fds_max": max(x["fds"] for x in rs),
            "threads": rs[-1]["threads"],
            "server_cpu_pct": round(server_cpu, 1), "generator_cpu_pct": round(gen_cpu, 1),
            "latency_ms": lat_summary(both),
            "latency_by_kind_ms": {k: lat_summary(v) for k, v in lat.items()},
            "missing_pushes": missing,
            "counts": d,
            "abuse": {k: {"ok": ok, "odd": odd, "outcomes": by} for k, (ok, odd, by) in ab.items()},
            "idle_closed_median_s": (round(statistics.median(idle_lifetimes), 1) if idle_lifetimes else None),
            "metrics": _metrics(soak.port),
        }
        idle_lifetimes = []
        samples.append(s)
        out.write(json.dumps(s) + "\n")
        out.flush()
        print(minute_line(s, args), flush=True)

    # ---- the end: stop the load, let pushes in flight arrive, stop the server
    soak.stop.set()
    end_reading = last
    if abuse_stop is not None:
        abuse_stop.set()
    deadline = time.monotonic() + 10
    while soak.tracker.outstanding() and time.monotonic() < deadline:
        time.sleep(0.2)
    soak.tracker.expire(time.monotonic(), 0)
    soak.done.set()
    for t in soak.threads + [c.thread for c in soak.chat]:
        t.join(timeout=12)
    final_counts = soak.stats.snapshot()
    final_examples = dict(soak.stats.examples)
    if abuse_proc is not None:
        abuse_proc.join(timeout=15)
    while True:
        try:
            abuse_latest = abuse_q.get(timeout=0.5)
            all_idle_lifetimes.extend(abuse_latest.get("idle_lifetimes", []))
        except Exception:  # noqa: BLE001 - queue.Empty
            break
    final_metrics = _metrics(soak.port) if server.poll() is None else {}
    shutdown = None
    if server.poll() is None:
        t = time.monotonic()
        server.send_signal(signal.SIGTERM)
        try:
            code = server.wait(timeout=30)
            shutdown = (code, time.monotonic() - t)
        except subprocess.TimeoutExpired:
            shutdown = (None, 30.0)
    with open(log_path, errors="replace") as f:
        log_text = f.read()
    panics = log_text.count("panicked")

    # ---- verdicts
    post = [s for s in samples if s["t"] - args.sample_secs >= args.warmup - 1e-6]
    rss_v = growth_verdict([s["rss_mb"] for s in post], args.rss_tol_mb, args.rss_tol_rel)
    fds_v = growth_verdict([s["fds"] for s in post], args.fd_tol, args.fd_tol_rel)
    if rss_v["grew"]:
        failures.append(f"RSS kept growing after the warm-up ({rss_v['why']})")
    if fds_v["grew"]:
        failures.append(f"open fds kept growing after the warm-up ({fds_v['why']})")
    if panics:
        failures.append(f"{panics} panic(s) in the server log")
    all_lat = soak.tracker.all.get("direct", []) + soak.tracker.all.get("group", [])
    if samples and not all_lat:
        failures.append("no push was measured: the load did not run")
    warnings = []
    for key in sorted(final_counts):
        if key.startswith(("chat_dropped", "chat_connect_failed", "chat_error_frames", "send_http_",
                           "send_rejected_", "sync_", "reconnect_failed", "reconnect_timeouts",
                           "reconnect_error_frames", "rest_read_", "recall_", "bad_push",
                           "slow_connect_failed", "relogin_")) or key.endswith("_failed"):
            ex = final_examples.get(key, [])
            warnings.append(f"{key}: {final_counts[key]}" + (f" (e.g. {ex[0]})" if ex else ""))
    ab_counts_total = abuse_latest.get("counts", {})
    ab_total = summarize_abuse(ab_counts_total)
    ab_examples = abuse_latest.get("examples", {})
    for kind, (ok, odd, by) in sorted(ab_total.items()):
        if odd:
            odd_by = {k: v for k, v in by.items() if k not in ABUSE_OK[kind]}
            ex = {k: ab_examples.get(f"{kind}:{k}", []) for k in odd_by}
            warnings.append(f"abuse {kind}: {odd} odd outcome(s) {odd_by}, e.g. {ex}")
    if shutdown and shutdown[0] != 0:
        warnings.append(f"the server's exit status on SIGTERM was {shutdown[0]}")

    summary = {
        "binary": binary, "version": version, "started": started_at.isoformat(),
        "duration_s": args.duration, "warmup_s": args.warmup, "samples": len(samples),
        "rss_mb": {"start": round(start["rss_mb"], 1),
                   "end": round(end_reading["rss_mb"], 1) if end_reading else None,
                   "max": round(max((r["rss_mb"] for r in all_readings), default=0), 1)},
        "fds": {"start": start["fds"], "end": end_reading["fds"] if end_reading else None,
                "max": max((r["fds"] for r in all_readings), default=0)},
        "latency_ms": lat_summary(all_lat),
        "latency_by_kind_ms": {k: lat_summary(v) for k, v in soak.tracker.all.items()},
        "missing_pushes": soak.tracker.missing_total,
        "counts": final_counts,
        "idle": {"closed_by_server": ab_counts_total.get("idle:closed", 0) + ab_counts_total.get("idle:closed_408", 0),
                 "refused": ab_counts_total.get("idle:refused_503", 0),
                 "median_lifetime_s": (round(statistics.median(all_idle_lifetimes), 1)
                                       if all_idle_lifetimes else None)},
        "abuse": {k: {"ok": ok, "odd": odd, "outcomes": by} for k, (ok, odd, by) in ab_total.items()},
        "rss_growth": rss_v, "fds_growth": fds_v,
        "server_metrics": final_metrics,
        "shutdown": {"status": shutdown[0], "seconds": round(shutdown[1], 2)} if shutdown else None,
        "panics": panics, "warnings": warnings, "failures": failures,
        "result": "FAIL" if failures else "PASS",
    }
    out.write(json.dumps({"summary": summary}) + "\n")
    out.close()
    print_summary(summary, args, jsonl_path, log_path)
    return failures


def _metrics(port):
    try:
        return scrape_metrics(port)
    except OSError:
        return {}


def _gen_cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def minute_line(s, args):
    c = s["counts"]
    lat = s["latency_ms"]
    ab_ok = sum(v["ok"] for v in s["abuse"].values())
    ab_odd = sum(v["odd"] for v in s["abuse"].values())
    problems = sum(v for k, v in c.items() if k.startswith(("chat_dropped", "send_http_", "send_rejected_",
                                                             "sync_", "reconnect_failed", "reconnect_timeouts",
                                                             "rest_read_")) or k.endswith("_failed"))
    minute = s["t"] / 60
    return (f"{minute:5.1f}m  rss {s['rss_mb']:6.1f} MB  fds {s['fds']:4.0f}  thr {s['threads']}  "
            f"cpu {s['server_cpu_pct']:3.0f}% (gen {s['generator_cpu_pct']:3.0f}%) | "
            f"sent 1:1 {c.get('sent_direct', 0)} grp {c.get('sent_group', 0)} slow {c.get('sent_slow', 0)} | "
            f"push p50 {fmt_ms(lat['p50'])} p99 {fmt_ms(lat['p99'])} max {fmt_ms(lat['max'])} ms "
            f"(n {lat['n']}, missing {s['missing_pushes']}) | "
            f"sync {c.get('syncs', 0)} ({c.get('synced_messages', 0)} msgs) | "
            f"slow closed {c.get('slow_closed_by_server', 0)} open {c.get('slow_still_open', 0)} | "
            f"abuse ok {ab_ok} odd {ab_odd} | problems {problems}")


def _dur(secs):
    return f"{secs / 60:.0f} min" if secs >= 120 else f"{secs:.0f} s"


def print_summary(s, args, jsonl_path, log_path):
    c = s["counts"]
    lat = s["latency_ms"]
    rv, fv = s["rss_growth"], s["fds_growth"]

    def growth(v, unit):
        if not v["judged"]:
            return f"not judged ({v['why']})"
        per_min = v["slope"] * 60 / args.sample_secs
        return (f"last third over middle third {v['rise']:+.1f} {unit} (max), {v['rise_median']:+.1f} {unit} "
                f"(median), tolerance {v['tol']:.1f} {unit}, Theil-Sen slope {per_min:+.2f} {unit}/min over "
                f"{v['n']} samples: {'GREW' if v['grew'] else 'ok'}")

    ab = s["abuse"]
    ab_text = ", ".join(f"{k} {v['ok']}/{v['ok'] + v['odd']}" for k, v in sorted(ab.items()))
    by_kind = "; ".join(f"{k} p50 {fmt_ms(v['p50'])} / p99 {fmt_ms(v['p99'])} / max {fmt_ms(v['max'])} ms "
                        f"(n {v['n']})" for k, v in sorted(s["latency_by_kind_ms"].items()))
    started = s["started"][:16].replace("T", " ")
    shutdown = s["shutdown"]
    lines = [
        "",
        f"### Soak: {_dur(s['duration_s'])} of mixed load (scripts/soak.sh), {started} UTC",
        "",
        f"`{os.path.basename(s['binary'])}` ({s['version']}, {s['binary']}), embedded store, "
        f"{os.cpu_count()} cores shared with the generator; warm-up {_dur(s['warmup_s'])}, "
        f"{s['samples']} samples.",
        "",
        "| | start | end | max |",
        "|---|---|---|---|",
        f"| RSS (MB) | {s['rss_mb']['start']} | {s['rss_mb']['end']} | {s['rss_mb']['max']} |",
        f"| open fds | {s['fds']['start']} | {s['fds']['end']} | {s['fds']['max']} |",
        "",
        f"- Send-to-push latency (1:1 and group, at each online recipient): p50 {fmt_ms(lat['p50'])} ms, "
        f"p99 {fmt_ms(lat['p99'])} ms, max {fmt_ms(lat['max'])} ms over {lat['n']:,} pushes; "
        f"{s['missing_pushes']} not pushed within {args.late_after:.0f} s. By kind: {by_kind}.",
        f"- Load: {c.get('sent_direct', 0):,} 1:1 sends ({c.get('sent_rest', 0):,} REST and "
        f"{c.get('sent_stomp', 0):,} STOMP in all), {c.get('sent_group', 0):,} group sends "
        f"(groups of {args.group_sizes}), {c.get('sent_slow', 0):,} to {args.slow_users} slow consumers "
        f"({c.get('slow_closed_by_server', 0)} closed by the server, {c.get('slow_told_why', 0)} of them "
        f"with ERROR 'slow consumer', {c.get('slow_still_open', 0)} still open after {args.slow_hold:.0f} s +-20 %), {c.get('sent_direct-offline', 0):,} to "
        f"reconnecting users; {c.get('pushes', 0):,} pushes read, {c.get('acks_sent', 0):,} acks, "
        f"{c.get('recalls', 0)} recalls, {c.get('rest_reads', 0):,} REST reads, "
        f"{c.get('typing_sent', 0):,} typing broadcasts; {c.get('reconnects', 0):,} reconnect cycles "
        f"({c.get('syncs', 0):,} syncs, {c.get('synced_messages', 0):,} messages synced, "
        f"{c.get('sync_gaps', 0)} gaps, {c.get('graceful_disconnects', 0):,} graceful disconnects); "
        f"generator behind schedule {c.get('generator_behind', 0)} time(s).",
        f"- Abuse (expected outcome / all): {ab_text or 'none'}; {args.idle_conns} idle TCP connections "
        f"held throughout, {s['idle']['closed_by_server']:,} closed by the server (median after "
        f"{s['idle']['median_lifetime_s']} s) and reopened, {s['idle']['refused']} refused with 503.",
        f"- Server counters at the end: " + (", ".join(
            f"{k.removeprefix('herald_')} {s['server_metrics'][k]:,}" for k in KEY_METRICS
            if k in s["server_metrics"])
            or "none (no /metrics)") + ".",
        f"- Growth after the warm-up: RSS {growth(rv, 'MB')}; fds {growth(fv, 'fds')}.",
        f"- Shutdown on SIGTERM: " + (f"status {shutdown['status']} in {shutdown['seconds']} s"
                                      if shutdown else "not reached (the server had exited)")
        + f"; panics in the log: {s['panics']}.",
    ]
    for w in s["warnings"]:
        lines.append(f"- Note: {w}")
    lines.append(f"- Result: **{s['result']}**" + (": " + "; ".join(s["failures"]) if s["failures"] else ""))
    lines.append("")
    lines.append(f"(samples: {jsonl_path}; server log: {log_path})")
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    sys.exit(main())
