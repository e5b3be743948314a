// stomp.js against a real Herald: the client library browsers use.
// Starts `herald serve` (HERALD_BIN or target/debug/herald) on a free port.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { freePort, waitHealthy } from './server.mjs';
import { fileURLToPath } from 'node:url';
import { Client } from '@stomp/stompjs';
import WebSocket from 'ws';

Object.assign(globalThis, { WebSocket });

const here = dirname(fileURLToPath(import.meta.url));
const bin = process.env.HERALD_BIN || join(here, '..', '..', 'target', 'debug', 'herald');
let server;
let base;

before(async () => {
  const port = await freePort();
  base = `127.0.0.1:${port}`;
  const dir = mkdtempSync(join(tmpdir(), 'herald-js-'));
  server = spawn(bin, ['serve', '--listen', base, '--data-dir', dir], {
    // Every test registers its users from 127.0.0.1: no registration or
    // login throttling (defaults: 10 registrations an hour per address).
    env: {
      ...process.env,
      HERALD_ACK_TIMEOUT_MS: '1000',
      HERALD_LOG: 'warn',
      HERALD_REGISTRATIONS_PER_HOUR: '0',
      HERALD_LOGIN_MAX_FAILURES: '0',
    },
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  await waitHealthy(`http://${base}/healthz`, 20000);
});

after(() => server?.kill('SIGKILL'));

async function api(method, path, body, token) {
  const res = await fetch(`http://${base}/api/v1${path}`, {
    method,
    headers: {
      'content-type': 'application/json',
      ...(token ? { authorization: `Bearer ${token}` } : {}),
    },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : null };
}

async function user(name) {
  const username = `${name}_${Math.random().toString(36).slice(2, 10)}`;
  const reg = await api('POST', '/auth/register', { username, password: 'password123', nickname: name });
  assert.equal(reg.status, 201);
  const login = await api('POST', '/auth/login', { username, password: 'password123' });
  assert.equal(login.status, 200);
  return { id: login.body.userId, token: login.body.token };
}

function connect(u, { passcode = false } = {}) {
  return new Promise((resolve, reject) => {
    const client = new Client({
      brokerURL: `ws://${base}/ws`,
      connectHeaders: passcode ? { login: u.id, passcode: u.token } : { Authorization: `Bearer ${u.token}` },
      reconnectDelay: 0,
      heartbeatIncoming: 10000,
      heartbeatOutgoing: 10000,
      onConnect: (frame) => resolve({ client, frame }),
      onStompError: (frame) => reject(new Error(frame.headers.message)),
      onWebSocketError: () => reject(new Error('websocket error')),
    });
    client.activate();
  });
}

/** Collects MESSAGE bodies of a destination into an array, with a waiter. */
function collect(client, destination, headers = {}) {
  const got = [];
  const waiters = [];
  client.subscribe(destination, (m) => {
    got.push(m);
    waiters.splice(0).forEach((w) => w());
  }, headers);
  got.until = (n, ms = 5000) => new Promise((resolve, reject) => {
    const check = () => (got.length >= n ? resolve(got) : null);
    const timer = setTimeout(() => reject(new Error(`only ${got.length}/${n} on ${destination}`)), ms);
    const loop = () => { if (check() === null) waiters.push(loop); else clearTimeout(timer); };
    loop();
  });
  return got;
}

test('CONNECT with Authorization and passcode', async () => {
  const a = await user('alice');
  const { client, frame } = await connect(a);
  assert.equal(frame.headers.version, '1.2');
  assert.equal(frame.headers['user-name'], a.id);
  assert.match(frame.headers.server, /^herald\//);
  await client.deactivate();
  const second = await connect(a, { passcode: true });
  assert.equal(second.frame.headers['user-name'], a.id);
  await second.client.deactivate();
});

test('a bad token gets ERROR', async () => {
  await assert.rejects(connect({ id: '1', token: 'not-a-token' }), /authentication/);
});

test('send, SendAck with RECEIPT, push to recipient and to the sender\'s other device', async () => {
  const a = await user('alice');
  const b = await user('bob');
  const { client: a1 } = await connect(a);
  const { client: a2 } = await connect(a);
  const { client: b1 } = await connect(b);
  const acks = collect(a1, '/user/queue/ack');
  const bobGot = collect(b1, '/user/queue/message');
  const otherDevice = collect(a2, '/user/queue/message');
  await new Promise((r) => setTimeout(r, 200));
  const receipt = new Promise((resolve) => a1.watchForReceipt('r-1', resolve));
  a1.publish({
    destination: '/app/send',
    headers: { receipt: 'r-1' },
    body: JSON.stringify({ toUserId: b.id, messageType: 1, content: 'hello', clientMessageId: 'js-1', clientTimestamp: Date.now() }),
  });
  await receipt;
  const [ack] = await acks.until(1);
  const sendAck = JSON.parse(ack.body);
  assert.equal(sendAck.status, 'accepted');
  assert.equal(sendAck.clientMessageId, 'js-1');
  const [msg] = await bobGot.until(1);
  const vo = JSON.parse(msg.body);
  assert.equal(msg.headers['message-id'], sendAck.messageId);
  assert.equal(vo.content, 'hello');
  assert.equal(vo.seq, 1);
  assert.equal(vo.senderId, a.id);
  const [mine] = await otherDevice.until(1);
  assert.equal(JSON.parse(mine.body).messageId, sendAck.messageId);
  await Promise.all([a1.deactivate(), a2.deactivate(), b1.deactivate()]);
});

test('a burst arrives in order with gap-free seq', async () => {
  const a = await user('alice');
  const b = await user('bob');
  const { client: a1 } = await connect(a);
  const { client: b1 } = await connect(b);
  const got = collect(b1, '/user/queue/message');
  await new Promise((r) => setTimeout(r, 200));
  for (let i = 0; i < 100; i++) {
    a1.publish({
      destination: '/app/send',
      body: JSON.stringify({ toUserId: b.id, messageType: 1, content: `m${i}`, clientMessageId: `b-${i}`, clientTimestamp: Date.now() }),
    });
  }
  await got.until(100, 10000);
  const seqs = got.map((m) => JSON.parse(m.body).seq);
  assert.deepEqual(seqs, Array.from({ length: 100 }, (_, i) => i + 1));
  assert.deepEqual(got.map((m) => JSON.parse(m.body).content), Array.from({ length: 100 }, (_, i) => `m${i}`));
  await Promise.all([a1.deactivate(), b1.deactivate()]);
});

test('errors go to /user/queue/errors and the connection stays', async () => {
  const a = await user('alice');
  const { client } = await connect(a);
  const errors = collect(client, '/user/queue/errors');
  await new Promise((r) => setTimeout(r, 200));
  client.publish({ destination: '/app/send', body: JSON.stringify({ toUserId: a.id, messageType: 1, content: 'me', clientMessageId: 'self-1' }) });
  client.publish({ destination: '/app/send', body: '{not json' });
  const [self, bad] = await errors.until(2);
  assert.equal(JSON.parse(self.body).clientMessageId, 'self-1');
  assert.equal(JSON.parse(bad.body).code, 'invalid_argument');
  assert.ok(client.connected);
  await client.deactivate();
});

test('client-individual: unacked push is redelivered with the same message-id, ACK stops it', async () => {
  const a = await user('alice');
  const b = await user('bob');
  const { client: a1 } = await connect(a);
  const { client: b1 } = await connect(b);
  const got = collect(b1, '/user/queue/message', { ack: 'client-individual' });
  await new Promise((r) => setTimeout(r, 200));
  a1.publish({ destination: '/app/send', body: JSON.stringify({ toUserId: b.id, messageType: 1, content: 'x', clientMessageId: 'r-1' }) });
  await got.until(2, 4000);
  assert.equal(got[0].headers['message-id'], got[1].headers['message-id']);
  got[1].ack();
  const count = got.length;
  await new Promise((r) => setTimeout(r, 2500));
  assert.equal(got.length, count, 'no redelivery after ACK');
  await Promise.all([a1.deactivate(), b1.deactivate()]);
});

test('public topic broadcast reaches every subscriber including the sender', async () => {
  const a = await user('alice');
  const b = await user('bob');
  const { client: a1 } = await connect(a);
  const { client: b1 } = await connect(b);
  const name = `/topic/public.typing-${Math.random().toString(36).slice(2, 8)}`;
  const ga = collect(a1, name);
  const gb = collect(b1, name);
  await new Promise((r) => setTimeout(r, 200));
  a1.publish({ destination: name, headers: { 'x-kind': 'typing', 'content-type': 'text/plain' }, body: 'typing…' });
  const [ma] = await ga.until(1);
  const [mb] = await gb.until(1);
  assert.equal(mb.body, 'typing…');
  assert.equal(mb.headers['x-kind'], 'typing');
  assert.equal(ma.body, 'typing…');
  await Promise.all([a1.deactivate(), b1.deactivate()]);
});
