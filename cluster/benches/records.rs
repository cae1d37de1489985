//! Bulk-lane record size (issue 17): AES-256-GCM seal + open of a 16 MiB
//! message cut into records of each size, one core, the buffers allocated
//! before the clock. The chosen size is the smallest within a few percent
//! of the best throughput (smaller records mean less buffered per record
//! and earlier first bytes).

#![allow(missing_docs)]
#![allow(clippy::unwrap_used, clippy::expect_used)] // a bench fails by panicking

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use manta_cluster::bulk::{LaneSecrets, RECORD_HEADER, Side, lane_keys};

const MESSAGE: usize = 16 << 20;

fn records(c: &mut Criterion) {
    let mut g = c.benchmark_group("bulk_records_seal_open_16MiB");
    g.throughput(Throughput::Bytes(MESSAGE as u64));
    g.sample_size(10);
    for size in [16 << 10, 64 << 10, 256 << 10, 1 << 20] {
        let secrets = LaneSecrets::fresh();
        let (mut send, _) = lane_keys(&secrets, Side::Dialer).unwrap();
        let (_, mut recv) = lane_keys(&secrets, Side::Listener).unwrap();
        let mut buf = Vec::with_capacity(RECORD_HEADER + size + 16);
        g.bench_with_input(BenchmarkId::from_parameter(size), &size, |b, &size| {
            b.iter(|| {
                for _ in 0..MESSAGE / size {
                    buf.clear();
                    buf.resize(RECORD_HEADER + size, 7);
                    send.seal(&mut buf).unwrap();
                    let (h, body) = buf.split_at_mut(RECORD_HEADER);
                    let header = [h[0], h[1], h[2], h[3]];
                    recv.open(header, body).unwrap();
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, records);
criterion_main!(benches);
