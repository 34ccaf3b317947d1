//! Reading the served OpenAPI document: its operations, and whether one
//! answer (status, content type, headers, body) is one it documents.

use std::collections::BTreeSet;

use http::HeaderMap;
use serde_json::Value;

/// One HTTP answer, whatever client got it.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// The problem `type` suffix, if the body is a problem document.
    pub fn problem_type(&self) -> Option<String> {
        let t = self.json()["type"].as_str()?.to_string();
        t.strip_prefix("urn:sluice:problem:").map(str::to_string)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub struct Spec {
    pub doc: Value,
}

/// The media type without parameters, lowercase.
fn essence(content_type: &str) -> String {
    let main = content_type.split(';').next().unwrap_or("");
    main.trim().to_ascii_lowercase()
}

impl Spec {
    pub fn new(doc: Value) -> Spec {
        Spec { doc }
    }

    /// `#/…` references followed to what they name.
    pub fn resolve<'a>(&'a self, mut v: &'a Value) -> &'a Value {
        while let Some(r) = v.get("$ref").and_then(Value::as_str) {
            let target = r.strip_prefix('#').and_then(|p| self.doc.pointer(p));
            v = target.unwrap_or_else(|| panic!("dangling $ref {r}"));
        }
        v
    }

    /// Every (METHOD, path template) the document describes.
    pub fn operations(&self) -> BTreeSet<(String, String)> {
        let paths = self.doc["paths"].as_object().expect("paths");
        let methods = ["get", "post", "put", "patch", "delete", "head", "options"];
        paths
            .iter()
            .flat_map(|(path, item)| {
                methods
                    .iter()
                    .filter(|m| item.get(**m).is_some())
                    .map(|m| (m.to_ascii_uppercase(), path.clone()))
            })
            .collect()
    }

    /// The documented template a concrete path falls under.
    pub fn template_of(&self, path: &str) -> Option<String> {
        let path = path.split('?').next().unwrap_or("");
        let have: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let paths = self.doc["paths"].as_object()?;
        paths.keys().find_map(|t| {
            let want: Vec<&str> = t.trim_start_matches('/').split('/').collect();
            let fits = want.len() == have.len()
                && want
                    .iter()
                    .zip(&have)
                    .all(|(w, h)| (w.starts_with('{') && w.ends_with('}')) || w == h);
            fits.then(|| t.clone())
        })
    }

    /// Is `answer` one the document allows for `method path`? `Err` says why not.
    pub fn check(&self, method: &str, path: &str, answer: &Answer) -> Result<(), String> {
        let template = self
            .template_of(path)
            .ok_or_else(|| format!("{path}: no documented path"))?;
        let op = &self.doc["paths"][&template][method.to_ascii_lowercase()];
        if op.is_null() {
            return Err(format!("{method} {template}: not documented"));
        }
        let status = answer.status.to_string();
        let response = op["responses"]
            .get(&status)
            .map(|r| self.resolve(r))
            .ok_or_else(|| format!("{method} {template}: status {status} not documented"))?;
        self.check_headers(response, answer)
            .map_err(|e| format!("{method} {template} {status}: {e}"))?;
        self.check_content(response, answer)
            .map_err(|e| format!("{method} {template} {status}: {e}"))
    }

    fn check_headers(&self, response: &Value, answer: &Answer) -> Result<(), String> {
        let Some(headers) = response["headers"].as_object() else {
            return Ok(());
        };
        for (name, h) in headers {
            let h = self.resolve(h);
            match answer.header(name) {
                None if h["required"] == Value::Bool(true) => {
                    return Err(format!("required header {name} is missing"))
                }
                None => {}
                Some(value) => {
                    let value = Value::String(value.to_string());
                    self.validate(&h["schema"], &value)
                        .map_err(|e| format!("header {name}: {e}"))?;
                }
            }
        }
        Ok(())
    }

    fn check_content(&self, response: &Value, answer: &Answer) -> Result<(), String> {
        let Some(content) = response["content"].as_object() else {
            return match answer.body.is_empty() {
                true => Ok(()),
                false => Err("a body where none is documented".into()),
            };
        };
        let got = answer
            .header("content-type")
            .map(essence)
            .ok_or("no Content-Type")?;
        let media = content
            .iter()
            .find(|(k, _)| essence(k) == got)
            .map(|(_, v)| v)
            .ok_or_else(|| format!("Content-Type {got} is not among {:?}", content.keys()))?;
        if got.ends_with("json") {
            let body: Value = serde_json::from_slice(&answer.body)
                .map_err(|e| format!("body is not JSON: {e}"))?;
            self.validate(&media["schema"], &body)
                .map_err(|e| format!("body {body}: {e}"))?;
        }
        Ok(())
    }

    /// Validate `instance` against a schema of this document (its `$ref`s
    /// resolve against the document's components).
    pub fn validate(&self, schema: &Value, instance: &Value) -> Result<(), String> {
        if schema.is_null() {
            return Ok(());
        }
        let root = serde_json::json!({
            "allOf": [schema],
            "components": self.doc["components"],
        });
        let validator = jsonschema::draft202012::new(&root).map_err(|e| e.to_string())?;
        let errors: Vec<String> = validator
            .iter_errors(instance)
            .map(|e| format!("{e} at {}", e.instance_path()))
            .collect();
        match errors.is_empty() {
            true => Ok(()),
            false => Err(errors.join("; ")),
        }
    }
}
