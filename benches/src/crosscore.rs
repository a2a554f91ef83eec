//! The cross-core hop measured two ways: a request from one executor to
//! another and the reply back, over glommio's `channel_mesh` (what the server
//! uses) and over `flume` bounded channels.

use std::time::{Duration, Instant};

use glommio::channels::channel_mesh::MeshBuilder;
use glommio::{LocalExecutorBuilder, Placement};
use hdrhistogram::Histogram;

/// Queue depth, as the server's default `cross_core_queue_depth`.
pub const QUEUE_DEPTH: usize = 1024;

/// Which channel carries the hop.
#[derive(Debug, Clone, Copy)]
pub enum Transport {
    /// glommio `channel_mesh` (shared-memory SPSC rings, reactor wake-ups).
    Mesh,
    /// `flume` bounded MPMC channels with async send/recv.
    Flume,
}

/// Round-trip latencies of `rounds` sequential ping-pongs, in nanoseconds,
/// and their total time. `placements` pins the two executors.
pub fn round_trips(
    transport: Transport,
    rounds: u64,
    placements: [Placement; 2],
) -> (Histogram<u64>, Duration) {
    let [echo_at, caller_at] = placements;
    match transport {
        Transport::Mesh => mesh_round_trips(rounds, echo_at, caller_at),
        Transport::Flume => flume_round_trips(rounds, echo_at, caller_at),
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}

fn mesh_round_trips(
    rounds: u64,
    echo_at: Placement,
    caller_at: Placement,
) -> (Histogram<u64>, Duration) {
    let mesh = MeshBuilder::<u64, _>::full(2, QUEUE_DEPTH);
    let echo_mesh = mesh.clone();
    let echo = LocalExecutorBuilder::new(echo_at)
        .spawn(move || async move {
            let (senders, receivers) = echo_mesh.join().await.expect("join mesh");
            let peer = 1 - senders.peer_id();
            for _ in 0..rounds {
                let value = receivers
                    .recv_from(peer)
                    .await
                    .expect("recv")
                    .expect("open");
                senders.send_to(peer, value).await.expect("send");
            }
        })
        .expect("spawn echo executor");
    let caller = LocalExecutorBuilder::new(caller_at)
        .spawn(move || async move {
            let (senders, receivers) = mesh.join().await.expect("join mesh");
            let peer = 1 - senders.peer_id();
            let mut latencies = histogram();
            let started = Instant::now();
            for round in 0..rounds {
                let sent = Instant::now();
                senders.send_to(peer, round).await.expect("send");
                let echoed = receivers
                    .recv_from(peer)
                    .await
                    .expect("recv")
                    .expect("open");
                assert_eq!(echoed, round);
                latencies.saturating_record(sent.elapsed().as_nanos() as u64);
            }
            (latencies, started.elapsed())
        })
        .expect("spawn caller executor");
    echo.join().expect("echo executor");
    caller.join().expect("caller executor")
}

fn flume_round_trips(
    rounds: u64,
    echo_at: Placement,
    caller_at: Placement,
) -> (Histogram<u64>, Duration) {
    let (to_echo, echo_rx) = flume::bounded::<u64>(QUEUE_DEPTH);
    let (to_caller, caller_rx) = flume::bounded::<u64>(QUEUE_DEPTH);
    let echo = LocalExecutorBuilder::new(echo_at)
        .spawn(move || async move {
            for _ in 0..rounds {
                let value = echo_rx.recv_async().await.expect("recv");
                to_caller.send_async(value).await.expect("send");
            }
        })
        .expect("spawn echo executor");
    let caller = LocalExecutorBuilder::new(caller_at)
        .spawn(move || async move {
            let mut latencies = histogram();
            let started = Instant::now();
            for round in 0..rounds {
                let sent = Instant::now();
                to_echo.send_async(round).await.expect("send");
                let echoed = caller_rx.recv_async().await.expect("recv");
                assert_eq!(echoed, round);
                latencies.saturating_record(sent.elapsed().as_nanos() as u64);
            }
            (latencies, started.elapsed())
        })
        .expect("spawn caller executor");
    echo.join().expect("echo executor");
    caller.join().expect("caller executor")
}
