//! API keys for auth-on test configs: fresh secrets and their `[[keys]]`
//! entries (the config holds only each secret's hash).

use sluice::auth::keys::{generate, hash_text};

/// A freshly generated secret.
pub fn secret() -> String {
    generate().unwrap()
}

/// A `[[keys]]` entry: key `id` of `tenant` with `scopes`, holding the hash
/// of `secret`; `extra` is more TOML lines of the entry (`streams`,
/// `origins`, `rate`), or empty.
pub fn entry(id: &str, tenant: &str, secret: &str, scopes: &[&str], extra: &str) -> String {
    let scopes: Vec<String> = scopes.iter().map(|s| format!("\"{s}\"")).collect();
    format!(
        "[[keys]]\nid = \"{id}\"\ntenant = \"{tenant}\"\nhash = \"{}\"\nscopes = [{}]\n{extra}\n",
        hash_text(secret),
        scopes.join(", ")
    )
}
