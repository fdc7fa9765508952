//! Raw setting values, from the environment and the configuration file, and the one set of
//! parsers every section of [`super::Config`] uses (numbers, ranges, flags, lists, URLs).
//!
//! A value is text whichever source it came from: a file's integer `700` is `"700"`, `true` is
//! `"true"`, an array of strings is joined by the setting's separator ([`Setting::list`]). So a
//! variable and its key are parsed by the same code and mean the same thing. Empty (or
//! blank) values count as unset in both sources.

use std::collections::HashMap;
use std::fmt::Display;
use std::str::FromStr;

use toml::de::{DeTable, DeValue};

use super::ConfigError;
use super::keys::{self, SETTINGS, Setting};

#[derive(Debug, Clone)]
struct Raw {
    text: String,
    /// The line in the file (1-based); `None` for the environment.
    line: Option<usize>,
}

/// Raw values by environment variable name: a file's values with the environment's on top.
#[derive(Debug, Clone, Default)]
pub struct Values {
    map: HashMap<&'static str, Raw>,
    /// The file the lines of file values are in, as shown in errors.
    file: Option<String>,
    /// The file's `[[tools]]` (only in the file), and where the path came from.
    tools: Vec<super::tools::ToolEntry>,
    tools_var: &'static str,
}

/// A key in the configuration file that hark does not read (logged as a warning).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownKey {
    /// The dotted key, e.g. `call.stopms`.
    pub key: String,
    /// Its line in the file (1-based).
    pub line: usize,
    /// The nearest known key ([`keys::nearest_key`]).
    pub nearest: Option<&'static str>,
}

impl Values {
    /// The environment's values, read through `lookup` (a variable name → its value) for every
    /// variable in [`SETTINGS`], so tests need not touch the process environment.
    pub fn from_lookup(mut lookup: impl FnMut(&str) -> Option<String>) -> Values {
        let mut map = HashMap::new();
        for s in SETTINGS {
            if let Some(text) = lookup(s.var).filter(|v| !v.trim().is_empty()) {
                map.insert(s.var, Raw { text, line: None });
            }
        }
        Values {
            map,
            ..Values::default()
        }
    }

    /// The values of a TOML document `text` read from `path` (shown in errors), and the keys
    /// in it that hark does not read.
    ///
    /// # Errors
    /// [`ConfigError`] naming `var` (where the path came from: `--config`, `HARK_CONFIG`,
    /// `hark.toml`) with the path, line and column, for a document that is not TOML or a known
    /// key whose value has the wrong type (a table, a date, or an array for a single value).
    pub fn from_toml(
        var: &'static str,
        path: &str,
        text: &str,
    ) -> Result<(Values, Vec<UnknownKey>), ConfigError> {
        let doc = DeTable::parse(text).map_err(|e| {
            let at = e.span().map_or(String::new(), |s| position(text, s.start));
            ConfigError {
                var,
                reason: format!("{path}{at}: {}", e.message()),
            }
        })?;
        let mut walk = Walk {
            var,
            path,
            text,
            map: HashMap::new(),
            unknown: Vec::new(),
        };
        walk.table(doc.get_ref(), "")?;
        let values = Values {
            map: walk.map,
            file: Some(path.to_string()),
            tools: super::tools::parse(var, path, text)?,
            tools_var: var,
        };
        Ok((values, walk.unknown))
    }

    /// Puts `top`'s values over these (the environment over the file).
    pub fn overlay(&mut self, top: Values) {
        self.map.extend(top.map);
    }

    /// The file's `[[tools]]`, and the name errors about them carry (where the file's path
    /// came from: `--config`, `HARK_CONFIG`, `hark.toml`).
    pub fn tools(&self) -> (&[super::tools::ToolEntry], &'static str) {
        (&self.tools, self.tools_var)
    }

    /// The value of `var` as given (not trimmed); `None` when unset or blank.
    pub fn get(&self, var: &'static str) -> Option<String> {
        debug_assert!(keys::by_var(var).is_some(), "{var} is not in SETTINGS");
        self.map.get(var).map(|r| r.text.clone())
    }

    /// The value of `var`, trimmed.
    pub fn text(&self, var: &'static str) -> Option<String> {
        self.get(var).map(|v| v.trim().to_string())
    }

    /// `var` as a number of type `T` (`u64` ms, `f64` s, …).
    ///
    /// # Errors
    /// [`ConfigError`] naming `var` when the value is not one.
    pub fn num<T: FromStr>(&self, var: &'static str) -> Result<Option<T>, ConfigError> {
        self.get(var).map(|v| parse_num(var, &v)).transpose()
    }

    /// `var` as a number within `min..=max`.
    ///
    /// # Errors
    /// [`ConfigError`] naming `var` when the value is not a number or out of range.
    pub fn num_in<T: FromStr + PartialOrd + Display>(
        &self,
        var: &'static str,
        min: T,
        max: T,
    ) -> Result<Option<T>, ConfigError> {
        let Some(n) = self.num::<T>(var)? else {
            return Ok(None);
        };
        // `contains`, not `<`/`>`: NaN is out of every range.
        if !(&min..=&max).contains(&&n) {
            return Err(ConfigError::new(
                var,
                format!("{n} is out of range {min}..={max}"),
            ));
        }
        Ok(Some(n))
    }

    /// `var` as a switch: `1`, `true`, `yes`, `on` or `0`, `false`, `no`, `off` (any case).
    ///
    /// # Errors
    /// [`ConfigError`] naming `var` for anything else.
    pub fn flag(&self, var: &'static str) -> Result<Option<bool>, ConfigError> {
        let Some(v) = self.get(var) else {
            return Ok(None);
        };
        match v.trim().to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(Some(true)),
            "0" | "false" | "no" | "off" => Ok(Some(false)),
            _ => Err(ConfigError::new(var, format!("{v:?} is not true or false"))),
        }
    }

    /// `var` split at `sep`, each part trimmed, empty parts dropped.
    pub fn list(&self, var: &'static str, sep: char) -> Option<Vec<String>> {
        self.get(var).map(|v| {
            v.split(sep)
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(str::to_string)
                .collect()
        })
    }

    /// `var` as a base URL: `https://host[:port][/path]` (or `http://` for local servers and
    /// tests; the scheme in any case), no query string or fragment; returned trimmed, with the
    /// scheme in lower case and without a trailing `/`.
    ///
    /// # Errors
    /// [`ConfigError`] naming `var` for anything else.
    pub fn http_url(&self, var: &'static str) -> Result<Option<String>, ConfigError> {
        let Some(v) = self.get(var) else {
            return Ok(None);
        };
        let u = v.trim().trim_end_matches('/');
        let scheme = ["https://", "http://"]
            .into_iter()
            .find(|s| u.get(..s.len()).is_some_and(|p| p.eq_ignore_ascii_case(s)))
            .ok_or_else(|| {
                ConfigError::new(
                    var,
                    format!("{u:?} must start with https:// (or http:// for local tests)"),
                )
            })?;
        let rest = &u[scheme.len()..];
        if rest.is_empty() || rest.starts_with('/') || rest.contains('?') || rest.contains('#') {
            return Err(ConfigError::new(
                var,
                format!("{u:?} needs a host and no query string or fragment"),
            ));
        }
        // The scheme in lower case, so later `https://` → `wss://` rewrites find it.
        Ok(Some(format!("{scheme}{rest}")))
    }

    /// `e` with where its value came from when that is the file (`… (hark.toml line 12)`).
    pub fn locate(&self, mut e: ConfigError) -> ConfigError {
        if let (Some(file), Some(Raw { line: Some(l), .. })) = (&self.file, self.map.get(e.var)) {
            e.reason = format!("{} ({file} line {l})", e.reason);
        }
        e
    }
}

/// `v` as a number of type `T`.
///
/// # Errors
/// [`ConfigError`] naming `var` when it is not one.
pub fn parse_num<T: FromStr>(var: &'static str, v: &str) -> Result<T, ConfigError> {
    v.trim()
        .parse()
        .map_err(|_| ConfigError::new(var, format!("{v:?} is not a valid number")))
}

/// ` line L, column C` of byte offset `at` in `text`.
fn position(text: &str, at: usize) -> String {
    let before = &text[..at.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    format!(" line {line}, column {column}")
}

/// The walk over a parsed file, collecting known values and unknown keys.
struct Walk<'a> {
    var: &'static str,
    path: &'a str,
    text: &'a str,
    map: HashMap<&'static str, Raw>,
    unknown: Vec<UnknownKey>,
}

impl Walk<'_> {
    fn table(&mut self, table: &DeTable<'_>, prefix: &str) -> Result<(), ConfigError> {
        for (k, v) in table.iter() {
            let key = if prefix.is_empty() {
                k.get_ref().to_string()
            } else {
                format!("{prefix}.{}", k.get_ref())
            };
            let line = self.text[..k.span().start.min(self.text.len())]
                .matches('\n')
                .count()
                + 1;
            match (keys::by_key(&key), v.get_ref()) {
                (Some(setting), value) => {
                    let text = scalar(setting, value).ok_or_else(|| ConfigError {
                        var: self.var,
                        reason: format!(
                            "{} line {line}: {key} ({}) must be {}, not {}",
                            self.path,
                            setting.var,
                            if setting.list.is_some() {
                                "a string or an array of strings"
                            } else {
                                "a string, a number or a boolean"
                            },
                            value.type_str()
                        ),
                    })?;
                    if !text.trim().is_empty() {
                        self.map.insert(
                            setting.var,
                            Raw {
                                text,
                                line: Some(line),
                            },
                        );
                    }
                }
                // `[[tools]]`: read whole by `tools::parse`.
                (None, DeValue::Array(_)) if key == "tools" => {}
                (None, DeValue::Table(inner)) => self.table(inner, &key)?,
                (None, _) => self.unknown.push(UnknownKey {
                    nearest: keys::nearest_key(&key),
                    key,
                    line,
                }),
            }
        }
        Ok(())
    }
}

/// A file value as the text its variable would hold; `None` for a type the setting cannot
/// have.
fn scalar(setting: &Setting, value: &DeValue<'_>) -> Option<String> {
    match value {
        DeValue::String(s) => Some(s.to_string()),
        DeValue::Integer(i) if i.radix() == 10 => Some(i.as_str().to_string()),
        DeValue::Integer(i) => i128::from_str_radix(i.as_str(), i.radix())
            .ok()
            .map(|n| n.to_string()),
        DeValue::Float(f) => Some(f.as_str().to_string()),
        DeValue::Boolean(b) => Some(b.to_string()),
        DeValue::Array(items) => {
            let sep = setting.list?;
            let parts: Option<Vec<String>> = items
                .iter()
                .map(|item| item.get_ref().as_str().map(str::to_string))
                .collect();
            Some(parts?.join(&sep.to_string()))
        }
        DeValue::Datetime(_) | DeValue::Table(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> Result<(Values, Vec<UnknownKey>), ConfigError> {
        Values::from_toml("--config", "test.toml", text)
    }

    #[test]
    fn file_values_become_the_variables_text() {
        let (v, unknown) = file(
            "[call]\nstop_ms = 700\nnoise_margin_db = 7.5\n\n[server]\nafter_connect = [\"say:Bye\", \"hangup\"]\nstream_params = \"a, b\"\nworkers = 0x10\n[agent.cascade.stt]\nstream = false\nprompt = \"\"\n",
        )
        .unwrap();
        assert!(unknown.is_empty(), "{unknown:?}");
        assert_eq!(v.num::<u64>("HARK_STOP_MS").unwrap(), Some(700));
        assert_eq!(v.num::<f32>("HARK_NOISE_MARGIN_DB").unwrap(), Some(7.5));
        assert_eq!(
            v.get("HARK_AFTER_CONNECT").as_deref(),
            Some("say:Bye|hangup")
        );
        assert_eq!(
            v.list("HARK_STREAM_PARAMS", ','),
            Some(vec!["a".to_string(), "b".to_string()])
        );
        assert_eq!(v.num::<usize>("HARK_WORKERS").unwrap(), Some(16));
        assert_eq!(v.flag("HARK_STT_STREAM").unwrap(), Some(false));
        assert_eq!(v.get("HARK_STT_PROMPT"), None, "empty counts as unset");
    }

    #[test]
    fn the_environment_wins_and_errors_say_where_a_file_value_is() {
        let (mut v, _) = file("[call]\nstop_ms = \"soon\"\nlead_ms = 250\n").unwrap();
        let e = v.locate(v.num::<u64>("HARK_STOP_MS").unwrap_err());
        assert_eq!(e.var, "HARK_STOP_MS");
        assert!(e.reason.ends_with("(test.toml line 2)"), "{e}");
        assert!(
            e.to_string().starts_with("HARK_STOP_MS (call.stop_ms): "),
            "{e}"
        );
        v.overlay(Values::from_lookup(|k| match k {
            "HARK_STOP_MS" => Some("650".into()),
            "HARK_LEAD_MS" => Some("  ".into()),
            _ => None,
        }));
        assert_eq!(v.num::<u64>("HARK_STOP_MS").unwrap(), Some(650));
        assert_eq!(
            v.num::<u64>("HARK_LEAD_MS").unwrap(),
            Some(250),
            "blank is unset"
        );
        let e = v.locate(ConfigError::new("HARK_STOP_MS", "bad"));
        assert_eq!(e.reason, "bad", "an environment value has no file line");
    }

    #[test]
    fn unknown_keys_are_collected_with_a_suggestion() {
        let (_, unknown) = file("[call]\nstopms = 700\n\n[agnet]\nkind = \"echo\"\n").unwrap();
        assert_eq!(
            unknown,
            vec![
                UnknownKey {
                    key: "agnet.kind".into(),
                    line: 5,
                    nearest: Some("agent.kind")
                },
                UnknownKey {
                    key: "call.stopms".into(),
                    line: 2,
                    nearest: Some("call.stop_ms")
                },
            ]
        );
    }

    #[test]
    fn malformed_files_and_wrong_types_name_file_key_and_line() {
        let e = file("[call]\nstop_ms = = 3\n").unwrap_err();
        assert_eq!(e.var, "--config");
        assert!(e.reason.starts_with("test.toml line 2, column "), "{e}");
        let e = file("[call]\n\nstop_ms = [700]\n").unwrap_err();
        assert!(
            e.reason
                .starts_with("test.toml line 3: call.stop_ms (HARK_STOP_MS) must be a string"),
            "{e}"
        );
        let e = file("call = 3\n[call]\n").unwrap_err();
        assert!(e.reason.contains("line"), "{e}");
        let e = file("[server.addr]\nport = 1\n").unwrap_err();
        assert!(e.reason.contains("server.addr"), "{e}");
        assert!(
            file("[api]\nkeys = [1, 2]\n").is_err(),
            "array items are strings"
        );
    }

    #[test]
    fn one_set_of_parsers() {
        let v = Values::from_lookup(|k| match k {
            "HARK_TOKEN_TTL_S" => Some("86401".into()),
            "HARK_CALL_QUEUE" => Some(" 20 ".into()),
            "HARK_STT_STREAM" => Some("maybe".into()),
            "HARK_PUBLIC_URL" => Some("HTTPS://h.example/x/".into()),
            "HARK_TWILIO_API_BASE" => Some("https://h/x?y=1".into()),
            "HARK_LLM_BASE_URL" => Some("localhost:8000".into()),
            _ => None,
        });
        assert_eq!(
            v.num_in::<u64>("HARK_TOKEN_TTL_S", 1, 86_400)
                .unwrap_err()
                .var,
            "HARK_TOKEN_TTL_S"
        );
        assert_eq!(
            v.num_in::<usize>("HARK_CALL_QUEUE", 1, 30).unwrap(),
            Some(20)
        );
        let nan = Values::from_lookup(|k| (k == "HARK_LLM_TEMPERATURE").then(|| "NaN".into()));
        assert!(nan.num_in::<f32>("HARK_LLM_TEMPERATURE", 0.0, 2.0).is_err());
        assert_eq!(
            v.flag("HARK_STT_STREAM").unwrap_err().var,
            "HARK_STT_STREAM"
        );
        assert_eq!(
            v.http_url("HARK_PUBLIC_URL").unwrap().as_deref(),
            Some("https://h.example/x")
        );
        assert!(v.http_url("HARK_TWILIO_API_BASE").is_err());
        assert!(v.http_url("HARK_LLM_BASE_URL").is_err());
        assert_eq!(v.http_url("OPENAI_BASE_URL").unwrap(), None);
    }
}
