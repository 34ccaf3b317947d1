//! The route table: every (method, path template) the gateway serves.
//!
//! Owns matching a request's method and path to a [`Route`] and its path
//! parameters, or to "wrong method" (405, with the `Allow` the table implies)
//! or "no route" (404). The router dispatches on [`Route`] and nothing else,
//! so this table is the whole HTTP surface: `GET /openapi.json` must describe
//! exactly [`Route::ALL`] (tests/openapi.rs checks both ways). It does no I/O
//! and knows nothing of what the routes do.

use http::Method;

/// Declares [`Route`] and [`Route::ALL`] from one list, so a route cannot be
/// served without being in the table.
macro_rules! routes {
    ($($(#[$doc:meta])* $variant:ident = $method:ident $template:literal, $label:literal;)*) => {
        /// One route of the table.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Route {
            $($(#[$doc])* $variant,)*
        }

        impl Route {
            /// Every route, in matching order.
            pub const ALL: &'static [Route] = &[$(Route::$variant),*];

            pub fn method(self) -> Method {
                match self { $(Route::$variant => Method::$method,)* }
            }

            /// The path, with `{stream}` and `{group}` for its parameters
            /// (OpenAPI's template syntax).
            pub fn template(self) -> &'static str {
                match self { $(Route::$variant => $template,)* }
            }

            /// The `route` label of the request metrics: a fixed vocabulary.
            pub fn label(self) -> &'static str {
                match self { $(Route::$variant => $label,)* }
            }
        }
    };
}

routes! {
    /// Liveness.
    Healthz = GET "/healthz", "healthz";
    /// Readiness: store reachable, not draining.
    Readyz = GET "/readyz", "readyz";
    /// Prometheus exposition.
    Metrics = GET "/metrics", "metrics";
    /// This table, described as OpenAPI 3.1.
    OpenApi = GET "/openapi.json", "openapi";
    /// Ingest over HTTP.
    Ingest = POST "/v1/streams/{stream}/events", "ingest";
    /// Long-poll read, or SSE with `Accept: text/event-stream`.
    Read = GET "/v1/streams/{stream}/events", "read";
    /// WebSocket ingest.
    WsIngest = GET "/v1/streams/{stream}/ws", "ws_ingest";
    /// WebSocket subscription.
    Subscribe = GET "/v1/streams/{stream}/subscribe", "subscribe";
    /// The tenant's streams.
    List = GET "/v1/streams", "streams";
    /// One stream: partitions, heads, schema.
    Describe = GET "/v1/streams/{stream}", "streams";
    /// A consumer group's checkpoints and lag.
    Group = GET "/v1/streams/{stream}/consumers/{group}", "consumers";
    /// Advance a consumer group's checkpoints.
    Commit = POST "/v1/streams/{stream}/consumers/{group}/commit", "consumers";
}

/// The path parameters of a matched route (empty when it has none).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Params<'a> {
    pub stream: &'a str,
    pub group: &'a str,
}

/// What the table says about a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Match<'a> {
    Found(Route, Params<'a>),
    /// The path is a route's, the method is not: the methods it has.
    WrongMethod(Vec<Method>),
    NotFound,
}

impl Route {
    /// The route `path` belongs to, whatever the method (the first in
    /// table order whose template fits).
    pub fn for_path(path: &str) -> Option<Route> {
        Route::ALL
            .iter()
            .copied()
            .find(|r| fit(r.template(), path).is_some())
    }

    /// Match `method` and `path` against the table.
    pub fn find<'a>(method: &Method, path: &'a str) -> Match<'a> {
        let mut allowed = Vec::new();
        for route in Route::ALL.iter().copied() {
            let Some(params) = fit(route.template(), path) else {
                continue;
            };
            if route.method() == method {
                return Match::Found(route, params);
            }
            allowed.push(route.method());
        }
        match allowed.is_empty() {
            true => Match::NotFound,
            false => Match::WrongMethod(allowed),
        }
    }
}

/// `path`'s parameters if it fits `template` segment by segment (a
/// parameter takes exactly one segment, possibly empty: the handler judges
/// its value).
fn fit<'a>(template: &str, path: &'a str) -> Option<Params<'a>> {
    let mut want = template.trim_start_matches('/').split('/');
    let mut have = path.trim_start_matches('/').split('/');
    let mut params = Params::default();
    loop {
        match (want.next(), have.next()) {
            (None, None) => return Some(params),
            (Some("{stream}"), Some(v)) => params.stream = v,
            (Some("{group}"), Some(v)) => params.group = v,
            (Some(w), Some(v)) if w == v => {}
            _ => return None,
        }
    }
}

/// The `Allow` header value for `methods` (plus `OPTIONS`: every path
/// answers CORS preflights).
pub fn allow_header(methods: &[Method]) -> String {
    let mut names: Vec<&str> = methods.iter().map(Method::as_str).collect();
    names.push("OPTIONS");
    names.dedup();
    names.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request path for `template` with `stream` and `group` filled in.
    fn fill(template: &str) -> String {
        template
            .replace("{stream}", "clicks")
            .replace("{group}", "billing")
    }

    #[test]
    fn each_template_finds_its_own_route() {
        for route in Route::ALL.iter().copied() {
            let path = fill(route.template());
            match Route::find(&route.method(), &path) {
                Match::Found(r, _) => assert_eq!(r, route, "{path}"),
                other => panic!("{path}: {other:?}"),
            }
        }
    }

    #[test]
    fn parameters_come_from_their_segments() {
        let found = Route::find(&Method::POST, "/v1/streams/clicks/consumers/billing/commit");
        let params = Params {
            stream: "clicks",
            group: "billing",
        };
        assert_eq!(found, Match::Found(Route::Commit, params));
        // A stream may be called like a literal segment.
        let found = Route::find(&Method::GET, "/v1/streams/consumers");
        assert!(matches!(found, Match::Found(Route::Describe, p) if p.stream == "consumers"));
    }

    #[test]
    fn a_known_path_with_another_method_lists_the_methods_it_has() {
        let wrong = Route::find(&Method::DELETE, "/v1/streams/clicks/events");
        assert_eq!(wrong, Match::WrongMethod(vec![Method::POST, Method::GET]));
        assert_eq!(
            allow_header(&[Method::POST, Method::GET]),
            "POST, GET, OPTIONS"
        );
        assert_eq!(
            Route::find(&Method::POST, "/healthz"),
            Match::WrongMethod(vec![Method::GET])
        );
        assert_eq!(
            Route::find(&Method::GET, "/v1/streams/a/b/c"),
            Match::NotFound
        );
        assert_eq!(Route::find(&Method::GET, "/"), Match::NotFound);
        assert_eq!(Route::for_path("/v1/streams/x/ws"), Some(Route::WsIngest));
    }
}
