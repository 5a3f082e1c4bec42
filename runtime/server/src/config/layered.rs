//! Merging the layers: flags and env over runtime.toml over [`defaults`], field by field,
//! each merged value with its [`Origin`]; `--print-config` renders the result.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::ArgMatches;

use super::{defaults, ConfigLayer, FaultPlan};

/// Where a merged value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Default,
    /// runtime.toml at this path.
    File(PathBuf),
    /// A command-line flag (`--port`).
    Flag(String),
    /// An environment variable (`DFASTLLM_PORT`).
    Env(String),
}

/// A value's name as its source spells it, for error messages.
fn source_name(key: &str, origin: &Origin) -> String {
    match origin {
        Origin::Default => format!("{key} (default)"),
        Origin::File(path) => format!("{}: {key}", path.display()),
        Origin::Flag(flag) => flag.clone(),
        Origin::Env(var) => var.clone(),
    }
}

/// Each flag-layer key's flag and env variable, read from the clap definition.
fn flag_table() -> BTreeMap<String, (String, Option<String>)> {
    use clap::Args as _;
    let cmd = ConfigLayer::augment_args(clap::Command::new("serve"));
    cmd.get_arguments()
        .map(|a| {
            let flag = a
                .get_long()
                .map_or_else(|| a.get_id().to_string(), |l| format!("--{l}"));
            let env = a.get_env().map(|e| e.to_string_lossy().to_string());
            (a.get_id().to_string(), (flag, env))
        })
        .collect()
}

/// Whether each flag-layer value came from the command line or the environment.
/// Without matches (a layer built in code) every value counts as its flag.
#[derive(Debug, Clone, Default)]
pub struct FlagOrigins {
    from_env: Vec<String>,
}

impl FlagOrigins {
    pub fn from_matches(matches: &ArgMatches) -> Self {
        let from_env = flag_table()
            .into_keys()
            .filter(|id| {
                matches!(
                    matches.try_get_raw(id).map(|_| matches.value_source(id)),
                    Ok(Some(ValueSource::EnvVariable))
                )
            })
            .collect();
        Self { from_env }
    }
}

/// Appends each flag's default, from [`defaults`], to its help (`--help` and the table
/// cannot disagree).
pub fn annotate_defaults(cmd: clap::Command) -> clap::Command {
    let table = flatten(&defaults());
    cmd.mut_args(|a| match table.get(a.get_id().as_str()) {
        Some(value) => {
            let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
            let shown = value
                .as_str()
                .map_or_else(|| value.to_string(), str::to_string);
            a.help(format!("{help} [default: {shown}]"))
        }
        None => a,
    })
}

/// The leaves of a layer as `dotted.key -> value`.
fn flatten(layer: &ConfigLayer) -> BTreeMap<String, toml::Value> {
    fn walk(prefix: &str, table: &toml::Table, out: &mut BTreeMap<String, toml::Value>) {
        for (k, v) in table {
            let key = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            match v {
                toml::Value::Table(t) => walk(&key, t, out),
                other => {
                    out.insert(key, other.clone());
                }
            }
        }
    }
    let mut out = BTreeMap::new();
    // A layer holds only plain values, which always serialise.
    if let Ok(table) = toml::Table::try_from(layer) {
        walk("", &table, &mut out);
    }
    out
}

/// The flag/env, file and default layers merged field by field, each value with its
/// origin.
#[derive(Debug, Clone)]
pub struct Layered {
    pub merged: ConfigLayer,
    pub origins: BTreeMap<String, Origin>,
    /// Flags and env only (never in the file, never printed).
    pub(super) api_keys: Vec<String>,
    pub(super) metrics_api_key: Option<String>,
    /// Test only, flags and env only.
    pub(super) inject_faults: Option<FaultPlan>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    /// `source` is the value's name as its origin spells it (`--device`,
    /// `DFASTLLM_PORT`, `runtime.toml: model.device`).
    #[error("{source_name}: {message}")]
    Invalid {
        source_name: String,
        message: String,
    },
}

impl ConfigLayer {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Self::parse(&text).map_err(|message| ConfigError::File {
            path: path.to_path_buf(),
            message,
        })
    }

    /// runtime.toml. Unknown keys are errors, so a typo never silently falls back to a
    /// default.
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim().replace('\n', " "))
    }
}

/// Merges `flags` (with their origins) over `file` (read from `file_path`) over
/// [`defaults`].
pub fn merge(
    flags: &ConfigLayer,
    flag_origins: &FlagOrigins,
    file: Option<(&ConfigLayer, &Path)>,
) -> Layered {
    let table = flag_table();
    let mut values = flatten(&defaults());
    let mut origins: BTreeMap<String, Origin> = values
        .keys()
        .map(|k| (k.clone(), Origin::Default))
        .collect();
    if let Some((file, path)) = file {
        for (k, v) in flatten(file) {
            origins.insert(k.clone(), Origin::File(path.to_path_buf()));
            values.insert(k, v);
        }
    }
    for (k, v) in flatten(flags) {
        let (flag, env) = table.get(&k).cloned().unwrap_or_else(|| (k.clone(), None));
        let origin = match env {
            Some(var) if flag_origins.from_env.contains(&k) => Origin::Env(var),
            _ => Origin::Flag(flag),
        };
        origins.insert(k.clone(), origin);
        values.insert(k, v);
    }
    let mut root = toml::Table::new();
    for (k, v) in values {
        let mut node = &mut root;
        let mut parts: Vec<&str> = k.split('.').collect();
        let leaf = parts.pop().unwrap_or_default().to_string();
        for p in parts {
            node = match node
                .entry(p.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            {
                toml::Value::Table(t) => t,
                _ => unreachable!("a key is either a table or a value"),
            };
        }
        node.insert(leaf, v);
    }
    // Every value came from a typed layer, so the merged table reads back.
    let merged: ConfigLayer = toml::Value::Table(root)
        .try_into()
        .expect("values serialised from typed layers deserialise");
    Layered {
        merged,
        origins,
        api_keys: flags.server.api_keys.clone().unwrap_or_default(),
        metrics_api_key: flags.server.metrics_api_key.clone(),
        inject_faults: flags.server.inject_faults.clone(),
    }
}

impl Layered {
    pub fn origin(&self, key: &str) -> Origin {
        self.origins.get(key).cloned().unwrap_or(Origin::Default)
    }

    pub(super) fn invalid(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            source_name: source_name(key, &self.origin(key)),
            message: message.into(),
        }
    }

    /// Whether `key` was set by a flag or env variable.
    pub(super) fn set_by_flag(&self, key: &str) -> bool {
        matches!(self.origin(key), Origin::Flag(_) | Origin::Env(_))
    }

    /// Whether the deployment set `key` itself (flag, env or runtime.toml), so that
    /// the checkpoint's generation_config.json does not replace it.
    pub(super) fn set_by_deployment(&self, key: &str) -> bool {
        !matches!(self.origins.get(key), None | Some(Origin::Default))
    }

    /// The merged configuration as runtime.toml, each value followed by its origin
    /// (`dfastllm serve --print-config`).
    pub fn render(&self) -> String {
        let mut tables: BTreeMap<&str, Vec<(&str, String)>> = BTreeMap::new();
        let values = flatten(&self.merged);
        for (key, value) in &values {
            let (table, leaf) = key.rsplit_once('.').unwrap_or(("", key));
            let from = match self.origin(key) {
                Origin::Default => "default".to_string(),
                Origin::File(p) => p.display().to_string(),
                Origin::Flag(f) => f,
                Origin::Env(v) => v,
            };
            tables
                .entry(table)
                .or_default()
                .push((leaf, format!("{value}  # {from}")));
        }
        let mut out = String::from(
            "# dfastllm serve: the merged configuration (flag > env > runtime.toml > default)\n",
        );
        for (table, rows) in tables {
            out.push_str(&format!("\n[{table}]\n"));
            for (leaf, line) in rows {
                out.push_str(&format!("{leaf} = {line}\n"));
            }
        }
        if !self.api_keys.is_empty() {
            out.push_str(&format!(
                "# server.api_keys: {} given by flag or env (values hidden)\n",
                self.api_keys.len()
            ));
        }
        if self.metrics_api_key.is_some() {
            out.push_str("# server.metrics_api_key: given by flag or env (value hidden)\n");
        }
        if let Some(plan) = &self.inject_faults {
            out.push_str(&format!(
                "# server.inject_faults: {plan:?} (TEST ONLY: forward passes will fail)\n"
            ));
        }
        out
    }
}

/// Reads keys from a file: one per line or comma-separated; blank lines and `#` comments
/// are skipped (the operator mounts a Secret key here).
pub fn read_api_keys(path: &Path) -> Result<Vec<String>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    Ok(split_keys(
        text.lines().filter(|l| !l.trim_start().starts_with('#')),
    ))
}

pub(super) fn split_keys<'a>(parts: impl Iterator<Item = &'a str>) -> Vec<String> {
    parts
        .flat_map(|l| l.split(','))
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(str::to_string)
        .collect()
}
