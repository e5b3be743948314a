// Smoke test of the stomp.js load generator, so it cannot rot: starts
// `herald serve` (HERALD_BIN or target/debug/herald) on a free port with a
// temporary data directory, runs stompjs-bench.mjs for about 2 s with 10
// clients at 100 msg/s (users cached in a users file, which a second run
// reuses), and checks its JSON line.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname, resolve } from 'node:path';
import { freePort, waitHealthy } from '../../tests/js/server.mjs';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
// Absolute: the server runs in a temporary directory (no ./herald.toml there).
const bin = resolve(process.env.HERALD_BIN || join(here, '..', '..', 'target', 'debug', 'herald'));
const generator = join(here, 'stompjs-bench.mjs');
let server;
let base;
let dir;

before(async () => {
  const port = await freePort();
  base = `127.0.0.1:${port}`;
  dir = mkdtempSync(join(tmpdir(), 'herald-stompjs-bench-'));
  server = spawn(bin, ['serve', '--listen', base, '--data-dir', join(dir, 'data')], {
    cwd: dir,
    env: {
      ...process.env,
      HERALD_LOG: 'warn',
      HERALD_SEND_RATE_PER_SEC: '100000',
      HERALD_SEND_BURST: '100000',
      HERALD_MAX_CONNECTIONS_PER_USER: '100000',
      // The bench registers and logs in many users from 127.0.0.1.
      HERALD_REGISTRATIONS_PER_HOUR: '0',
      HERALD_LOGIN_MAX_FAILURES: '0',
    },
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  await waitHealthy(`http://${base}/healthz`, 20000);
});

after(() => {
  server?.kill('SIGKILL');
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** Runs the generator; resolves to { code, report, stderr }. */
function runGenerator(args) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [generator, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => { out += d; });
    child.stderr.on('data', (d) => { err += d; });
    const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      const lines = out.split('\n').filter((l) => l.startsWith('{'));
      let report = null;
      try {
        report = lines.length === 1 ? JSON.parse(lines[0]) : null;
      } catch { /* asserted below */ }
      resolve({ code, report, stderr: err });
    });
  });
}

test('stompjs-bench drives herald at a fixed rate without loss', async () => {
  const usersFile = join(dir, 'users.json');
  const common = [
    '--target', 'herald', '--url', `http://${base}`, '--users-file', usersFile,
    '--clients', '10', '--rate', '100', '--drain', '5',
  ];
  const first = await runGenerator([...common, '--duration', '2', '--warmup', '0.5']);
  assert.equal(first.code, 0, first.stderr);
  const r = first.report;
  assert.ok(r, `one JSON line expected; stderr:\n${first.stderr}`);
  assert.equal(r.generator, 'stompjs');
  assert.equal(r.target, 'herald');
  assert.equal(r.clients, 10);
  assert.equal(r.offered_rate, 100);
  assert.ok(r.sent >= 190 && r.sent <= 201, `sent ${r.sent}`);
  assert.ok(r.received > 0, `received ${r.received}`);
  assert.equal(r.lost, 0, first.stderr);
  assert.equal(r.duplicated, 0);
  assert.equal(r.server_errors, 0, r.first_error);
  assert.equal(r.disconnects, 0);
  assert.equal(r.drained, true);
  assert.ok(r.send_acks >= r.sent, `send_acks ${r.send_acks} < sent ${r.sent}`);
  for (const k of ['p50_ms', 'p99_ms', 'p999_ms', 'max_ms', 'generator_cpu_pct', 'delivered_rate']) {
    assert.equal(typeof r[k], 'number', k);
  }
  assert.ok(r.p50_ms <= r.p99_ms && r.p99_ms <= r.max_ms);

  // The users file is herald-bench's format; a second run reuses its users.
  const cached = JSON.parse(readFileSync(usersFile, 'utf8'));
  assert.equal(cached.servers[`http://${base}`].length, 10);
  const second = await runGenerator([...common, '--duration', '1', '--warmup', '0']);
  assert.equal(second.code, 0, second.stderr);
  assert.match(second.stderr, /10 cached; 0 to register/);
  assert.equal(second.report.lost, 0, second.stderr);
  assert.ok(second.report.received > 0);
});
