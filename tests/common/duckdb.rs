//! DuckDB (the `duckdb` Python package; tests/run.sh installs it) reading
//! Parquet the way users do.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

/// Rows of `read_parquet(glob, hive_partitioning, union_by_name)` as JSON
/// objects (received_at as epoch ms in `received_ms`), ordered by
/// partition and offset.
pub fn read_parquet(glob: &Path) -> Vec<BTreeMap<String, Value>> {
    let sql = format!(
        "SELECT * EXCLUDE (received_at), epoch_ms(received_at) AS received_ms \
         FROM read_parquet('{}', hive_partitioning = true, union_by_name = true) \
         ORDER BY partition, \"offset\"",
        glob.display()
    );
    let script = "import duckdb, json, sys\n\
        r = duckdb.sql(sys.argv[1])\n\
        cols = [d[0] for d in r.description]\n\
        print(json.dumps([dict(zip(cols, row)) for row in r.fetchall()], default=str))\n";
    let out = std::process::Command::new("python3")
        .args(["-c", script, &sql])
        .output()
        .expect("python3 with the duckdb package (tests/run.sh installs it)");
    assert!(
        out.status.success(),
        "duckdb failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("duckdb printed JSON rows")
}
