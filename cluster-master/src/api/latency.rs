//! API latency: every request timed by a middleware into a histogram per route and
//! method, which `/metrics` exposes as `glory_api_request_duration_seconds`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;

use crate::role::Node;

/// Upper bounds of the buckets, seconds.
pub(super) const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// One route's histogram: counts per bucket (not cumulative), the sum and the count.
#[derive(Clone, Debug, Default)]
pub(super) struct Histogram {
    pub buckets: [u64; BUCKETS.len()],
    pub sum: f64,
    pub count: u64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        if let Some(i) = BUCKETS.iter().position(|b| seconds <= *b) {
            self.buckets[i] += 1;
        }
        self.sum += seconds;
        self.count += 1;
    }

    /// `(le, cumulative count)` per bucket, then `+Inf`.
    pub fn cumulative(&self) -> Vec<(String, u64)> {
        let mut total = 0;
        let mut out: Vec<(String, u64)> = BUCKETS
            .iter()
            .zip(self.buckets)
            .map(|(b, n)| {
                total += n;
                (b.to_string(), total)
            })
            .collect();
        out.push(("+Inf".to_string(), self.count));
        out
    }
}

/// Histograms by (route, method). Routes are the router's patterns
/// (`/api/v1/nodes/{id}`), so ids do not multiply the series.
#[derive(Default)]
pub(crate) struct ApiLatency(Mutex<BTreeMap<(String, String), Histogram>>);

impl ApiLatency {
    pub(super) fn snapshot(&self) -> BTreeMap<(String, String), Histogram> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn observe(&self, route: String, method: String, seconds: f64) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((route, method))
            .or_default()
            .observe(seconds);
    }
}

/// Time the request (streams until their headers are sent).
pub(super) async fn timed(State(node): State<Arc<Node>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let method = req.method().to_string();
    let started = Instant::now();
    let response = next.run(req).await;
    node.api_latency
        .observe(route, method, started.elapsed().as_secs_f64());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_end_at_the_count() {
        let mut h = Histogram::default();
        for s in [0.0005, 0.003, 0.003, 20.0] {
            h.observe(s);
        }
        let c = h.cumulative();
        assert_eq!(c[0], ("0.001".to_string(), 1));
        assert_eq!(c[2], ("0.005".to_string(), 3));
        assert_eq!(c[BUCKETS.len() - 1], ("10".to_string(), 3));
        assert_eq!(c.last(), Some(&("+Inf".to_string(), 4)));
        assert!((h.sum - 20.0065).abs() < 1e-9);
    }
}
