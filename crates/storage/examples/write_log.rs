//! Writes a small partition log with the storage API, for `runnel log dump` to inspect.
//!
//! `cargo run --release -p runnel-storage --example write_log -- DIR [RECORDS]`

use std::time::Duration;

use bytes::Bytes;
use runnel_storage::record::{BatchBuilder, Header, NewRecord};
use runnel_storage::{Compression, Log, LogConfig, SystemClock};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().ok_or("usage: write_log DIR [RECORDS]")?;
    let records: u64 = args.next().map(|n| n.parse()).transpose()?.unwrap_or(1000);

    // Small segments so the demo shows several of them.
    let config = LogConfig { segment_bytes: 8 * 1024, index_interval_bytes: 1024, ..LogConfig::default() };
    let log = Log::open(&dir, config)?;
    let now = runnel_storage::Clock::now_ms(&SystemClock);
    let mut sent = 0;
    let mut codecs = Compression::ALL.iter().cycle();
    while sent < records {
        let mut batch = BatchBuilder::new(*codecs.next().expect("cycle"));
        for _ in 0..records.saturating_sub(sent).min(50) {
            batch.push(NewRecord {
                key: Some(Bytes::from(format!("customer-{}", sent % 7))),
                value: Some(Bytes::from(format!("{{\"order\":{sent},\"amount\":{}}}", sent * 3 % 100))),
                headers: vec![Header::new("source", Bytes::from_static(b"write_log"))],
                timestamp_ms: now + sent as i64,
            });
            sent += 1;
        }
        let info = log.append(&mut batch.build()?, 0)?;
        log.wait_durable(info.log_end, Duration::from_secs(10))?;
    }
    let o = log.offsets();
    println!(
        "{dir}: offsets [{}, {}), {} segments, {} bytes",
        o.log_start,
        o.log_end,
        log.segment_count(),
        log.size_bytes()
    );
    Ok(())
}
