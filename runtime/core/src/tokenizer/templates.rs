//! Where a checkpoint's chat templates come from and which one a request renders with,
//! as transformers decides: `chat_template.jinja` and `additional_chat_templates/*.jinja`
//! (named by file) replace whatever tokenizer_config.json says; there, `chat_template`
//! is one template or a list of `{name, template}`. With several, a request that sends
//! `tools` uses `tool_use` when there is one, else `default`.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use super::TokenizerError;

/// The name transformers gives a single template, and the one it falls back to.
const DEFAULT: &str = "default";
const TOOL_USE: &str = "tool_use";
const EXTRA_DIR: &str = "additional_chat_templates";

#[derive(Debug, Clone, PartialEq)]
pub struct ChatTemplates {
    by_name: BTreeMap<String, String>,
    /// Where they were read from, for `inspect` and the load log.
    pub source: String,
}

fn read(path: &Path) -> Result<String, TokenizerError> {
    std::fs::read_to_string(path).map_err(|e| TokenizerError::File {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

impl ChatTemplates {
    /// The templates of the checkpoint in `dir`; `None` when it has none.
    /// `config` is its parsed tokenizer_config.json (`Null` when absent).
    pub fn load(dir: &Path, config: &Value) -> Result<Option<Self>, TokenizerError> {
        let mut by_name = BTreeMap::new();
        let mut files = Vec::new();
        let jinja = dir.join("chat_template.jinja");
        if jinja.exists() {
            by_name.insert(DEFAULT.to_string(), read(&jinja)?);
            files.push("chat_template.jinja".to_string());
        }
        let extra = dir.join(EXTRA_DIR);
        if extra.is_dir() {
            let entries = std::fs::read_dir(&extra).map_err(|e| TokenizerError::File {
                path: extra.clone(),
                message: e.to_string(),
            })?;
            let mut paths: Vec<_> = entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "jinja"))
                .collect();
            paths.sort();
            for path in paths {
                let Some(name) = path.file_stem().and_then(|s| s.to_str()) else {
                    continue;
                };
                by_name.insert(name.to_string(), read(&path)?);
                files.push(format!("{EXTRA_DIR}/{name}.jinja"));
            }
        }
        if !by_name.is_empty() {
            return Ok(Some(Self {
                by_name,
                source: files.join(", "),
            }));
        }
        let source = "tokenizer_config.json".to_string();
        match config.get("chat_template") {
            Some(Value::String(t)) => {
                by_name.insert(DEFAULT.to_string(), t.clone());
                Ok(Some(Self { by_name, source }))
            }
            Some(Value::Array(named)) => {
                for entry in named {
                    let name = entry.get("name").and_then(Value::as_str);
                    let template = entry.get("template").and_then(Value::as_str);
                    match (name, template) {
                        (Some(n), Some(t)) => {
                            by_name.insert(n.to_string(), t.to_string());
                        }
                        _ => {
                            return Err(TokenizerError::File {
                                path: dir.join("tokenizer_config.json"),
                                message: "chat_template: every entry of the list needs a \"name\" and a \"template\" string".into(),
                            })
                        }
                    }
                }
                Ok((!by_name.is_empty()).then_some(Self { by_name, source }))
            }
            _ => Ok(None),
        }
    }

    /// The template names, sorted (a single template is `default`).
    pub fn names(&self) -> Vec<&str> {
        self.by_name.keys().map(String::as_str).collect()
    }

    /// The template a request renders with: `tool_use` when it sends tools and the
    /// checkpoint has one, else `default`.
    pub fn select(&self, with_tools: bool) -> Result<&str, TokenizerError> {
        if with_tools {
            if let Some(t) = self.by_name.get(TOOL_USE) {
                return Ok(t);
            }
        }
        self.by_name
            .get(DEFAULT)
            .map(String::as_str)
            .ok_or_else(|| {
                TokenizerError::Template(format!(
                "this model has several chat templates and none is named \"default\" (names: {})",
                self.names().join(", ")
            ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn dir() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    #[test]
    fn a_string_is_the_default_and_a_list_is_read_by_name() {
        let d = dir();
        let one = ChatTemplates::load(d.path(), &json!({"chat_template": "A"}))
            .unwrap()
            .unwrap();
        assert_eq!(
            (one.names(), one.select(true).unwrap()),
            (vec!["default"], "A")
        );
        let named = json!({"chat_template": [
            {"name": "default", "template": "D"},
            {"name": "tool_use", "template": "T"},
        ]});
        let two = ChatTemplates::load(d.path(), &named).unwrap().unwrap();
        assert_eq!(two.select(false).unwrap(), "D");
        assert_eq!(two.select(true).unwrap(), "T", "tools pick tool_use");
        assert!(ChatTemplates::load(d.path(), &json!({})).unwrap().is_none());
    }

    #[test]
    fn files_replace_the_config_and_extra_templates_are_named_by_file() {
        let d = dir();
        std::fs::write(d.path().join("chat_template.jinja"), "FILE").unwrap();
        std::fs::create_dir(d.path().join(EXTRA_DIR)).unwrap();
        std::fs::write(d.path().join(EXTRA_DIR).join("tool_use.jinja"), "TOOLS").unwrap();
        let t = ChatTemplates::load(d.path(), &json!({"chat_template": "CONFIG"}))
            .unwrap()
            .unwrap();
        assert_eq!(t.names(), vec!["default", "tool_use"]);
        assert_eq!(t.select(false).unwrap(), "FILE");
        assert_eq!(t.select(true).unwrap(), "TOOLS");
        assert_eq!(
            t.source,
            "chat_template.jinja, additional_chat_templates/tool_use.jinja"
        );
    }

    #[test]
    fn no_default_is_an_error_naming_the_templates_and_a_bad_list_names_the_file() {
        let d = dir();
        let only_tools = json!({"chat_template": [{"name": "tool_use", "template": "T"}]});
        let t = ChatTemplates::load(d.path(), &only_tools).unwrap().unwrap();
        assert_eq!(t.select(true).unwrap(), "T");
        let e = t.select(false).unwrap_err().to_string();
        assert!(
            e.contains("none is named \"default\" (names: tool_use)"),
            "{e}"
        );
        let bad = json!({"chat_template": [{"name": "default"}]});
        let e = ChatTemplates::load(d.path(), &bad).unwrap_err().to_string();
        assert!(
            e.contains("tokenizer_config.json") && e.contains("\"template\""),
            "{e}"
        );
    }
}
