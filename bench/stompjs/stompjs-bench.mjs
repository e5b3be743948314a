#!/usr/bin/env node
// stompjs-bench: an independent open-loop load generator on stomp.js (the
// STOMP client browsers use), for comparing Herald and RabbitMQ Web-STOMP
// with something other than our own Rust herald-bench.
//
// Durable 1:1 chat, the same flow as `herald-bench rate`
// (src/bin/herald-bench): C clients, each one Herald user (or one RabbitMQ
// queue); message k is due at t0 + k/R, is sent by client k mod C (sequence
// number floor(k / C)) to a random other client, and its latency is
// measured from its due time, not from the moment it was written, so a
// server that stalls the generator cannot hide its delays (no coordinated
// omission). One timer loop sends every message whose due time has passed
// (it catches up after a late wake-up); Node's timers have 1 ms
// granularity, so latencies include up to about 1 ms of generator timer
// slack (as herald-bench's tokio ticks do). Every received message is
// acked (client-individual). Loss = measured messages sent but never
// received (after the drain period), duplicates are counted.
//
// Targets:
//   --target herald --url http://HOST:PORT   users registered over REST, or
//       read from --users-file (the herald-bench users file: cached tokens
//       spare the argon2 logins); CONNECT to ws://HOST:PORT/ws with
//       `Authorization: Bearer <token>`; SUBSCRIBE /user/queue/message
//       (client-individual), /user/queue/ack and /user/queue/errors; SEND
//       /app/send with a JSON SendReq.
//   --target stomp --url ws://HOST:PORT/ws [--login --passcode --vhost]
//       [--durable]   SUBSCRIBE /queue/<prefix>i (client-individual;
//       durable:true, auto-delete:false with --durable); SEND
//       /amq/queue/<prefix>j (persistent:true with --durable).
//
// Output: one JSON line on stdout (field names as herald-bench's, plus
// "generator":"stompjs"), a readable summary on stderr. Exit status 0, 2
// if connections were lost during the run, 1 on a setup error.
//
// Herald applies a per-user send rate limit (default 50 msg/s, burst 100)
// and a per-user connection limit; for load tests start it with e.g.
// HERALD_SEND_RATE_PER_SEC=100000 HERALD_SEND_BURST=100000
// HERALD_MAX_CONNECTIONS_PER_USER=100000, and (it registers and logs in
// every user from one address) HERALD_REGISTRATIONS_PER_HOUR=0
// HERALD_LOGIN_MAX_FAILURES=0.

import { parseArgs } from 'node:util';
import { performance } from 'node:perf_hooks';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { randomBytes, randomInt } from 'node:crypto';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { Client } from '@stomp/stompjs';
import WebSocket from 'ws';

const require = createRequire(import.meta.url);

const USAGE = `usage: node stompjs-bench.mjs [options]

  --target herald|stomp     server under test (default herald)
  --url URL                 herald: http://HOST:PORT (default http://127.0.0.1:8080);
                            stomp: the WebSocket URL, e.g. ws://127.0.0.1:15674/ws
  --login L --passcode P    stomp: CONNECT credentials (default guest/guest)
  --vhost V                 stomp: CONNECT host header, the RabbitMQ vhost (default /)
  --durable                 stomp: durable queues, persistent messages
  --queue-prefix P          stomp: client i consumes /queue/<P>i (default b-)
  --users-file F            herald: herald-bench users file (created/updated)
  --clients N               connected clients, at least 2 (default 1000)
  --rate R                  total offered rate, msg/s (default 2500)
  --duration S              measured seconds (default 20)
  --warmup S                unmeasured warm-up seconds before (default 2)
  --drain S                 wait at most S seconds for stragglers (default 3)
  --grace-ms MS             delivered_rate counts deliveries up to MS after the
                            end of the sending window (default 1000)
  --size B                  message content size in bytes (default 64)
  --server-pid PID          report the server's CPU and RSS (Linux /proc)
  --setup-concurrency N     parallel REST requests during setup (default 16)
  --connect-concurrency N   parallel connection handshakes (default 64)
  --connect-timeout S       timeout of one connection + subscription (default 15)
  --max-buffered BYTES      a message whose connection has more than this
                            unsent counts as dropped (default 4194304)
  --help
`;

// ------------------------------------------------------------------ options

function parseOptions(argv) {
  const { values } = parseArgs({
    args: argv,
    strict: true,
    options: {
      target: { type: 'string', default: 'herald' },
      url: { type: 'string' },
      login: { type: 'string', default: 'guest' },
      passcode: { type: 'string', default: 'guest' },
      vhost: { type: 'string', default: '/' },
      durable: { type: 'boolean', default: false },
      'queue-prefix': { type: 'string', default: 'b-' },
      'users-file': { type: 'string' },
      clients: { type: 'string', default: '1000' },
      rate: { type: 'string', default: '2500' },
      duration: { type: 'string', default: '20' },
      warmup: { type: 'string', default: '2' },
      drain: { type: 'string', default: '3' },
      'grace-ms': { type: 'string', default: '1000' },
      size: { type: 'string', default: '64' },
      'server-pid': { type: 'string' },
      'setup-concurrency': { type: 'string', default: '16' },
      'connect-concurrency': { type: 'string', default: '64' },
      'connect-timeout': { type: 'string', default: '15' },
      'max-buffered': { type: 'string', default: String(4 * 1024 * 1024) },
      help: { type: 'boolean', default: false },
    },
  });
  if (values.help) {
    process.stdout.write(USAGE);
    process.exit(0);
  }
  const number = (name, { min = -Infinity, integer = false } = {}) => {
    const v = Number(values[name]);
    if (!Number.isFinite(v) || v < min || (integer && !Number.isInteger(v))) {
      throw new Error(`--${name}: bad value ${values[name]}${min > -Infinity ? ` (at least ${min})` : ''}`);
    }
    return v;
  };
  const o = {
    target: values.target,
    url: values.url,
    login: values.login,
    passcode: values.passcode,
    vhost: values.vhost,
    durable: values.durable,
    queuePrefix: values['queue-prefix'],
    usersFile: values['users-file'],
    clients: number('clients', { min: 2, integer: true }), // at least 2: a peer to send to
    rate: number('rate', { min: 0 }),
    duration: number('duration', { min: 0 }),
    warmup: number('warmup', { min: 0 }),
    drain: number('drain', { min: 0 }),
    graceMs: number('grace-ms', { min: 0 }),
    size: number('size', { min: 0, integer: true }),
    serverPid: values['server-pid'] === undefined ? null : number('server-pid', { min: 1, integer: true }),
    setupConcurrency: Math.max(1, number('setup-concurrency', { integer: true })),
    connectConcurrency: Math.max(1, number('connect-concurrency', { integer: true })),
    connectTimeoutMs: Math.max(100, number('connect-timeout') * 1000),
    maxBuffered: number('max-buffered', { min: 0 }),
  };
  if (!(o.rate > 0)) throw new Error('--rate must be positive');
  if (!(o.duration > 0)) throw new Error('--duration must be positive');
  if (o.target === 'herald') {
    const base = (o.url ?? 'http://127.0.0.1:8080').replace(/\/+$/, '');
    if (!base.startsWith('http://')) throw new Error('--url must be http://HOST:PORT for --target herald');
    const rest = base.slice('http://'.length);
    o.baseUrl = base;
    o.wsUrl = `ws://${rest}/ws`;
    o.host = rest.split(/[:/]/)[0];
  } else if (o.target === 'stomp') {
    if (!o.url) throw new Error('--target stomp needs --url ws://HOST:PORT/ws');
    if (!o.url.startsWith('ws://')) throw new Error('--url must be ws://HOST:PORT/PATH for --target stomp');
    o.wsUrl = o.url;
    o.host = o.vhost;
  } else {
    throw new Error(`--target must be herald or stomp, not ${o.target}`);
  }
  return o;
}

// ------------------------------------------------------------------ helpers

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const r3 = (x) => Math.round(x * 1000) / 1000;
const r1 = (x) => Math.round(x * 10) / 10;

/** Runs `fn(item, i)` over `items` with at most `limit` in flight; resolves
 * to the results in order, rejects with the first error. */
async function mapLimit(items, limit, fn) {
  const out = new Array(items.length);
  let next = 0;
  let failed = null;
  const worker = async () => {
    while (failed === null && next < items.length) {
      const i = next++;
      try {
        out[i] = await fn(items[i], i);
      } catch (e) {
        failed ??= e;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  if (failed !== null) throw failed;
  return out;
}

const ALNUM = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';
function randomAlnum(n) {
  const bytes = randomBytes(n);
  let s = '';
  for (const b of bytes) s += ALNUM[b % ALNUM.length];
  return s;
}

// /proc readers (Linux): CPU seconds and RSS of another process.
const CLOCK_TICKS_PER_SEC = 100;
function procCpuSeconds(pid) {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 1).trim().split(/\s+/);
    return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS_PER_SEC;
  } catch {
    return null;
  }
}
function procRssKib(pid) {
  try {
    const m = /^VmRSS:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) : null;
  } catch {
    return null;
  }
}

// ------------------------------------------------------------------ herald REST

class HttpError extends Error {
  constructor(status, text) {
    super(`HTTP ${status}: ${text.slice(0, 300)}`);
    this.status = status;
  }
}

async function api(base, method, path, body, token) {
  let res;
  try {
    res = await fetch(`${base}/api/v1${path}`, {
      method,
      headers: {
        ...(body !== undefined ? { 'content-type': 'application/json' } : {}),
        ...(token ? { authorization: `Bearer ${token}` } : {}),
      },
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: AbortSignal.timeout(120_000),
    });
  } catch (e) {
    throw new Error(`${method} ${base}/api/v1${path} failed: ${e.cause?.message ?? e.message}`);
  }
  const text = await res.text();
  if (!res.ok) throw new HttpError(res.status, text);
  return text ? JSON.parse(text) : null;
}

async function registerAndLogin(base, cred) {
  const reg = await api(base, 'POST', '/auth/register', {
    username: cred.username,
    password: cred.password,
    nickname: cred.username,
  });
  cred.userId = reg.userId;
  const login = await api(base, 'POST', '/auth/login', { username: cred.username, password: cred.password });
  return { userId: login.userId, token: login.token, expiresAt: login.expiresAt ?? null };
}

/** `n` logged-in users, from the herald-bench users file when it has them
 * (format: {"servers": {"<base url>": [{username, password, userId,
 * token?, expiresAt?}]}}): a cached token still good for an hour and
 * accepted by the server is reused, otherwise the user logs in again, or
 * is registered anew if the server does not know it. The file is updated. */
async function ensureUsers(o, n) {
  const base = o.baseUrl;
  let file = { servers: {} };
  if (o.usersFile && existsSync(o.usersFile)) {
    try {
      file = JSON.parse(readFileSync(o.usersFile, 'utf8'));
      if (typeof file !== 'object' || file === null || typeof file.servers !== 'object') throw new Error('no "servers"');
    } catch (e) {
      throw new Error(`${o.usersFile} is not a herald-bench users file: ${e.message}`);
    }
  }
  const cached = Array.isArray(file.servers[base]) ? file.servers[base] : [];
  const tag = randomBytes(4).toString('hex');
  const nCached = Math.min(cached.length, n);
  console.error(`setting up ${n} users (${nCached} cached; ${n - nCached} to register; argon2 makes this slow)`);
  const started = performance.now();
  let done = 0;
  let registered = 0;
  let lastPrint = performance.now();
  const creds = new Array(n).fill(null);
  const fresh = (i) => ({ username: `hb${tag}_${i}`, password: randomAlnum(16), userId: '' });
  let firstError = null;
  const users = await mapLimit(Array.from({ length: n }, (_, i) => i), o.setupConcurrency, async (i) => {
    try {
      let cred = cached[i] ? { ...cached[i] } : null;
      let user = null;
      if (cred) {
        const freshEnough = typeof cred.expiresAt === 'number' && cred.expiresAt > Date.now() + 3_600_000;
        if (cred.token && freshEnough) {
          try {
            await api(base, 'GET', '/users/me', undefined, cred.token);
            user = { userId: cred.userId, token: cred.token, expiresAt: cred.expiresAt };
          } catch { /* log in again */ }
        }
        if (!user) {
          try {
            const r = await api(base, 'POST', '/auth/login', { username: cred.username, password: cred.password });
            user = { userId: r.userId, token: r.token, expiresAt: r.expiresAt ?? null };
          } catch (e) {
            if (!(e instanceof HttpError && e.status === 401)) throw e;
          }
        }
      }
      if (!user) {
        registered++;
        cred = fresh(i);
        user = await registerAndLogin(base, cred);
      }
      cred.token = user.token;
      if (user.expiresAt != null) cred.expiresAt = user.expiresAt;
      else delete cred.expiresAt;
      creds[i] = cred;
      return user;
    } catch (e) {
      firstError ??= e;
      throw e;
    } finally {
      done++;
      if (performance.now() - lastPrint >= 2000) {
        lastPrint = performance.now();
        const rate = done / ((performance.now() - started) / 1000);
        console.error(`  users ${done}/${n} (${rate.toFixed(0)}/s, ${registered} registered)`);
      }
    }
  }).catch((e) => {
    firstError ??= e;
    return null;
  });
  if (o.usersFile) {
    // Keep what is known, new users included, even after a failure.
    const list = cached.slice();
    creds.forEach((c, i) => {
      if (c) list[i] = c;
    });
    file.servers[base] = list.filter(Boolean);
    writeFileSync(o.usersFile, JSON.stringify(file, null, 2));
  }
  if (firstError || !users) throw new Error(`user setup failed: ${firstError?.message ?? 'unknown'}`);
  console.error(`  users ready: ${n} in ${((performance.now() - started) / 1000).toFixed(1)} s (${registered} registered)`);
  return users;
}

// ------------------------------------------------------------------ payload

const MAGIC = 'hb';

/** The text every message carries (herald: in `content`), as herald-bench
 * writes it: `hb:<run hex>:<sender>:<seq>:<due ns>:` padded with '.'. */
function payloadText(run, sender, seq, dueNs, size) {
  const s = `${MAGIC}:${run}:${sender}:${seq}:${dueNs}:`;
  return s.length < size ? s + '.'.repeat(size - s.length) : s;
}

function parsePayload(text) {
  if (typeof text !== 'string' || !text.startsWith(`${MAGIC}:`)) return null;
  const p = text.split(':', 5);
  if (p.length < 5) return null;
  const sender = Number(p[2]);
  const seq = Number(p[3]);
  const dueNs = Number(p[4]);
  if (!Number.isInteger(sender) || !Number.isInteger(seq) || !Number.isFinite(dueNs)) return null;
  return { run: p[1], sender, seq, dueNs };
}

// ------------------------------------------------------------------ run state

class Run {
  constructor(o) {
    this.o = o;
    this.n = o.clients;
    // A random id recognising late messages of another run as stale.
    this.run = randomInt(1, 2 ** 47).toString(16);
    this.measureFromNs = Math.round(o.warmup * 1e9);
    this.windowEndNs = this.measureFromNs + Math.round(o.duration * 1e9);
    this.graceNs = o.graceMs * 1e6;
    this.nsPerMsg = 1e9 / o.rate;
    this.total = Math.ceil(this.windowEndNs / this.nsPerMsg) + 1;
    this.t0 = null; // performance.now() of due time 0, set when the run starts
    this.seen = new Uint8Array(this.total + this.n);
    this.latMs = new Float64Array(this.total + this.n);
    this.order = new Map();
    this.sent = 0; // measured messages written
    this.warmSent = 0;
    this.dropped = 0; // measured messages not written (connection gone or backed up)
    this.received = 0; // distinct measured deliveries
    this.inTime = 0;
    this.duplicated = 0;
    this.outOfOrder = 0;
    this.stale = 0;
    this.warmRx = 0;
    this.sendAcks = 0;
    this.serverErrors = 0;
    this.firstError = null;
    this.disconnects = 0;
    this.firstDisconnect = null;
    this.stopping = false;
    this.lastRxNs = 0;
  }

  serverError(text) {
    this.serverErrors++;
    this.firstError ??= String(text).slice(0, 300);
  }

  disconnected(why) {
    this.disconnects++;
    this.firstDisconnect ??= why;
  }

  /** A delivery of payload `p` to client `receiver` at performance.now() `now`. */
  record(receiver, p, now) {
    if (p === null || this.t0 === null || p.run !== this.run) {
      this.stale++;
      return;
    }
    if (p.dueNs < this.measureFromNs) {
      this.warmRx++;
      return;
    }
    const k = p.seq * this.n + p.sender;
    if (k >= this.seen.length || p.sender >= this.n) {
      this.stale++;
      return;
    }
    if (this.seen[k]) {
      this.duplicated++;
      return;
    }
    this.seen[k] = 1;
    const rxNs = (now - this.t0) * 1e6;
    this.latMs[this.received++] = Math.max(0.001, (rxNs - p.dueNs) / 1e6);
    if (rxNs <= this.windowEndNs + this.graceNs) this.inTime++;
    if (rxNs > this.lastRxNs) this.lastRxNs = rxNs;
    // Order is only defined per (sender, receiver): one session.
    const key = p.sender * this.n + receiver;
    const last = this.order.get(key) ?? 0;
    if (p.seq + 1 < last) this.outOfOrder++;
    else this.order.set(key, p.seq + 1);
  }

  /** Latency quantiles in ms, as hdrhistogram's value_at_quantile (nearest rank). */
  latency() {
    const n = this.received;
    if (n === 0) return { p50: null, p99: null, p999: null, max: null, mean: null };
    const a = this.latMs.slice(0, n).sort();
    const q = (x) => r3(a[Math.max(0, Math.ceil(x * n) - 1)]);
    let sum = 0;
    for (let i = 0; i < n; i++) sum += a[i];
    return { p50: q(0.5), p99: q(0.99), p999: q(0.999), max: r3(a[n - 1]), mean: r3(sum / n) };
  }
}

// ------------------------------------------------------------------ connections

const SUB_MESSAGES = 'm';
const SUB_ACKS = 'a';
const SUB_ERRORS = 'e';

function connectHeaders(o, token) {
  const h = { host: o.host };
  if (o.target === 'herald') h.Authorization = `Bearer ${token}`;
  else Object.assign(h, { login: o.login, passcode: o.passcode });
  return h;
}

function errorText(frame) {
  return `ERROR frame: ${frame.headers?.message ?? ''} ${String(frame.body ?? '').slice(0, 300)}`.trim();
}

/** Opens client `idx`, CONNECTs and SUBSCRIBEs (waiting for the receipts). */
function connectOne(o, run, idx, token) {
  return new Promise((resolve, reject) => {
    const conn = { idx, ws: null, client: null, up: false };
    let settled = false;
    const fail = (why) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (conn.ws) conn.ws.terminate();
      reject(new Error(`connection ${idx} to ${o.wsUrl}: ${why}`));
    };
    const timer = setTimeout(() => fail(`no answer within ${(o.connectTimeoutMs / 1000).toFixed(1)} s`), o.connectTimeoutMs);

    const onMessage = (msg) => {
      const now = performance.now();
      if (o.target === 'herald') {
        let vo = null;
        try {
          vo = JSON.parse(msg.body);
        } catch { /* not a MessageVo */ }
        if (vo && vo.type === 'message') run.record(idx, parsePayload(vo.content), now);
      } else {
        run.record(idx, parsePayload(msg.body), now);
      }
      msg.ack();
    };

    const client = new Client({
      webSocketFactory: () => {
        conn.ws = new WebSocket(o.wsUrl, ['v12.stomp', 'v11.stomp', 'v10.stomp'], { perMessageDeflate: false });
        return conn.ws;
      },
      connectHeaders: connectHeaders(o, token),
      reconnectDelay: 0,
      heartbeatIncoming: 0,
      heartbeatOutgoing: 0,
      debug: () => {},
      onConnect: () => {
        const subs = [];
        if (o.target === 'herald') {
          subs.push(['/user/queue/message', onMessage, { id: SUB_MESSAGES, ack: 'client-individual' }]);
          subs.push(['/user/queue/ack', () => { run.sendAcks++; }, { id: SUB_ACKS, ack: 'auto' }]);
          subs.push(['/user/queue/errors', (m) => run.serverError(m.body), { id: SUB_ERRORS, ack: 'auto' }]);
        } else {
          const h = { id: 'q', ack: 'client-individual' };
          if (o.durable) Object.assign(h, { durable: 'true', 'auto-delete': 'false' });
          subs.push([`/queue/${o.queuePrefix}${idx}`, onMessage, h]);
        }
        let pending = subs.length;
        subs.forEach(([dest, cb, headers], i) => {
          const receipt = `sub-${i}`;
          client.watchForReceipt(receipt, () => {
            if (--pending === 0 && !settled) {
              settled = true;
              clearTimeout(timer);
              conn.up = true;
              resolve(conn);
            }
          });
          client.subscribe(dest, cb, { ...headers, receipt });
        });
      },
      onStompError: (frame) => {
        const text = errorText(frame);
        if (!settled) {
          fail(`refused: ${text}`);
          return;
        }
        run.serverError(text);
      },
      onWebSocketError: (evt) => {
        if (!settled) fail(`WebSocket error${evt?.message ? `: ${evt.message}` : ''}`);
      },
      onWebSocketClose: (evt) => {
        const wasUp = conn.up;
        conn.up = false;
        if (!settled) {
          fail(`closed by the server (code ${evt?.code ?? '?'})`);
        } else if (wasUp && !run.stopping) {
          run.disconnected(`connection ${idx}: closed by the server (code ${evt?.code ?? '?'}${evt?.reason ? ` ${evt.reason}` : ''})`);
        }
      },
    });
    conn.client = client;
    client.activate();
  });
}

async function connectAll(o, run, tokens) {
  const n = tokens.length;
  console.error(`opening ${n} connections to ${o.wsUrl}`);
  const started = performance.now();
  let done = 0;
  let lastPrint = performance.now();
  const opened = [];
  try {
    await mapLimit(tokens, o.connectConcurrency, async (token, i) => {
      const c = await connectOne(o, run, i, token);
      opened.push(c);
      done++;
      if (performance.now() - lastPrint >= 2000) {
        lastPrint = performance.now();
        console.error(`  connected ${done}/${n} (${(done / ((performance.now() - started) / 1000)).toFixed(0)}/s)`);
      }
      return c;
    });
  } catch (e) {
    run.stopping = true;
    for (const c of opened) c.ws?.terminate();
    throw e;
  }
  opened.sort((a, b) => a.idx - b.idx);
  console.error(`  ${n} connections ready in ${((performance.now() - started) / 1000).toFixed(1)} s`);
  return opened;
}

// ------------------------------------------------------------------ the run

/** The open-loop schedule: message k due at t0 + k/R, sent by client
 * k mod C to a random other client. One timer loop; each wake-up sends
 * every message already due (at most MAX_BATCH before letting I/O run). */
const MAX_BATCH = 256;

function schedule(o, run, conns, userIds) {
  const n = conns.length;
  const durable = o.durable;
  const sendOne = (k, dueNs) => {
    const sender = k % n;
    const seq = Math.floor(k / n);
    const r = Math.floor(Math.random() * (n - 1));
    const dest = r >= sender ? r + 1 : r;
    const measured = dueNs >= run.measureFromNs;
    const c = conns[sender];
    if (!c.up || c.ws.bufferedAmount > o.maxBuffered) {
      if (measured) run.dropped++;
      return;
    }
    const content = payloadText(run.run, sender, seq, dueNs, o.size);
    try {
      if (o.target === 'herald') {
        c.client.publish({
          destination: '/app/send',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({
            toUserId: userIds[dest],
            messageType: 1,
            content,
            clientMessageId: `${run.run}-${sender}-${seq}`,
            clientTimestamp: Date.now(),
          }),
        });
      } else {
        const headers = { 'content-type': 'text/plain' };
        if (durable) headers.persistent = 'true';
        c.client.publish({ destination: `/amq/queue/${o.queuePrefix}${dest}`, headers, body: content });
      }
    } catch {
      if (measured) run.dropped++;
      return;
    }
    if (measured) run.sent++;
    else run.warmSent++;
  };
  return new Promise((resolve) => {
    let k = 0;
    const tick = () => {
      const nowNs = (performance.now() - run.t0) * 1e6;
      for (let batch = 0; ; batch++) {
        const dueNs = Math.round(k * run.nsPerMsg);
        if (dueNs >= run.windowEndNs) {
          resolve(k);
          return;
        }
        if (dueNs > nowNs) {
          setTimeout(tick, Math.max(1, Math.ceil((dueNs - nowNs) / 1e6)));
          return;
        }
        if (batch >= MAX_BATCH) {
          // Behind schedule: let the connections make progress.
          setImmediate(tick);
          return;
        }
        sendOne(k, dueNs);
        k++;
      }
    };
    setTimeout(tick, Math.max(0, run.t0 - performance.now()));
  });
}

async function main() {
  let o;
  try {
    o = parseOptions(process.argv.slice(2));
  } catch (e) {
    process.stderr.write(`stompjs-bench: ${e.message}\n\n${USAGE}`);
    return 1;
  }
  const perUser = o.rate / o.clients;
  if (o.target === 'herald' && perUser > 50) {
    console.error(`warning: ${perUser.toFixed(1)} msg/s per sending user is above herald's default limit ` +
      '(HERALD_SEND_RATE_PER_SEC=50, HERALD_SEND_BURST=100); start herald with e.g. ' +
      'HERALD_SEND_RATE_PER_SEC=100000 HERALD_SEND_BURST=100000 or sends are rejected');
  }
  const run = new Run(o);
  let conns = [];
  let userIds = null;
  try {
    let tokens;
    if (o.target === 'herald') {
      const users = await ensureUsers(o, o.clients);
      userIds = users.map((u) => u.userId);
      tokens = users.map((u) => u.token);
    } else {
      tokens = new Array(o.clients).fill(null);
    }
    conns = await connectAll(o, run, tokens);
  } catch (e) {
    console.error(`stompjs-bench: error: ${e.message}`);
    return 1;
  }

  console.error(`rate: ${o.rate} msg/s over ${o.clients} clients for ${o.duration} s (+${o.warmup} s warm-up)`);
  run.t0 = performance.now() + 50;
  // Usage meters cover the measured part and the drain, as herald-bench's.
  let meters = null;
  const startMeters = () => {
    meters = {
      wall: performance.now(),
      cpu: process.cpuUsage(),
      server: o.serverPid ? procCpuSeconds(o.serverPid) : null,
    };
  };
  const meterTimer = setTimeout(startMeters, Math.max(0, run.t0 + run.measureFromNs / 1e6 - performance.now()));
  await schedule(o, run, conns, userIds);
  if (!meters) {
    clearTimeout(meterTimer);
    startMeters();
  }

  // Drain: wait for every expected delivery, every connection gone, or the timeout.
  const drainStart = performance.now();
  let drained = false;
  for (;;) {
    if (run.received >= run.sent && run.warmRx >= run.warmSent) {
      drained = true;
      break;
    }
    if (performance.now() - drainStart >= o.drain * 1000 || run.disconnects >= conns.length) break;
    await sleep(10);
  }
  const wallS = (performance.now() - meters.wall) / 1000;
  const cpu = process.cpuUsage(meters.cpu);
  const generatorCpu = wallS > 0 ? ((cpu.user + cpu.system) / 1e6 / wallS) * 100 : null;
  let serverCpu = null;
  let serverRss = null;
  if (o.serverPid) {
    const now = procCpuSeconds(o.serverPid);
    if (now !== null && meters.server !== null && wallS > 0) serverCpu = ((now - meters.server) / wallS) * 100;
    serverRss = procRssKib(o.serverPid);
  }
  run.stopping = true;

  const lat = run.latency();
  const measuredS = (run.windowEndNs - run.measureFromNs) / 1e9;
  const report = {
    generator: 'stompjs',
    scenario: 'rate',
    target: o.target,
    clients: o.clients,
    offered_rate: r3(o.rate),
    delivered_rate: r3(run.inTime / measuredS),
    sent: run.sent,
    received: run.received,
    lost: Math.max(0, run.sent - run.received),
    duplicated: run.duplicated,
    out_of_order: run.outOfOrder,
    p50_ms: lat.p50,
    p99_ms: lat.p99,
    p999_ms: lat.p999,
    max_ms: lat.max,
    server_cpu_pct: serverCpu === null ? null : r1(serverCpu),
    server_rss_kib: serverRss,
    generator_cpu_pct: generatorCpu === null ? null : r1(generatorCpu),
    duration_s: r3(measuredS),
    mean_ms: lat.mean,
    dropped: run.dropped,
    server_errors: run.serverErrors,
  };
  if (run.firstError) report.first_error = run.firstError;
  if (o.target === 'herald') report.send_acks = run.sendAcks;
  if (run.stale > 0) report.stale = run.stale;
  report.disconnects = run.disconnects;
  if (run.firstDisconnect) report.first_disconnect = run.firstDisconnect;
  report.drained = drained;
  if (generatorCpu !== null && generatorCpu > 90) report.generator_saturated = true;
  report.warmup_s = o.warmup;
  report.node = process.version;
  report.stompjs = stompjsVersion();

  process.stdout.write(`${JSON.stringify(report)}\n`);
  console.error(summary(report));
  if (report.generator_saturated) {
    console.error('warning: the generator used a whole core; latency figures include its own queueing');
  }
  for (const c of conns) c.ws?.terminate();
  if (run.disconnects > 0) {
    console.error(`error: ${run.disconnects} connection(s) ended during the run; first: ${run.firstDisconnect}`);
    return 2;
  }
  return 0;
}

function stompjsVersion() {
  // The package's exports hide its package.json from require(): read the file.
  try {
    let dir = dirname(require.resolve('@stomp/stompjs'));
    for (let i = 0; i < 4; i++, dir = dirname(dir)) {
      const file = join(dir, 'package.json');
      if (existsSync(file)) {
        const pkg = JSON.parse(readFileSync(file, 'utf8'));
        if (pkg.name === '@stomp/stompjs') return pkg.version;
      }
    }
  } catch { /* unknown */ }
  return null;
}

function summary(r) {
  const f = (x) => (x === null || x === undefined ? '-' : x.toFixed(2));
  const lines = [
    `[stompjs rate] target ${r.target}, ${r.clients} clients: offered ${f(r.offered_rate)} msg/s, ` +
      `delivered ${f(r.delivered_rate)} msg/s over ${r.duration_s.toFixed(1)} s`,
    `  sent ${r.sent}  received ${r.received}  lost ${r.lost}  duplicated ${r.duplicated}  ` +
      `out-of-order ${r.out_of_order}  dropped ${r.dropped}  server errors ${r.server_errors}`,
    `  latency ms: p50 ${f(r.p50_ms)}  p99 ${f(r.p99_ms)}  p99.9 ${f(r.p999_ms)}  max ${f(r.max_ms)}  mean ${f(r.mean_ms)}`,
    `  cpu %: server ${f(r.server_cpu_pct)}  generator ${f(r.generator_cpu_pct)};  server rss ${r.server_rss_kib ?? '-'} KiB;  drained ${r.drained}`,
  ];
  if (r.first_error) lines.push(`  first server error: ${r.first_error}`);
  return lines.join('\n');
}

main().then(
  (code) => process.exit(code),
  (e) => {
    console.error(`stompjs-bench: error: ${e?.stack ?? e}`);
    process.exit(1);
  },
);
