//! Criterion: mean round trip of the cross-core hop, `channel_mesh` vs
//! `flume`. The tail (p50/p99/p999) comes from `cargo run --release -p
//! shardlog-benches --bin crosscore-tail`; both are in docs/architecture.md.

use criterion::{Criterion, criterion_group, criterion_main};
use glommio::Placement;
use shardlog_benches::crosscore::{Transport, round_trips};

fn crosscore(c: &mut Criterion) {
    let mut group = c.benchmark_group("crosscore_round_trip");
    for (name, transport) in [
        ("channel_mesh", Transport::Mesh),
        ("flume", Transport::Flume),
    ] {
        group.bench_function(name, |b| {
            b.iter_custom(|rounds| {
                round_trips(transport, rounds, [Placement::Unbound, Placement::Unbound]).1
            })
        });
    }
    group.finish();
}

criterion_group!(benches, crosscore);
criterion_main!(benches);
