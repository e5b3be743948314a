//! Message payloads, the per-run collector (latency histogram, loss,
//! duplicates, order) and the JSON report.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::Serialize;

/// What every benchmark message carries in its body (herald: in `content`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Payload {
    /// Random id of the run (or find-max step): late messages of an earlier
    /// run are recognised as stale.
    pub run: u64,
    /// Index of the sending client.
    pub sender: u32,
    /// Per-sender sequence number of the run, from 0.
    pub seq: u64,
    /// Due time in ns since the run's t0.
    pub due_ns: u64,
}

const MAGIC: &str = "hb";

impl Payload {
    /// Appends the text form, padded with '.' to at least `size` bytes.
    pub fn write(self, out: &mut String, size: usize) {
        let start = out.len();
        let _ = write!(
            out,
            "{MAGIC}:{:x}:{}:{}:{}:",
            self.run, self.sender, self.seq, self.due_ns
        );
        let len = out.len() - start;
        if len < size {
            out.extend(std::iter::repeat_n('.', size - len));
        }
    }

    pub fn to_text(self, size: usize) -> String {
        let mut s = String::with_capacity(size.max(48));
        self.write(&mut s, size);
        s
    }

    /// The `clientMessageId` of its herald send: the text form unpadded
    /// (at most 64 characters), so that the server's answers naming it (a
    /// refusal on `/user/queue/errors`) parse back with [`Payload::parse`].
    pub fn client_message_id(self) -> String {
        self.to_text(0)
    }

    pub fn parse(text: &str) -> Option<Payload> {
        let mut it = text.split(':');
        if it.next()? != MAGIC {
            return None;
        }
        Some(Payload {
            run: u64::from_str_radix(it.next()?, 16).ok()?,
            sender: it.next()?.parse().ok()?,
            seq: it.next()?.parse().ok()?,
            due_ns: it.next()?.parse().ok()?,
        })
    }
}

/// Timing of one run.
#[derive(Debug, Clone, Copy)]
pub struct RunSpec {
    pub run: u64,
    pub t0: Instant,
    /// Messages due before this (the warm-up) are not measured.
    pub measure_from_ns: u64,
    /// End of the sending window.
    pub window_end_ns: u64,
    /// Deliveries after `window_end_ns + grace_ns` are not "in time".
    pub grace_ns: u64,
    /// Fan-out: one message reaches several receivers, so duplicates are
    /// tracked per (sender, receiver) instead of per sender.
    pub per_receiver: bool,
}

impl RunSpec {
    pub fn new(t0: Instant, warmup_s: f64, duration_s: f64, grace_ms: f64) -> RunSpec {
        let warm = secs_to_ns(warmup_s);
        RunSpec {
            run: rand::random::<u64>() >> 1,
            t0,
            measure_from_ns: warm,
            window_end_ns: warm + secs_to_ns(duration_s),
            grace_ns: secs_to_ns(grace_ms / 1000.0),
            per_receiver: false,
        }
    }

    pub fn measured_s(&self) -> f64 {
        (self.window_end_ns - self.measure_from_ns) as f64 / 1e9
    }
}

pub fn secs_to_ns(s: f64) -> u64 {
    (s.max(0.0) * 1e9).round() as u64
}

/// Counters of one run.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counts {
    /// Measured messages handed to a connection's queue.
    pub sent: u64,
    /// Deliveries expected for them (sent x recipients).
    pub expected: u64,
    /// Warm-up deliveries expected (sent x recipients).
    pub warmup_expected: u64,
    /// Measured messages not sent because the connection's queue was full
    /// or the connection was gone.
    pub dropped: u64,
    /// Distinct measured deliveries received.
    pub received: u64,
    /// Of those, received before the end of the window plus the grace.
    pub in_time: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    /// Deliveries of an earlier run (or of another generator).
    pub stale: u64,
    /// Deliveries of warm-up messages.
    pub warmup: u64,
    /// Fan-out: a member's own message echoed to it (not counted).
    pub own: u64,
    /// Herald: SendAcks received.
    pub send_acks: u64,
    /// Herald: `/user/queue/errors` events; any target: ERROR frames.
    pub server_errors: u64,
    /// Herald: measured sends the server refused (an error event naming
    /// one): never delivered, so neither expected nor lost.
    pub refused: u64,
    /// Warm-up sends it refused.
    pub warmup_refused: u64,
    /// Receive time of the last measured delivery, ns since t0.
    pub last_rx_ns: u64,
}

/// Collects one run's deliveries.
pub struct Collector {
    spec: RunSpec,
    /// Deliveries each message of the run should cause.
    fanout: u64,
    hist: Histogram<u64>,
    seen: HashMap<(u32, u32), Vec<u64>>,
    order: HashMap<(u32, u32), u64>,
    counts: Counts,
    first_error: Option<String>,
}

/// Latencies are recorded in microseconds, 1 us to 1 hour, 3 digits.
fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant histogram bounds are valid")
}

impl Collector {
    pub fn new(spec: RunSpec, fanout: u64) -> Collector {
        Collector {
            spec,
            fanout,
            hist: new_histogram(),
            seen: HashMap::new(),
            order: HashMap::new(),
            counts: Counts::default(),
            first_error: None,
        }
    }

    pub fn spec(&self) -> &RunSpec {
        &self.spec
    }

    pub fn counts(&self) -> Counts {
        self.counts
    }

    pub fn counts_mut(&mut self) -> &mut Counts {
        &mut self.counts
    }

    /// Every expected delivery (measured and warm-up) has arrived; those
    /// of refused sends are not expected.
    pub fn all_arrived(&self) -> bool {
        let c = &self.counts;
        c.received + c.refused * self.fanout >= c.expected
            && c.warmup + c.warmup_refused * self.fanout >= c.warmup_expected
    }

    /// Expected deliveries that did not arrive (refused sends excepted).
    pub fn lost(&self) -> u64 {
        let c = &self.counts;
        c.expected
            .saturating_sub(c.refused * self.fanout)
            .saturating_sub(c.received)
    }

    pub fn first_error(&self) -> Option<&str> {
        self.first_error.as_deref()
    }

    /// A delivery of `p` to client `receiver` observed at `now`.
    pub fn record(&mut self, receiver: u32, p: &Payload, now: Instant) {
        let c = &mut self.counts;
        if p.run != self.spec.run {
            c.stale += 1;
            return;
        }
        if p.due_ns < self.spec.measure_from_ns {
            c.warmup += 1;
            return;
        }
        let key = (
            p.sender,
            if self.spec.per_receiver {
                receiver
            } else {
                u32::MAX
            },
        );
        let bits = self.seen.entry(key).or_default();
        let word = (p.seq / 64) as usize;
        let mask = 1u64 << (p.seq % 64);
        if bits.len() <= word {
            bits.resize(word + 1, 0);
        }
        if let Some(w) = bits.get_mut(word) {
            if *w & mask != 0 {
                c.duplicated += 1;
                return;
            }
            *w |= mask;
        }
        c.received += 1;
        let rx_ns = now.saturating_duration_since(self.spec.t0).as_nanos() as u64;
        let latency_us = (rx_ns.saturating_sub(p.due_ns) / 1000).max(1);
        self.hist.saturating_record(latency_us);
        if rx_ns <= self.spec.window_end_ns + self.spec.grace_ns {
            c.in_time += 1;
        }
        c.last_rx_ns = c.last_rx_ns.max(rx_ns);
        // Order is only defined per (sender, receiver): one session.
        let last = self.order.entry((p.sender, receiver)).or_insert(0);
        if p.seq + 1 < *last {
            c.out_of_order += 1;
        } else {
            *last = p.seq + 1;
        }
    }

    pub fn server_error(&mut self, text: &str) {
        self.counts.server_errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(text.chars().take(300).collect());
        }
    }

    /// A herald error event (`{"code", "message", "clientMessageId"}`):
    /// a refused send of this run is no longer expected.
    pub fn error_event(&mut self, body: &[u8]) {
        self.server_error(&String::from_utf8_lossy(body));
        #[derive(serde::Deserialize)]
        struct ErrorEvent {
            #[serde(rename = "clientMessageId")]
            client_message_id: Option<String>,
        }
        let refused = serde_json::from_slice::<ErrorEvent>(body)
            .ok()
            .and_then(|e| e.client_message_id)
            .and_then(|id| Payload::parse(&id))
            .filter(|p| p.run == self.spec.run);
        match refused {
            Some(p) if p.due_ns < self.spec.measure_from_ns => self.counts.warmup_refused += 1,
            Some(_) => self.counts.refused += 1,
            None => {}
        }
    }

    /// Latency quantiles in ms (None without samples).
    pub fn latency(&self) -> Latency {
        if self.hist.is_empty() {
            return Latency::default();
        }
        let q = |x: f64| Some(self.hist.value_at_quantile(x) as f64 / 1000.0);
        Latency {
            p50_ms: q(0.5),
            p99_ms: q(0.99),
            p999_ms: q(0.999),
            max_ms: Some(self.hist.max() as f64 / 1000.0),
            mean_ms: Some(self.hist.mean() / 1000.0),
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Latency {
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub p999_ms: Option<f64>,
    pub max_ms: Option<f64>,
    pub mean_ms: Option<f64>,
}

/// State shared by the scheduler and every connection task.
pub struct Shared {
    pub collector: Mutex<Collector>,
    /// Connections that ended while in use (not per run).
    pub disconnects: AtomicU64,
    pub first_disconnect: Mutex<Option<String>>,
    /// Set before connections are closed on purpose.
    pub stopping: AtomicBool,
}

impl Shared {
    pub fn new(spec: RunSpec) -> Shared {
        Shared {
            collector: Mutex::new(Collector::new(spec, 1)),
            disconnects: AtomicU64::new(0),
            first_disconnect: Mutex::new(None),
            stopping: AtomicBool::new(false),
        }
    }

    /// Starts a new run: fresh counters and histogram.
    pub fn reset(&self, spec: RunSpec, fanout: u64) {
        *self.collector.lock() = Collector::new(spec, fanout);
    }

    pub fn disconnected(&self, why: String) {
        self.disconnects.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_disconnect.lock();
        if first.is_none() {
            *first = Some(why);
        }
    }

    pub fn disconnect_count(&self) -> u64 {
        self.disconnects.load(Ordering::Relaxed)
    }
}

/// One JSON line of output. Fields that do not apply are `null`.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Report {
    pub scenario: &'static str,
    pub target: &'static str,
    pub clients: usize,
    pub offered_rate: Option<f64>,
    pub delivered_rate: Option<f64>,
    pub sent: u64,
    pub received: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub p999_ms: Option<f64>,
    pub max_ms: Option<f64>,
    pub server_cpu_pct: Option<f64>,
    pub server_rss_kib: Option<u64>,
    pub generator_cpu_pct: Option<f64>,
    pub duration_s: f64,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// Rounds to 3 decimals for readable output.
pub fn r3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

impl Report {
    pub fn set_latency(&mut self, l: Latency) {
        self.p50_ms = l.p50_ms.map(r3);
        self.p99_ms = l.p99_ms.map(r3);
        self.p999_ms = l.p999_ms.map(r3);
        self.max_ms = l.max_ms.map(r3);
        if let Some(m) = l.mean_ms {
            self.extra("mean_ms", r3(m));
        }
    }

    pub fn set_usage(&mut self, u: crate::proc::Usage) {
        self.server_cpu_pct = u.server_cpu_pct.map(|x| (x * 10.0).round() / 10.0);
        self.server_rss_kib = u.server_rss_kib;
        self.generator_cpu_pct = u.generator_cpu_pct.map(|x| (x * 10.0).round() / 10.0);
    }

    pub fn extra(&mut self, key: &str, value: impl Into<serde_json::Value>) {
        self.extra.insert(key.to_string(), value.into());
    }

    /// Prints the JSON line on stdout.
    pub fn emit(&self) {
        match serde_json::to_string(self) {
            Ok(line) => println!("{line}"),
            Err(e) => eprintln!("herald-bench: cannot serialize the report: {e}"),
        }
    }

    /// A readable summary for stderr.
    pub fn summary(&self) -> String {
        let f = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.2}"));
        let mut s = format!(
            "[{}] target {}, {} clients: offered {} msg/s, delivered {} msg/s over {:.1} s\n",
            self.scenario,
            self.target,
            self.clients,
            f(self.offered_rate),
            f(self.delivered_rate),
            self.duration_s
        );
        let _ = writeln!(
            s,
            "  sent {}  received {}  lost {}  duplicated {}  out-of-order {}",
            self.sent, self.received, self.lost, self.duplicated, self.out_of_order
        );
        let _ = writeln!(
            s,
            "  latency ms: p50 {}  p99 {}  p99.9 {}  max {}",
            f(self.p50_ms),
            f(self.p99_ms),
            f(self.p999_ms),
            f(self.max_ms)
        );
        let _ = write!(
            s,
            "  cpu %: server {}  generator {};  server rss {} KiB",
            f(self.server_cpu_pct),
            f(self.generator_cpu_pct),
            self.server_rss_kib
                .map_or("-".to_string(), |v| v.to_string())
        );
        if !self.extra.is_empty() {
            let extras: Vec<String> = self.extra.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let _ = write!(s, "\n  {}", extras.join("  "));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn payload_roundtrip_and_padding() {
        let p = Payload {
            run: 0xdead_beef,
            sender: 7,
            seq: 42,
            due_ns: 123_456_789,
        };
        let text = p.to_text(100);
        assert_eq!(text.len(), 100);
        assert_eq!(Payload::parse(&text), Some(p));
        assert!(p.to_text(0).len() < 100);
        assert_eq!(Payload::parse("hello"), None);
        assert_eq!(Payload::parse("hb:zz:1:2:3:"), None);
    }

    #[test]
    fn a_refused_send_is_neither_expected_nor_lost() {
        let t0 = Instant::now();
        let mut spec = RunSpec::new(t0, 0.5, 1.0, 0.0);
        spec.run = 0xab;
        spec.per_receiver = true; // each message goes to 3 members
        let mut c = Collector::new(spec, 3);
        let p = |seq, due_ns| Payload {
            run: 0xab,
            sender: 2,
            seq,
            due_ns,
        };
        let measured = p(7, 600_000_000);
        let id = measured.client_message_id();
        assert!(id.len() <= 64, "{id}");
        assert_eq!(Payload::parse(&id), Some(measured));
        assert_eq!(Payload::parse("ab-2-7"), None);
        assert_eq!(Payload::parse("hb:ab:2:7"), None);
        c.counts_mut().expected = 6;
        c.counts_mut().warmup_expected = 3;
        let event = |id: &str| {
            format!(r#"{{"code":"rate_limited","message":"slow down","clientMessageId":"{id}"}}"#)
        };
        c.error_event(event(&id).as_bytes());
        c.error_event(event(&p(1, 100).client_message_id()).as_bytes()); // warm-up
        let other_run = Payload { run: 1, ..measured };
        c.error_event(event(&other_run.client_message_id()).as_bytes());
        c.error_event(br#"{"code":"internal","message":"no id"}"#);
        let counts = c.counts();
        assert_eq!(counts.server_errors, 4);
        assert_eq!((counts.refused, counts.warmup_refused), (1, 1));
        assert_eq!(c.lost(), 3, "the other message's deliveries");
        assert!(!c.all_arrived(), "the warm-up and 3 measured deliveries");
        for receiver in [0, 1, 3] {
            c.record(receiver, &p(8, 700_000_000), t0);
        }
        assert_eq!(c.lost(), 0);
        assert!(c.all_arrived());
    }

    #[test]
    fn collector_counts_loss_duplicates_order() {
        let t0 = Instant::now();
        let mut spec = RunSpec::new(t0, 0.0, 1.0, 0.0);
        spec.run = 5;
        let mut c = Collector::new(spec, 1);
        let mk = |sender, seq| Payload {
            run: 5,
            sender,
            seq,
            due_ns: 0,
        };
        let now = t0 + Duration::from_millis(3);
        c.record(1, &mk(0, 1), now);
        c.record(1, &mk(0, 0), now); // out of order for (0, 1)
        c.record(2, &mk(0, 2), now); // other receiver: fine
        c.record(1, &mk(0, 1), now); // duplicate
        c.record(1, &Payload { run: 4, ..mk(0, 9) }, now); // stale
        let k = c.counts();
        assert_eq!(
            (k.received, k.duplicated, k.out_of_order, k.stale),
            (3, 1, 1, 1)
        );
        let l = c.latency();
        assert!(l.p50_ms.is_some_and(|v| (2.9..3.1).contains(&v)), "{l:?}");
    }
}
