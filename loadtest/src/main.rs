//! `slotq-loadtest`: load scenarios against a running slotq (filled in by the load-test issue).

fn main() {
    let scenario = std::env::args().nth(1).unwrap_or_default();
    eprintln!(
        "slotq-loadtest: scenario {scenario:?} is not available in this build; \
         the load generator (throughput, latency, storm, mixed, baseline) is tracked in the load-test issue"
    );
    std::process::exit(2);
}
