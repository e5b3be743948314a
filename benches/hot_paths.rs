//! Micro-benchmarks of the per-message work on the send-store-push path
//! that involves no I/O: push bodies, STOMP framing, ack batches.
//!
//! `cargo bench --bench hot_paths` measures: each case runs in samples of
//! about 50 ms, and the median and the spread of the samples are printed
//! in ns per operation (medians, because the machine is noisy).
//! `cargo test` runs the same binary once per case as a smoke test
//! (no `--bench` argument): every case still checks what it produced.

use std::hint::black_box;
use std::time::{Duration, Instant};

use herald::model::dto::{MessageVo, MessageVoTemplate};
use herald::model::{AckCommand, AckEnvelope, AckRecord, InboxStatus, MessageDoc, SessionType};
use herald::stomp::{encode_to_vec, Command, Decoded, Decoder, Frame, Limits, StompVersion};

/// Members of the group whose push bodies are built per message.
const MEMBERS: usize = 1000;
const SAMPLES: usize = 15;
const SAMPLE_TIME: Duration = Duration::from_millis(50);

fn main() {
    let measure = std::env::args().any(|a| a == "--bench");
    let doc = group_message();
    run(
        measure,
        "push bodies of a 1000-member group, MessageVo per member",
        MEMBERS,
        || {
            let mut bytes = 0;
            for m in 0..MEMBERS as i64 {
                let vo = MessageVo::new(&doc, m + 1, "pending");
                bytes += serde_json::to_vec(&vo).map(|b| b.len()).unwrap_or(0);
            }
            bytes
        },
    );
    run(
        measure,
        "push bodies of a 1000-member group, one template",
        MEMBERS,
        || {
            let Some(template) = MessageVoTemplate::new(&doc) else {
                return 0;
            };
            (0..MEMBERS as i64)
                .map(|m| template.body(m + 1, "pending").len())
                .sum()
        },
    );
    let send = send_frame();
    run(measure, "decode a SEND frame", 1, || {
        let mut decoder = Decoder::new(Limits::default());
        decoder.set_version(StompVersion::V1_2);
        decoder.feed(&send);
        match decoder.next() {
            Ok(Some(Decoded::Frame(f))) => f.body.len(),
            _ => 0,
        }
    });
    let body = serde_json::to_vec(&MessageVo::new(&doc, 1, "pending")).unwrap_or_default();
    run(measure, "encode a MESSAGE frame", 1, || {
        encode_to_vec(&message_frame(&body), StompVersion::V1_2).len()
    });
    let acks = ack_batch(200);
    run(
        measure,
        "decode a batch of 200 acks",
        200,
        || match serde_json::from_slice::<AckEnvelope>(&acks) {
            Ok(AckEnvelope::Batch(b)) => b.len(),
            _ => 0,
        },
    );
}

/// Runs `case` (which returns a size that must not be zero, so that a
/// broken case fails instead of measuring nothing) and, when measuring,
/// prints ns per operation, `ops` operations per call.
fn run(measure: bool, name: &str, ops: usize, mut case: impl FnMut() -> usize) {
    assert_ne!(black_box(case()), 0, "{name}: produced nothing");
    if !measure {
        return;
    }
    let mut calls = 1u64;
    let start = Instant::now();
    while start.elapsed() < SAMPLE_TIME {
        black_box(case());
        calls += 1;
    }
    let mut samples: Vec<f64> = (0..SAMPLES)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..calls {
                black_box(case());
            }
            start.elapsed().as_nanos() as f64 / (calls as f64 * ops as f64)
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    println!(
        "{name:<62} median {:>9.1} ns/op  ({:.1}-{:.1}, {SAMPLES} samples)",
        samples[SAMPLES / 2],
        samples[0],
        samples[SAMPLES - 1]
    );
}

fn group_message() -> MessageDoc {
    MessageDoc {
        message_id: 385_701_919_407_996_928,
        session_id: 385_701_919_407_996_929,
        session_type: SessionType::Group,
        seq: 1234,
        sender_id: 385_701_919_407_996_930,
        to_user_id: None,
        group_id: Some(385_701_919_407_996_931),
        message_type: 1,
        content: "Lunch at noon? The \"usual\" place, 2nd floor.".to_string(),
        client_message_id: "c1f0e8d2-4b7a-4d1e-9c3f-2a6b8e0d5f11".to_string(),
        client_ts: 1_764_489_600_000,
        server_ts: 1_764_489_600_012,
        adjusted_ts: 1_764_489_600_012,
        recalled: false,
    }
}

fn send_frame() -> Vec<u8> {
    let body = br#"{"clientMessageId":"c1f0e8d2-4b7a-4d1e-9c3f-2a6b8e0d5f11","toUserId":"385701919407996930","messageType":1,"content":"Lunch at noon?","clientTimestamp":1764489600000}"#;
    let frame = Frame {
        command: Command::Send,
        headers: vec![
            ("destination".into(), "/app/send".into()),
            ("content-type".into(), "application/json".into()),
            ("receipt".into(), "r-17".into()),
        ],
        body: body.to_vec().into(),
    };
    encode_to_vec(&frame, StompVersion::V1_2)
}

fn message_frame(body: &[u8]) -> Frame {
    Frame {
        command: Command::Message,
        headers: vec![
            ("destination".into(), "/user/queue/message".into()),
            ("subscription".into(), "sub-0".into()),
            ("message-id".into(), "385701919407996928".into()),
            ("ack".into(), "385701919407996928".into()),
            ("content-type".into(), "application/json".into()),
        ],
        body: body.to_vec().into(),
    }
}

/// A batch as the STOMP ACKs of `n` users gathered by the ack service.
fn ack_batch(n: u64) -> Vec<u8> {
    let records = (0..n)
        .map(|i| AckRecord {
            user_id: 385_701_919_407_996_000 + i,
            command: AckCommand::Entries {
                entries: vec![(385_701_919_407_997_000 + i, 1000 + i as i64)],
                status: InboxStatus::Delivered,
            },
            reply_token: None,
            reply_node: 0,
        })
        .collect();
    serde_json::to_vec(&AckEnvelope::Batch(records)).unwrap_or_default()
}
