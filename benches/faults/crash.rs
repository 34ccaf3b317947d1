//! The crash campaign: traffic at a gateway that is killed (no drain, no
//! flush) at a random crash point of its commit, round after round, each
//! round on a fresh gateway over the same bucket.
//!
//! A crash point is a `Fault::Hold` (before the request) or
//! `Fault::HoldAfter` (after it landed) on a segment PUT or a commit-record
//! PUT, after 0–2 such PUTs went through. Once a request is parked there
//! the gateway is killed; its clients' connections are cut. At the end the
//! log must hold every 200'd event once at its offset, nothing twice, seqs
//! dense, no record naming a missing segment, and a last fresh gateway
//! must ingest. 202'd events that a kill lost are counted (documented, not
//! a failure).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice::faults::{Fault, FaultyStore};

use super::common::gateway::{test_config, TestGateway};
use super::common::{Backend, Place};
use super::{finish_traffic, probe, start_traffic, verify, Ledger, Rng, Row, PARTITIONS};

/// A crash point: its name, the fault that parks the request, the key pattern.
fn pick_point(rng: &mut Rng) -> (&'static str, Fault, &'static str) {
    match rng.below(4) {
        0 => ("before segment PUT", Fault::Hold, "/data/"),
        1 => ("after segment PUT", Fault::HoldAfter, "/data/"),
        2 => ("before commit record", Fault::Hold, "/log/"),
        _ => ("after commit record", Fault::HoldAfter, "/log/"),
    }
}

pub async fn campaign(
    store_name: &'static str,
    backend: Backend,
    rounds: usize,
    limit: Duration,
    rng: &mut Rng,
) -> Row {
    let place = Place::new(backend);
    let mut config = test_config();
    config.streams.partitions = PARTITIONS;
    let client = reqwest::Client::new();
    let mut ledger = Ledger {
        crashes: true,
        ..Ledger::default()
    };
    let mut points: BTreeMap<&'static str, u64> = BTreeMap::new();
    let started = Instant::now();
    let mut done = 0;
    while done < rounds && started.elapsed() < limit {
        let (name, fault, pattern) = pick_point(rng);
        let faulty = Arc::new(FaultyStore::new(place.client()));
        let passed = rng.below(3) as u32;
        if passed > 0 {
            faulty.inject(pattern, Fault::Delay(Duration::ZERO), passed);
        }
        faulty.inject(pattern, fault, 1);
        let gw = TestGateway::start_killable(config.clone(), place.store_of(faulty.clone())).await;
        let clients = start_traffic(&client, &gw, done, rng);
        if faulty.wait_held(1, Duration::from_secs(10)).await {
            *points.entry(name).or_default() += 1;
        }
        gw.kill();
        finish_traffic(clients, &mut ledger).await;
        done += 1;
    }
    let gw = TestGateway::start(config, place.store()).await;
    let resumed = probe(&client, &gw, done, &mut ledger).await;
    gw.stop().await;
    verify(store_name, done, points, ledger, resumed, &place.store()).await
}

/// The crash campaign's table.
pub fn print(rows: &[Row]) {
    println!();
    println!("| store | crashes | crash points (by kind) | requests | 200 | 202 | cut by the kill | false 200 (must be 0) | acked events verified | duplicated (0) | 202'd lost to a kill (documented) | resumed after restart |");
    println!("|---|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|---|");
    for r in rows {
        let points: Vec<String> = r.faults.iter().map(|(k, n)| format!("{k}: {n}")).collect();
        let l = &r.ledger;
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.store,
            r.rounds,
            points.join(", "),
            l.requests,
            l.ok,
            l.accepted_202,
            l.cut,
            r.false_200,
            r.verified,
            r.duplicated,
            r.at_risk_lost,
            if r.resumed { "yes" } else { "NO" },
        );
    }
}
