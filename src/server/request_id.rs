//! Request ids: one per HTTP request, in the `X-Request-Id` answer header,
//! in every problem body (`request_id`) and in the log line of every error,
//! so a client's report leads straight to the gateway's log.
//!
//! Owns choosing the id (the client's `X-Request-Id` when it is a short,
//! safe token, else a new ULID) and carrying it through the request's task.

use http::HeaderMap;

/// Header carrying the id, both ways.
pub const HEADER: &str = "x-request-id";
/// Longest client-chosen id kept; longer or odd ones are replaced.
const MAX_LEN: usize = 64;

tokio::task_local! {
    static CURRENT: String;
}

/// The client's id when it is 1–64 of `[A-Za-z0-9._:-]`, else a new one.
pub fn choose(headers: &HeaderMap) -> String {
    let theirs = headers
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= MAX_LEN
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
        });
    match theirs {
        Some(id) => id.to_string(),
        None => ulid::Ulid::new().to_string().to_ascii_lowercase(),
    }
}

/// Run `f` with `id` as the current request id.
pub async fn scope<F: std::future::Future>(id: String, f: F) -> F::Output {
    CURRENT.scope(id, f).await
}

/// The current request's id, if this task serves one.
pub fn current() -> Option<String> {
    CURRENT.try_with(|id| id.clone()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_safe_client_id_is_kept_and_anything_else_replaced() {
        let mut h = HeaderMap::new();
        h.insert(HEADER, "abc-123.x:y".parse().unwrap());
        assert_eq!(choose(&h), "abc-123.x:y");
        for bad in ["", "has space", "quote\"", &"x".repeat(65)] {
            h.insert(HEADER, bad.parse().unwrap());
            let id = choose(&h);
            assert_eq!(id.len(), 26, "{bad:?} → {id}");
        }
    }
}
