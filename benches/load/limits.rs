//! The open-files limit: every connection is a descriptor here and one in the server.

use super::plan::{conns_variable, Scenario};

/// Descriptors beyond the connections: runtime, pipes, store files.
const HEADROOM: u64 = 128;

pub fn check_open_files(scenario: &Scenario) {
    let variable = conns_variable(scenario.name);
    check_sockets(scenario.name, scenario.conns, &variable);
}

/// Fails unless `sockets` connections fit the limit; `variable` lowers them.
pub fn check_sockets(name: &str, sockets: usize, variable: &str) {
    let Some(limit) = open_files_soft_limit() else {
        return;
    };
    let needed = sockets as u64 + HEADROOM;
    assert!(
        needed <= limit,
        "{name}: {sockets} connections need about {needed} open files but `ulimit -n` is {limit}; \
         lower {variable} or raise the limit",
    );
}

/// Connections that fit the open-files limit, at most `max`.
pub fn sockets_allowed(max: usize) -> usize {
    let room = open_files_soft_limit().map_or(u64::MAX, |limit| limit.saturating_sub(HEADROOM));
    usize::try_from(room).unwrap_or(usize::MAX).min(max)
}

/// The soft limit from /proc/self/limits; `None` where unknown or unlimited.
fn open_files_soft_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}
