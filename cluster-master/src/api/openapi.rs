//! The OpenAPI 3.1 description of the REST API, served at `/api/v1/openapi.json`.
//!
//! Every operation is declared on its handler with `#[utoipa::path]`, and its bodies
//! are `ToSchema` types: utoipa-axum builds each family's router from the same
//! declarations, so no operation can be served undescribed, and a body's schema is the
//! type the handler parses or returns. `openapi_shared.json` holds only what no
//! handler owns: the document's prose (info, tags), the security schemes, the error
//! body, and a few schemas kept by hand and referred to by name (the protocol's, whose
//! crates stay free of utoipa, and some whose exact shape utoipa would describe more
//! loosely than the code accepts). [`document`] puts the two together, adds the error
//! answers every operation shares, and fills in the lists the code owns (the metric
//! items).

use std::sync::{Arc, LazyLock};

use axum::http::header;
use axum::response::IntoResponse;
use serde_json::{json, Map, Value};
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Schema, Type};
use utoipa::openapi::{Ref, RefOr};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::role::Node;

const SHARED: &str = include_str!("openapi_shared.json");

/// Statuses every operation may answer with the error body.
const ERRORS: [&str; 8] = ["400", "401", "403", "404", "409", "422", "500", "503"];

/// The document as served.
static SERVED: LazyLock<String> = LazyLock::new(|| match document() {
    Ok(doc) => doc.to_string(),
    // A unit test builds it; a build that got here serves the hand-kept part.
    Err(e) => {
        tracing::error!("the OpenAPI description: {e}");
        SHARED.to_string()
    }
});

pub(super) fn routes() -> OpenApiRouter<Arc<Node>> {
    OpenApiRouter::default().routes(routes!(spec))
}

/// An OpenAPI document.
struct Document;

impl utoipa::PartialSchema for Document {
    fn schema() -> RefOr<Schema> {
        Schema::Object(
            ObjectBuilder::new()
                .description(Some("This OpenAPI document."))
                .property("openapi", ObjectBuilder::new().schema_type(Type::String))
                .required("openapi")
                .property("info", ObjectBuilder::new().schema_type(Type::Object))
                .required("info")
                .property("paths", ObjectBuilder::new().schema_type(Type::Object))
                .required("paths")
                .build(),
        )
        .into()
    }
}

impl utoipa::ToSchema for Document {
    fn name() -> std::borrow::Cow<'static, str> {
        "OpenApiDocument".into()
    }
}

#[utoipa::path(get, path = "/openapi.json", tag = "cluster", operation_id = "getOpenApi",
    summary = "This OpenAPI document (no token needed).", security(()),
    responses((status = 200, description = "The OpenAPI 3.1 document.", body = Document)))]
async fn spec() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        SERVED.as_str(),
    )
}

/// The schema of a string that takes one of `values`: the names an enum of the code
/// answers with, taken from the code.
pub(super) fn string_enum<'a>(values: impl IntoIterator<Item = &'a str>) -> Schema {
    Schema::Object(
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(values))
            .build(),
    )
}

/// The schema named `name`: one kept by hand in openapi_shared.json (the protocol's
/// and a monitor's parts), referred to from a derived one.
pub(super) fn named(name: &str) -> RefOr<Schema> {
    RefOr::Ref(Ref::from_schema_name(name))
}

/// The error body (`{"error": {"code", "message"}}`), for an answer with a status
/// beyond those every operation shares.
pub(super) struct ErrorBody;

impl utoipa::PartialSchema for ErrorBody {
    fn schema() -> RefOr<Schema> {
        named("Error")
    }
}

impl utoipa::ToSchema for ErrorBody {}

/// The schema named `name`, or null.
pub(super) fn nullable(name: &str) -> OneOfBuilder {
    OneOfBuilder::new()
        .item(Ref::from_schema_name(name))
        .item(ObjectBuilder::new().schema_type(Type::Null))
}

/// An array of the schema named `name`.
pub(super) fn array_of(name: &str) -> ArrayBuilder {
    ArrayBuilder::new().items(Ref::from_schema_name(name))
}

/// The whole description: the handlers' operations and types, in the shared frame.
pub(super) fn document() -> Result<Value, String> {
    let mut doc: Value =
        serde_json::from_str(SHARED).map_err(|e| format!("openapi_shared.json: {e}"))?;
    let mut derived = serde_json::to_value(super::derived_openapi()).map_err(|e| e.to_string())?;
    integer_bounds(&mut derived);
    if doc.get("paths").is_some() {
        return Err("openapi_shared.json describes operations; their handlers do".into());
    }
    let mut paths = Map::new();
    for (path, item) in derived["paths"].as_object().into_iter().flatten() {
        let operations = item.as_object().into_iter().flatten();
        let item = operations
            .map(|(method, operation)| (method.clone(), with_errors(operation.clone())))
            .collect();
        paths.insert(path.clone(), Value::Object(item));
    }
    doc["paths"] = Value::Object(paths);
    let schemas = object(object_value(&mut doc, "components")?, "schemas")?;
    let derived_schemas = derived["components"]["schemas"].as_object();
    for (name, schema) in derived_schemas.into_iter().flatten() {
        if schemas.insert(name.clone(), schema.clone()).is_some() {
            return Err(format!(
                "schema {name} is derived from a type and kept in openapi_shared.json"
            ));
        }
    }
    let items: Vec<&str> = glory_monitor::items::NODE_ITEMS
        .iter()
        .chain(glory_monitor::procs::PROCESS_ITEMS.iter())
        .copied()
        .chain([glory_monitor::items::CHECK_ITEM])
        .collect();
    let item = schemas
        .get_mut("MetricItem")
        .ok_or("openapi_shared.json has no MetricItem")?;
    item["enum"] = json!(items);
    Ok(doc)
}

/// utoipa marks a `u32` field `"format": "u-int32"` (and a `usize` not at all), which
/// no client reads as a bound: each unsigned integer gets its type's maximum instead,
/// as serde holds the value to it.
fn integer_bounds(v: &mut Value) {
    match v {
        Value::Object(map) => {
            let integer = match map.get("type") {
                Some(Value::String(t)) => t == "integer",
                Some(Value::Array(types)) => types.iter().any(|t| t == "integer"),
                _ => false,
            };
            if integer && !map.contains_key("maximum") {
                let format = map.get("format").and_then(Value::as_str);
                let max = match format.map(|f| f.replace('-', "")).as_deref() {
                    Some("uint8") => Some(u64::from(u8::MAX)),
                    Some("uint16") => Some(u64::from(u16::MAX)),
                    Some("uint32") => Some(u64::from(u32::MAX)),
                    Some("uint64") => Some(u64::MAX),
                    // A usize.
                    None if map.get("minimum") == Some(&json!(0)) => Some(u64::MAX),
                    _ => None,
                };
                if let Some(max) = max {
                    map.insert("maximum".into(), json!(max));
                }
            }
            if integer
                && map
                    .get("format")
                    .and_then(Value::as_str)
                    .is_some_and(|f| f.starts_with("uint") || f.starts_with("u-int"))
            {
                map.remove("format");
            }
            map.values_mut().for_each(integer_bounds);
        }
        Value::Array(items) => items.iter_mut().for_each(integer_bounds),
        _ => {}
    }
}

/// A derived operation with the error answers every operation has.
fn with_errors(mut operation: Value) -> Value {
    // utoipa writes "no token needed" (`security(())`) as `[{}]`, one empty way of
    // authenticating; OpenAPI's word for none is `[]`.
    if operation.get("security") == Some(&json!([{}])) {
        operation["security"] = json!([]);
    }
    let responses = &mut operation["responses"];
    for status in ERRORS {
        if responses.get(status).is_none() {
            responses[status] = json!({"$ref": "#/components/responses/Error"});
        }
    }
    responses["405"] = json!({"description": "Method not allowed on this path (empty body)."});
    // utoipa 5.5 writes a link's fields in snake case (`operation_id`); OpenAPI spells
    // them in camel case.
    for response in responses
        .as_object_mut()
        .into_iter()
        .flat_map(|r| r.values_mut())
    {
        for link in response
            .get_mut("links")
            .and_then(Value::as_object_mut)
            .into_iter()
            .flat_map(|l| l.values_mut())
            .filter_map(Value::as_object_mut)
        {
            for (snake, camel) in [
                ("operation_id", "operationId"),
                ("operation_ref", "operationRef"),
                ("request_body", "requestBody"),
            ] {
                if let Some(v) = link.remove(snake) {
                    link.insert(camel.into(), v);
                }
            }
        }
    }
    operation
}

fn object<'a>(v: &'a mut Value, key: &str) -> Result<&'a mut Map<String, Value>, String> {
    object_value(v, key)?
        .as_object_mut()
        .ok_or_else(|| format!("{key} is not an object"))
}

fn object_value<'a>(v: &'a mut Value, key: &str) -> Result<&'a mut Value, String> {
    v.get_mut(key).ok_or_else(|| format!("no {key}"))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// Every `$ref` in `v`, and every operation a link names.
    fn references(v: &Value, refs: &mut BTreeSet<String>, links: &mut BTreeSet<String>) {
        match v {
            Value::Object(map) => {
                for (k, item) in map {
                    match (k.as_str(), item) {
                        ("$ref", Value::String(r)) => {
                            refs.insert(r.clone());
                        }
                        ("links", Value::Object(named)) => {
                            for link in named.values() {
                                if let Some(id) = link["operationId"].as_str() {
                                    links.insert(id.to_string());
                                }
                            }
                        }
                        _ => {}
                    }
                    references(item, refs, links);
                }
            }
            Value::Array(items) => items.iter().for_each(|i| references(i, refs, links)),
            _ => {}
        }
    }

    #[test]
    fn the_document_is_whole() {
        let doc = document().expect("the derived and hand-kept parts fit together");
        assert_eq!(doc["openapi"], "3.1.0");
        // Derived families are in it, with their error answers.
        let create = &doc["paths"]["/tenants"]["post"];
        assert_eq!(create["operationId"], "createTenant", "{create}");
        assert!(create["responses"]["409"]["$ref"].is_string());
        let mut ids = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                if method == "parameters" {
                    continue;
                }
                for param in op["parameters"].as_array().into_iter().flatten() {
                    if param["in"] == "path" {
                        assert_eq!(param["required"], true, "{method} {path}: {param}");
                    }
                }
                let id = op["operationId"].as_str();
                let id = id.unwrap_or_else(|| panic!("{method} {path} has no operationId"));
                assert!(ids.insert(id.to_string()), "operationId {id} twice");
            }
        }
        let (mut refs, mut links) = (BTreeSet::new(), BTreeSet::new());
        references(&doc, &mut refs, &mut links);
        // Every reference names something, and every component is referred to.
        for (kind, named) in doc["components"].as_object().unwrap() {
            if kind == "securitySchemes" {
                continue;
            }
            for name in named.as_object().unwrap().keys() {
                let r = format!("#/components/{kind}/{name}");
                assert!(refs.contains(&r), "nothing refers to {r}");
            }
        }
        for r in refs {
            let pointer = r.strip_prefix('#').unwrap_or_else(|| panic!("{r}"));
            assert!(doc.pointer(pointer).is_some(), "{r} names nothing");
        }
        for id in links {
            assert!(
                ids.contains(&id),
                "a link names operation {id}, which does not exist"
            );
        }
        // A header is a string or absent, never null; the document needs no token.
        let header = &doc["paths"]["/events"]["get"]["parameters"][0];
        assert_eq!(header["schema"], json!({"type": "string"}), "{header}");
        assert_eq!(doc["paths"]["/openapi.json"]["get"]["security"], json!([]));
        // A query parameter the handler cannot do without is required.
        let item = &doc["paths"]["/cluster/metrics"]["get"]["parameters"][0];
        assert_eq!(
            (&item["name"], &item["required"]),
            (&json!("item"), &json!(true))
        );
        // Unsigned integers carry their type's bound, not utoipa's `uint` formats.
        let quota = &doc["components"]["schemas"]["Quota"]["properties"];
        assert_eq!(quota["max_nodes"]["maximum"], json!(u64::MAX), "{quota}");
        assert!(quota["max_nodes"].get("format").is_none(), "{quota}");
        let selector = &doc["components"]["schemas"]["PoolSelector"]["properties"];
        assert_eq!(
            selector["min_cpus"]["maximum"],
            json!(u32::MAX),
            "{selector}"
        );
        let items = doc["components"]["schemas"]["MetricItem"]["enum"]
            .as_array()
            .unwrap();
        for item in ["cpu.percent", "proc.alive", "check.status"] {
            assert!(items.iter().any(|i| i == item), "{item}");
        }
        let served: Value = serde_json::from_str(&SERVED).unwrap();
        assert_eq!(served, doc);
    }
}
