//! The fuzz targets' harness (`tests/fuzz_stomp.rs`, `tests/fuzz_json.rs`):
//! a time budget, a checked-in corpus replayed on every run, corpus-driven
//! mutation, and failure reports a developer can turn into a corpus entry.
//!
//! Why proptest and not cargo-fuzz: libFuzzer needs nightly `-Z` flags and
//! only stable Rust exists here. Proptest runs on stable, shrinks a failing
//! input to a minimal one, and its strategies can start from the corpus, so
//! what is lost is coverage guidance only; the generators make up for part
//! of it by aiming at the grammar's edges.
//!
//! Budget: `HERALD_FUZZ_SECS` is the wall time of one target (test binary),
//! split between its properties by the share each one asks for; the
//! default, [`DEFAULT_SECS`], keeps a plain `cargo test` quick. CI sets 60
//! (`scripts/test.sh`). `HERALD_FUZZ_SEED` replays a run: the seed of the
//! failing batch is printed with every failure.

#![allow(dead_code)]

use std::cell::Cell;
use std::fmt::Debug;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, RngSeed, TestCaseResult, TestError, TestRunner};

/// Seconds per target under a plain `cargo test`.
pub const DEFAULT_SECS: f64 = 2.0;
/// Cases per batch: the deadline is checked between batches.
const BATCH: u32 = 64;
/// How long proptest may spend shrinking a failure.
const SHRINK_MS: u32 = 30_000;

/// The corpus directory `tests/fuzz/corpus/<name>`.
pub fn corpus_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz/corpus")
        .join(name)
}

/// Every file of a corpus directory, sorted by name. An empty or missing
/// corpus fails the test: a replay that finds nothing must not pass.
pub fn corpus(name: &str) -> Vec<(String, Vec<u8>)> {
    let dir = corpus_dir(name);
    let mut out: Vec<(String, Vec<u8>)> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.expect("corpus entry").path();
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let bytes = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            (name, bytes)
        })
        .filter(|(name, _)| !name.starts_with('.'))
        .collect();
    out.sort();
    assert!(
        out.len() >= 5,
        "corpus {} has {} entries; it is checked in and must be there",
        dir.display(),
        out.len()
    );
    out
}

/// The wall time for a property that takes `share` of its target's budget.
pub fn budget(share: f64) -> Duration {
    let secs = match std::env::var("HERALD_FUZZ_SECS") {
        Ok(raw) => raw
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s >= 0.0)
            .unwrap_or_else(|| panic!("HERALD_FUZZ_SECS={raw:?} is not a number of seconds")),
        Err(_) => DEFAULT_SECS,
    };
    Duration::from_secs_f64(secs * share)
}

fn first_seed() -> u64 {
    match std::env::var("HERALD_FUZZ_SEED") {
        Ok(raw) => raw
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("HERALD_FUZZ_SEED={raw:?} is not a u64")),
        Err(_) => {
            // Differs per run (and per property, by the counter) so that
            // CI explores new inputs every time.
            static N: AtomicU64 = AtomicU64::new(0);
            let t = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            t ^ (u64::from(std::process::id()) << 32) ^ N.fetch_add(1, Ordering::Relaxed) << 48
        }
    }
}

/// Where a failing input is written for the developer to keep.
fn failure_path(name: &str, bytes: &[u8]) -> PathBuf {
    // FNV-1a: a stable name for the same input.
    let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("fuzz-failures")
        .join(name)
        .join(format!("crash-{hash:016x}"))
}

/// Runs `test` on values of `strategy` until the property's share of the
/// budget is spent and at least `min_cases` ran (so that a short budget
/// still tests, and a target can count on reaching each of its paths).
/// On failure panics with the minimal failing value, the seed that
/// reproduces it, and (through `to_corpus`) the bytes written to a file
/// that can be copied into `tests/fuzz/corpus/<corpus>/`. Returns the
/// number of cases run.
pub fn fuzz<S>(
    name: &str,
    corpus: &str,
    share: f64,
    min_cases: u64,
    strategy: S,
    to_corpus: impl Fn(&S::Value) -> Vec<u8>,
    test: impl Fn(S::Value) -> TestCaseResult,
) -> u64
where
    S: Strategy,
    S::Value: Debug,
{
    let started = Instant::now();
    let deadline = started + budget(share);
    let mut seed = first_seed();
    let mut cases = 0u64;
    loop {
        let config = Config {
            cases: BATCH,
            failure_persistence: None,
            rng_seed: RngSeed::Fixed(seed),
            max_shrink_time: SHRINK_MS,
            max_shrink_iters: 100_000,
            // Rejections are not used by the targets; fail loudly if a
            // strategy starts filtering everything out.
            max_global_rejects: 64,
            ..Config::default()
        };
        let mut runner = TestRunner::new(config);
        match runner.run(&strategy, &test) {
            Ok(()) => {}
            Err(TestError::Abort(why)) => panic!("fuzz {name}: aborted: {why}"),
            Err(TestError::Fail(why, value)) => {
                let bytes = to_corpus(&value);
                let path = failure_path(corpus, &bytes);
                let saved = path
                    .parent()
                    .map(fs::create_dir_all)
                    .and_then(|r| r.ok())
                    .and_then(|()| fs::write(&path, &bytes).ok())
                    .is_some();
                let keep = if saved {
                    format!(
                        "written to {}; to keep it as a regression input:\n  cp {} {}/",
                        path.display(),
                        path.display(),
                        corpus_dir(corpus).display()
                    )
                } else {
                    format!("(could not write it to {})", path.display())
                };
                let mut shown = format!("{value:?}");
                if shown.len() > 4000 {
                    let cut = (0..=4000)
                        .rev()
                        .find(|&i| shown.is_char_boundary(i))
                        .unwrap_or(0);
                    shown.truncate(cut);
                    shown.push_str("...");
                }
                panic!(
                    "fuzz {name}: {why}\nminimal failing input: {shown}\n\
                     as corpus bytes: b\"{}\"\n{keep}\nreplay: HERALD_FUZZ_SEED={seed}",
                    escape_bytes(&bytes)
                );
            }
        }
        cases += u64::from(BATCH);
        if Instant::now() >= deadline && cases >= min_cases {
            break;
        }
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    }
    println!(
        "fuzz {name}: {cases} cases in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    cases
}

/// `bytes` as a Rust byte-string literal body (printable ASCII as is).
pub fn escape_bytes(bytes: &[u8]) -> String {
    bytes
        .iter()
        .flat_map(|&b| b.escape_ascii())
        .map(char::from)
        .collect()
}

/// Counts outcomes inside a property (which proptest wants as `Fn`), so a
/// target can assert afterwards that every path was exercised.
#[derive(Default)]
pub struct Tally(Vec<(&'static str, Cell<u64>)>);

impl Tally {
    pub fn new(keys: &[&'static str]) -> Tally {
        Tally(keys.iter().map(|k| (*k, Cell::new(0))).collect())
    }

    pub fn hit(&self, key: &str) {
        let (_, c) = self
            .0
            .iter()
            .find(|(k, _)| *k == key)
            .unwrap_or_else(|| panic!("no tally key {key}"));
        c.set(c.get() + 1);
    }

    pub fn get(&self, key: &str) -> u64 {
        self.0
            .iter()
            .find(|(k, _)| *k == key)
            .map_or(0, |(_, c)| c.get())
    }

    /// Fails unless every key was hit at least `min` times: a generator
    /// that stopped reaching a path would otherwise pass vacuously.
    pub fn assert_each_at_least(&self, name: &str, min: u64) {
        println!("fuzz {name}: {self:?}");
        for (key, count) in &self.0 {
            assert!(
                count.get() >= min,
                "fuzz {name}: `{key}` reached {} times, expected at least {min}: {self:?}",
                count.get()
            );
        }
    }
}

impl Debug for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, c)| (k, c.get())))
            .finish()
    }
}

/// One edit of a seed input.
#[derive(Debug, Clone)]
pub enum Mutation {
    /// Overwrite one byte.
    Set(Index, u8),
    /// Insert a token of the target's dictionary.
    Insert(Index, Index),
    /// Delete up to `n` bytes.
    Delete(Index, u8),
    /// Repeat a slice (up to 64 bytes) `n` times: reaches size limits.
    Repeat(Index, u8, u32),
    /// Insert a slice of another corpus entry.
    Splice(Index, Index, Index, u8),
}

/// Corpus entries edited by a few mutations (libFuzzer's basic moves,
/// without the coverage feedback). `max_repeat` bounds what one
/// `Repeat` may add, so that the server's size limits are reachable.
pub fn mutated(
    seeds: Vec<Vec<u8>>,
    dictionary: &'static [&'static [u8]],
    max_repeat: u32,
) -> impl Strategy<Value = Vec<u8>> + Clone {
    let seeds = Arc::new(seeds);
    let pick = seeds.clone();
    mutate(
        (0..seeds.len()).prop_map(move |i| pick[i].clone()),
        seeds,
        dictionary,
        max_repeat,
    )
}

/// Inputs of `base` edited by a few mutations; `Splice` takes its pieces
/// from `others`.
pub fn mutate<S>(
    base: S,
    others: Arc<Vec<Vec<u8>>>,
    dictionary: &'static [&'static [u8]],
    max_repeat: u32,
) -> impl Strategy<Value = Vec<u8>> + Clone
where
    S: Strategy<Value = Vec<u8>> + Clone,
{
    let mutation = prop_oneof![
        4 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        4 => (any::<Index>(), any::<Index>()).prop_map(|(i, t)| Mutation::Insert(i, t)),
        2 => (any::<Index>(), 1..16u8).prop_map(|(i, n)| Mutation::Delete(i, n)),
        1 => (any::<Index>(), 1..64u8, repeat_count(max_repeat))
            .prop_map(|(i, l, n)| Mutation::Repeat(i, l, n)),
        2 => (any::<Index>(), any::<Index>(), any::<Index>(), 1..64u8)
            .prop_map(|(i, s, f, l)| Mutation::Splice(i, s, f, l)),
    ];
    (base, prop::collection::vec(mutation, 0..8)).prop_map(move |(mut out, edits)| {
        for edit in edits {
            apply(&mut out, &edit, &others, dictionary);
        }
        out
    })
}

/// Mostly small counts: a large one makes a large (slow) input, needed
/// only now and then to reach the size limits.
fn repeat_count(max: u32) -> impl Strategy<Value = u32> + Clone {
    let max = max.max(2);
    prop_oneof![
        8 => 1..16u32.min(max),
        3 => 1..1024u32.min(max),
        1 => 1..=max,
    ]
}

fn apply(out: &mut Vec<u8>, edit: &Mutation, seeds: &[Vec<u8>], dictionary: &[&[u8]]) {
    // An insertion point: any of the `len + 1` gaps.
    let at = |i: &Index, len: usize| i.index(len + 1);
    match edit {
        Mutation::Set(i, b) => {
            if !out.is_empty() {
                let i = i.index(out.len());
                out[i] = *b;
            }
        }
        Mutation::Insert(i, t) => {
            let token = dictionary[t.index(dictionary.len())];
            let i = at(i, out.len());
            out.splice(i..i, token.iter().copied());
        }
        Mutation::Delete(i, n) => {
            if !out.is_empty() {
                let i = i.index(out.len());
                let end = (i + usize::from(*n)).min(out.len());
                out.drain(i..end);
            }
        }
        Mutation::Repeat(i, len, n) => {
            if !out.is_empty() {
                let i = i.index(out.len());
                let end = (i + usize::from(*len)).min(out.len());
                let piece = out[i..end].to_vec();
                let extra: Vec<u8> = piece
                    .iter()
                    .copied()
                    .cycle()
                    .take(piece.len() * *n as usize)
                    .collect();
                out.splice(end..end, extra);
            }
        }
        Mutation::Splice(i, s, from, len) => {
            if seeds.is_empty() {
                return;
            }
            let other = &seeds[s.index(seeds.len())];
            if !other.is_empty() {
                let from = from.index(other.len());
                let end = (from + usize::from(*len)).min(other.len());
                let i = at(i, out.len());
                out.splice(i..i, other[from..end].iter().copied());
            }
        }
    }
}
