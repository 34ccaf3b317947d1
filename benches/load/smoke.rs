//! The smoke run's checks (`cargo test`): some 2xx everywhere, and the
//! gateway's answers have the contract's shape.

use http::StatusCode;

use super::plan::{Scenario, Target};
use super::report::Row;

pub fn check(rows: &[Row]) {
    for row in rows {
        let tally = &row.tally;
        assert!(
            tally.ok > 0,
            "{}: no request succeeded ({} non-2xx, {} connection errors; first failure: {})",
            row.scenario.name,
            tally.non_2xx,
            tally.conn_errors,
            tally.first_failure.as_deref().unwrap_or("none")
        );
    }
    for row in rows.iter().filter(|r| {
        matches!(
            r.scenario.target,
            Target::AuthGateway | Target::SchemaGateway
        )
    }) {
        check_all_2xx(row);
    }
    for row in rows.iter().filter(|r| is_durable_post(&r.scenario)) {
        check_durable_answer(row);
    }
    for row in rows.iter().filter(|r| r.scenario.name == "async-1") {
        check_status(row, StatusCode::ACCEPTED);
    }
    for row in rows {
        check_open_loop(row);
        check_store_scrape(row);
    }
    println!("load smoke: ok ({} scenarios answered)", rows.len());
}

/// Durable POSTs to either gateway (`durable-1`, `durable-100-auth`, …).
fn is_durable_post(s: &Scenario) -> bool {
    !s.target.is_ceiling() && !s.respond_async && !s.websocket
}

/// An auth scenario measures the cost of checks that pass: a 401/403
/// (wrong key or config) or 429 (limits too low) makes its row meaningless.
fn check_all_2xx(row: &Row) {
    let tally = &row.tally;
    assert!(
        tally.non_2xx == 0,
        "{}: {} answers were not 2xx, so auth or rate limits refused some \
         (first failure: {})",
        row.scenario.name,
        tally.non_2xx,
        tally.first_failure.as_deref().unwrap_or("none")
    );
}

fn check_status(row: &Row, expected: StatusCode) {
    let sample = row
        .tally
        .sample
        .as_ref()
        .expect("a run with 2xx keeps a sample");
    assert_eq!(
        sample.status,
        expected,
        "{}: expected HTTP {expected}, got {} ({})",
        row.scenario.name,
        sample.status,
        String::from_utf8_lossy(&sample.body)
    );
}

fn check_durable_answer(row: &Row) {
    check_status(row, StatusCode::OK);
    let sample = row
        .tally
        .sample
        .as_ref()
        .expect("a run with 2xx keeps a sample");
    let answer: serde_json::Value = serde_json::from_slice(&sample.body).unwrap_or_else(|e| {
        panic!(
            "{}: the 200 body is not JSON ({e}): {:?}",
            row.scenario.name, sample.body
        )
    });
    assert_eq!(
        answer["accepted"].as_u64(),
        Some(row.events_per_request),
        "{}: `accepted` should count the request's events: {answer}",
        row.scenario.name
    );
    assert_eq!(
        answer["rejected"].as_u64(),
        Some(0),
        "{}: nothing should be rejected: {answer}",
        row.scenario.name
    );
}

/// Every open-loop step got 2xx answers, every request due was sent.
fn check_open_loop(row: &Row) {
    for step in &row.open {
        let out = &step.outcome;
        assert!(
            out.tally.ok > 0 && out.unanswered == 0 && out.unsent == 0,
            "{}: open loop at {:.0} req/s: {} answered 2xx of {} due, {} unsent, {} unanswered (first failure: {})",
            row.scenario.name,
            step.schedule.rate,
            out.tally.ok,
            out.due,
            out.unsent,
            out.unanswered,
            out.tally.first_failure.as_deref().unwrap_or("none")
        );
    }
}

/// A durable gateway with metrics reported the PUTs of its commits.
fn check_store_scrape(row: &Row) {
    if row.scenario.target != Target::Gateway || row.scenario.respond_async {
        return;
    }
    let puts = row.per_million_events(super::report::RequestClass::Put);
    assert!(
        puts.is_some_and(|p| p > 0.0),
        "{}: no store PUTs seen on /metrics over the window ({:?})",
        row.scenario.name,
        row.store
    );
}
