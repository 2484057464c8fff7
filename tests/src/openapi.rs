//! `docs/openapi.yaml` as a validator: every reply of the API is checked
//! against the schema the document gives for its path, method, status and
//! content type (JSON Schema 2020-12, as OpenAPI 3.1 uses, by the
//! `jsonschema` crate; `$ref`s resolve inside the document).

use serde_json::{json, Value};

use crate::testguest::workspace_root;

/// The loaded document.
#[derive(Debug, Clone)]
pub struct OpenApi {
    doc: Value,
}

fn lookup<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix('#')) {
        Some(pointer) => doc.pointer(pointer).unwrap_or(&Value::Null),
        None => v,
    }
}

/// The template of a request path in the document (`/patches/{id}` for `/patches/x`).
pub fn template(path: &str) -> String {
    let path = path.split('?').next().unwrap_or(path);
    match path.trim_end_matches('/').split('/').collect::<Vec<_>>().as_slice() {
        ["", "patches", "recover"] => "/patches/recover".into(),
        ["", "patches", _] => "/patches/{id}".into(),
        _ => path.to_owned(),
    }
}

impl OpenApi {
    /// Loads `docs/openapi.yaml`.
    pub fn load() -> Self {
        let path = workspace_root().join("docs/openapi.yaml");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let doc: Value = yaml_serde::from_str(&text).unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()));
        assert_eq!(doc["openapi"].as_str().map(|v| v.starts_with("3.")), Some(true), "not OpenAPI 3");
        Self { doc }
    }

    /// True when the document has an operation for `method path`.
    pub fn documents(&self, method: &str, path: &str) -> bool {
        !self.doc["paths"][template(path)][method.to_ascii_lowercase()].is_null()
    }

    /// Validates `instance` against a schema of the document (inline or `$ref`).
    pub fn validate_schema(&self, schema: &Value, instance: &Value) -> Result<(), String> {
        let root = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "components": self.doc["components"],
            "allOf": [schema],
        });
        let v = jsonschema::validator_for(&root).map_err(|e| format!("the schema does not compile: {e}"))?;
        let errors: Vec<String> = v.iter_errors(instance).map(|e| format!("{} at {}", e, e.instance_path())).collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    /// Validates against `#/components/schemas/NAME`.
    pub fn validate_component(&self, name: &str, instance: &Value) -> Result<(), String> {
        self.validate_schema(&json!({ "$ref": format!("#/components/schemas/{name}") }), instance)
    }

    /// Validates an NDJSON body line by line against `schema` (empty lines,
    /// keep-alives, skipped).
    pub fn validate_lines(&self, schema: &Value, body: &[u8]) -> Result<(), String> {
        let text = std::str::from_utf8(body).map_err(|e| format!("NDJSON body is not UTF-8: {e}"))?;
        for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let instance: Value = serde_json::from_str(line).map_err(|e| format!("line {}: not JSON: {e}: {line}", n + 1))?;
            self.validate_schema(schema, &instance).map_err(|e| format!("line {}: {e}\nline: {line}", n + 1))?;
        }
        Ok(())
    }

    /// The schema of the body of `method path`'s `status` reply of type `content_type`.
    pub fn reply_schema(&self, method: &str, path: &str, status: u16, content_type: &str) -> Value {
        let op = &self.doc["paths"][template(path)][method.to_ascii_lowercase()];
        lookup(&self.doc, &op["responses"][status.to_string()])["content"][content_type]["schema"].clone()
    }

    /// Checks a reply of the API: a documented route's reply by its
    /// operation, any other reply (unknown route, wrong method) as an `Error`.
    pub fn conforms(&self, method: &str, path: &str, r: &vsplice_vmm::api::client::ClientResponse) -> Result<(), String> {
        if self.documents(method, path) {
            self.validate_reply(method, path, r.status, &r.content_type, &r.body)
        } else {
            self.validate_component("Error", &r.json())
        }
    }

    /// Validates one reply: the document must list `status` for `method
    /// path`, with this content type, and the body must match its schema.
    pub fn validate_reply(&self, method: &str, path: &str, status: u16, content_type: &str, body: &[u8]) -> Result<(), String> {
        let tpl = template(path);
        let op = &self.doc["paths"][&tpl][method.to_ascii_lowercase()];
        if op.is_null() {
            return Err(format!("{method} {tpl} is not in the document"));
        }
        let resp = lookup(&self.doc, &op["responses"][status.to_string()]);
        if resp.is_null() {
            return Err(format!("{method} {tpl}: status {status} is not in the document"));
        }
        let ct = content_type.split(';').next().unwrap_or("").trim();
        let media = &resp["content"][ct];
        if media.is_null() {
            return Err(format!("{method} {tpl} {status}: content type `{ct}` is not in the document"));
        }
        if ct == "application/x-ndjson" {
            return self.validate_lines(&media["schema"], body).map_err(|e| format!("{method} {tpl} {status}: {e}"));
        }
        if ct != "application/json" {
            return if media["schema"]["type"] == "string" && std::str::from_utf8(body).is_ok() { Ok(()) } else { Err(format!("{ct} body is not text")) };
        }
        let instance: Value = serde_json::from_slice(body).map_err(|e| format!("{method} {tpl} {status}: body is not JSON: {e}"))?;
        self.validate_schema(&media["schema"], &instance).map_err(|e| format!("{method} {tpl} {status}: {e}\nbody: {instance}"))
    }
}
