//! `[[tools]]` in `hark.toml`: the operator's own tools, each POSTed to its backend
//! ([`hark_engine::agents::http_tools`]). They are only in the file (a JSON Schema does not fit
//! an environment variable); `HARK_TOOLS` chooses which tools are offered.
//!
//! ```toml
//! [[tools]]
//! name = "lookup_balance"
//! description = "The payer's open balance and due date."
//! url = "https://ops.example.com/hark/tools/balance"
//! timeout_ms = 3000                 # default 5000, 50–60000
//! filler = "Let me check that."     # said if it takes over 1 s (optional)
//! end_call_after = false            # the call ends after the next answer (optional)
//! parameters = { type = "object", required = ["payerId"], properties = { payerId = { type = "string" } } }
//! ```

use hark_engine::agents::http_tools::{HttpTool, ToolSchema};
use serde::Deserialize;

use super::ConfigError;

/// Default `timeout_ms` of a tool.
pub const DEFAULT_TIMEOUT_MS: u64 = 5_000;

/// One `[[tools]]` entry as written.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolEntry {
    /// The function name the model calls.
    pub name: String,
    /// What it does, for the model.
    pub description: String,
    /// Where it is POSTed.
    pub url: String,
    /// The arguments' JSON Schema (a TOML table, read as JSON).
    pub parameters: serde_json::Value,
    /// ms; [`DEFAULT_TIMEOUT_MS`] when absent.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Said if the tool takes longer than 1 s.
    #[serde(default)]
    pub filler: Option<String>,
    /// The call ends after the answer that follows a successful call.
    #[serde(default)]
    pub end_call_after: bool,
}

#[derive(Deserialize)]
struct Doc {
    #[serde(default)]
    tools: Vec<ToolEntry>,
}

/// The `[[tools]]` of a TOML document `text` (from `path`, named by `var` in errors).
///
/// # Errors
/// [`ConfigError`] naming `var` with the path and what is wrong (a missing or unknown field, a
/// wrong type).
pub fn parse(var: &'static str, path: &str, text: &str) -> Result<Vec<ToolEntry>, ConfigError> {
    let doc: Doc = toml::from_str(text)
        .map_err(|e| ConfigError::new(var, format!("{path}: [[tools]]: {}", e.message())))?;
    Ok(doc.tools)
}

impl ToolEntry {
    /// The engine's tool, its schema compiled.
    ///
    /// # Errors
    /// [`ConfigError`] naming `var` for an invalid schema, name, URL or timeout.
    pub fn to_tool(&self, var: &'static str) -> Result<HttpTool, ConfigError> {
        let bad = |why: String| ConfigError::new(var, format!("[[tools]] {:?}: {why}", self.name));
        let tool = HttpTool {
            name: self.name.trim().to_string(),
            description: self.description.trim().to_string(),
            parameters: ToolSchema::new(self.parameters.clone())
                .map_err(|e| bad(format!("parameters: {e}")))?,
            url: self.url.trim().to_string(),
            timeout_ms: self.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS),
            filler: self.filler.clone().filter(|f| !f.trim().is_empty()),
            end_call_after: self.end_call_after,
        };
        tool.validate().map_err(bad)?;
        Ok(tool)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = r#"
[call]
stop_ms = 700

[[tools]]
name = "lookup_balance"
description = "The payer's open balance."
url = "http://127.0.0.1:9/balance"
parameters = { type = "object", required = ["payerId"], properties = { payerId = { type = "string" } } }

[[tools]]
name = "record_promise"
description = "Records a promise to pay."
url = "http://127.0.0.1:9/promise"
timeout_ms = 2000
filler = "One moment."
end_call_after = true
[tools.parameters]
type = "object"
properties = { amount = { type = "number" }, date = { type = "string" } }
"#;

    #[test]
    fn entries_become_tools() {
        let t = parse("hark.toml", "hark.toml", DOC).unwrap();
        assert_eq!(t.len(), 2);
        let a = t[0].to_tool("hark.toml").unwrap();
        assert_eq!(
            (a.name.as_str(), a.timeout_ms),
            ("lookup_balance", DEFAULT_TIMEOUT_MS)
        );
        assert!(a.parameters.check(&serde_json::json!({})).is_err());
        let b = t[1].to_tool("hark.toml").unwrap();
        assert_eq!((b.timeout_ms, b.end_call_after), (2_000, true));
        assert_eq!(b.filler.as_deref(), Some("One moment."));
        assert!(
            b.parameters
                .check(&serde_json::json!({"amount": 20}))
                .is_ok()
        );
        assert!(parse("hark.toml", "hark.toml", "x = 1").unwrap().is_empty());
    }

    #[test]
    fn mistakes_are_named() {
        let e = parse(
            "hark.toml",
            "h.toml",
            "[[tools]]\nname = \"x\"\ntimout_ms = 1\n",
        )
        .unwrap_err();
        assert!(e.reason.contains("timout_ms"), "{e}");
        let bad_schema = DOC.replace(r#"type = "number""#, "type = 12");
        let t = parse("hark.toml", "h.toml", &bad_schema).unwrap();
        let e = t[1].to_tool("hark.toml").unwrap_err();
        assert!(
            e.reason.contains("record_promise") && e.reason.contains("parameters"),
            "{e}"
        );
        let mut t0 = t[0].clone();
        t0.url = "ftp://x".into();
        assert!(t0.to_tool("hark.toml").unwrap_err().reason.contains("url"));
    }
}
