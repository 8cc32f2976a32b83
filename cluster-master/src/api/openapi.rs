//! The OpenAPI 3 description of the REST API, served at `/api/v1/openapi.json`: the
//! document in `openapi.json`, with the lists the code owns filled in from the code
//! (the metric items), so that those cannot drift from what the handlers accept.

use std::sync::LazyLock;

use axum::http::header;
use axum::response::IntoResponse;
use serde_json::{json, Value};

const SPEC: &str = include_str!("openapi.json");

/// The document as served.
static SERVED: LazyLock<String> = LazyLock::new(|| {
    let mut spec: Value = match serde_json::from_str(SPEC) {
        Ok(v) => v,
        // A unit test parses it; a build that got here serves it as it is.
        Err(_) => return SPEC.to_string(),
    };
    let items: Vec<&str> = glory_monitor::items::NODE_ITEMS
        .iter()
        .chain(glory_monitor::procs::PROCESS_ITEMS.iter())
        .copied()
        .chain([glory_monitor::items::CHECK_ITEM])
        .collect();
    spec["components"]["schemas"]["MetricItem"]["enum"] = json!(items);
    serde_json::to_string(&spec).unwrap_or_else(|_| SPEC.to_string())
});

pub(super) async fn spec() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        SERVED.as_str(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_served_document_is_json_with_the_codes_items() {
        let spec: Value = serde_json::from_str(SPEC).expect("openapi.json parses");
        assert_eq!(spec["openapi"], "3.0.3");
        let served: Value = serde_json::from_str(&SERVED).unwrap();
        let items = served["components"]["schemas"]["MetricItem"]["enum"]
            .as_array()
            .unwrap();
        for item in ["cpu.percent", "proc.alive", "check.status"] {
            assert!(items.iter().any(|i| i == item), "{item}");
        }
    }
}
