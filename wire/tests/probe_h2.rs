//! Raw HTTP/2 probes (Python h2/hyperframe) of what stock clients never
//! send: unknown method, over-limit message, unknown encoding, bad protobuf,
//! rapid stream resets, oversized header block; after each, a normal call
//! must still be served.

#[path = "interop/harness.rs"]
mod harness;

use harness::{TestServer, assert_client_passed, require_python, run_client};

/// The probes that send a 5 MiB message (over the 4 MiB limit).
const HUGE_MESSAGE_PROBES: &str = "huge_message_prefix_only,huge_message_full";
/// Every other probe.
const OTHER_PROBES: &str = "unknown_method,unknown_encoding,bad_protobuf,\
                            server_compressed_flag,rapid_reset,oversized_header_block";
/// Peak memory the server may gain while refusing a 5 MiB message: less
/// than the message, so it cannot have been buffered whole (h2 may hold up
/// to one stream window, 1 MiB by default, before the reset lands).
const HUGE_MESSAGE_PEAK_GROWTH_BYTES_MAX: u64 = 4 * 1024 * 1024;

#[test]
fn probe_raw_http2_misbehaviour() {
    require_python();
    let server = TestServer::start();
    let port = server.port().to_string();

    let run = run_client(
        "python3",
        &["probe_h2.py", "--port", &port, "--probes", OTHER_PROBES],
    );
    assert_client_passed("raw HTTP/2 probes", &run);

    // The server runs in this process: its peak RSS while it refuses a
    // 5 MiB message shows whether it buffered the message.
    let peak_resettable = harness::reset_peak_rss();
    let rss_before = harness::rss_bytes().expect("VmRSS readable");
    let run = run_client(
        "python3",
        &[
            "probe_h2.py",
            "--port",
            &port,
            "--probes",
            HUGE_MESSAGE_PROBES,
        ],
    );
    assert_client_passed("5 MiB message probes", &run);
    let peak = harness::peak_rss_bytes().expect("VmHWM readable");
    let growth_bytes = peak.saturating_sub(rss_before);
    println!(
        "peak RSS growth while refusing 5 MiB: {growth_bytes} bytes (reset: {peak_resettable})"
    );
    if peak_resettable {
        assert!(
            growth_bytes < HUGE_MESSAGE_PEAK_GROWTH_BYTES_MAX,
            "server memory grew {growth_bytes} bytes while refusing a 5 MiB message"
        );
    }
}
