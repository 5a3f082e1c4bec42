use clap::{CommandFactory, FromArgMatches, Parser};

use std::path::Path;

use super::*;
use dfastllm_core::decoding::CommitRule;

/// `dfastllm serve`'s config flags on their own, parsed the way the binary parses them.
#[derive(Parser, Debug)]
struct Flags {
    #[command(flatten)]
    layer: ConfigLayer,
}

fn parse_flags(args: &[&str]) -> (ConfigLayer, FlagOrigins) {
    let matches = Flags::command()
        .try_get_matches_from(std::iter::once("serve").chain(args.iter().copied()))
        .unwrap();
    let flags = Flags::from_arg_matches(&matches).unwrap();
    (flags.layer, FlagOrigins::from_matches(&matches))
}

fn resolve(args: &[&str], file: &str) -> Result<RuntimeConfig, ConfigError> {
    let (flags, origins) = parse_flags(args);
    let file = ConfigLayer::parse(file).unwrap();
    RuntimeConfig::from_layers(&flags, &origins, Some((&file, Path::new("runtime.toml"))))
}

fn from_code(flags: ConfigLayer, file: ConfigLayer) -> Result<RuntimeConfig, ConfigError> {
    RuntimeConfig::from_layers(
        &flags,
        &FlagOrigins::default(),
        Some((&file, Path::new("runtime.toml"))),
    )
}

#[test]
fn the_operator_contract_fixture_parses() {
    let text = include_str!("../../../tests/fixtures/runtime.toml");
    let file = ConfigLayer::parse(text).unwrap();
    let cfg = from_code(ConfigLayer::default(), file).unwrap();
    assert_eq!(cfg.served_name, "llada-8b");
    assert_eq!(cfg.architecture, None, "the fixture says auto");
    assert_eq!(cfg.aliases, vec!["gpt-3.5-turbo".to_string()]);
    assert_eq!(cfg.max_concurrent_requests, 32);
    assert_eq!(cfg.decoding.gen_length, 256);
    assert_eq!(cfg.decoding.block_length, Some(32));
    assert_eq!(cfg.decoding.remasking, Remasking::LowConfidence);
    assert_eq!(cfg.device, DeviceChoice::Cuda(0));
    assert_eq!(cfg.rate_limit_requests_per_minute, 600);
    assert_eq!(
        cfg.decoding.commit,
        CommitRule::Threshold {
            threshold: 0.9,
            max_parallel: 16
        }
    );
    assert_eq!(cfg.decoding.kv_cache, KvCacheMode::Dual);
    assert_eq!(cfg.decoding.mor, None, "mor.enabled = false");
    assert_eq!(
        (cfg.breaker_failure_threshold, cfg.breaker_recovery_seconds),
        (5, 20)
    );
}

#[test]
fn vllm_flag_names_are_accepted_and_flag_only_values_survive_the_merge() {
    let cfg = resolve(
        &[
            "--served-model-name",
            "m",
            "--max-num-seqs",
            "3",
            "--max-model-len",
            "512",
            "--dtype",
            "half",
            "--api-key",
            "k1",
            "--request-timeout",
            "7",
            "--request-timeout-streaming",
            "9",
            "--metrics-api-key",
            "scrape",
            "--inject-faults",
            "oom@2",
        ],
        "",
    )
    .unwrap();
    assert_eq!(cfg.served_name, "m");
    assert_eq!(cfg.max_concurrent_requests, 3);
    assert_eq!(cfg.max_model_len, Some(512));
    assert_eq!(cfg.dtype, DTypeChoice::F16);
    assert_eq!(cfg.api_keys, ["k1"]);
    assert_eq!(
        (
            cfg.request_timeout_seconds,
            cfg.request_timeout_streaming_seconds
        ),
        (7, 9)
    );
    assert_eq!(cfg.metrics_api_key.as_deref(), Some("scrape"));
    assert_eq!(cfg.inject_faults, "oom@2".parse().unwrap());
    let defaults = resolve(&[], "").unwrap();
    assert_eq!(
        (
            defaults.request_timeout_seconds,
            defaults.request_timeout_streaming_seconds
        ),
        (60, 300),
        "separate tiers for whole and streamed answers"
    );
    assert!(defaults.inject_faults.is_empty());
    // The test-only flag is not in --help.
    let help = Flags::command().render_long_help().to_string();
    assert!(!help.contains("inject-faults"), "{help}");
    assert!(help.contains("max-num-seqs"));
}

#[test]
fn the_defaults_table_is_the_pinned_contract() {
    let pinned = ConfigLayer::parse(include_str!(
        "../../../tests/fixtures/runtime-defaults.toml"
    ))
    .unwrap();
    assert_eq!(
        defaults(),
        pinned,
        "runtime-defaults.toml is the defaults table"
    );
}

#[test]
fn flags_beat_the_file_which_beats_defaults() {
    let file = "[server]\nport = 9000\nmax_queue = 5\n[decoding]\ngen_length = 32\n";
    let cfg = resolve(&["--port", "7000"], file).unwrap();
    assert_eq!(cfg.port, 7000, "flag wins");
    assert_eq!(cfg.max_queue, 5, "file wins over default");
    assert_eq!(cfg.max_concurrent_requests, 16, "default");
    assert_eq!(cfg.decoding.gen_length, 32);
    assert_eq!(cfg.model_path, PathBuf::from("/mnt/models"));
    assert_eq!(
        cfg.served_name, "models",
        "served name defaults to the model directory's name"
    );
}

#[test]
fn unknown_keys_and_bad_values_are_errors() {
    let err = ConfigLayer::parse("[server]\nprot = 1\n").unwrap_err();
    assert!(err.contains("prot"), "{err}");
    let err = ConfigLayer::parse("[decoding]\nremasking = \"best\"\n").unwrap_err();
    assert!(err.contains("best") || err.contains("remasking"), "{err}");
    let err = resolve(&["--max-queue", "0"], "").unwrap_err().to_string();
    assert!(err.starts_with("--max-queue: must be at least 1"), "{err}");
    let err = resolve(&[], "[server]\nmax_queue = 0\n")
        .unwrap_err()
        .to_string();
    assert_eq!(err, "runtime.toml: server.max_queue: must be at least 1");
}

#[test]
fn a_bad_device_in_the_file_is_the_files_error_not_the_flags() {
    let err = ConfigLayer::parse("[model]\ndevice = \"tpu\"\n").unwrap_err();
    assert!(err.contains("tpu") && err.contains("device"), "{err}");
    assert!(!err.contains("--device"), "{err}");
}

#[test]
fn api_keys_come_from_flags_and_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys");
    std::fs::write(&path, "# team keys\nk2\nk3, k4\n\n").unwrap();
    let path = path.to_str().unwrap();
    let cfg = resolve(&["--api-keys", "k1", "--api-keys-file", path], "").unwrap();
    assert_eq!(cfg.api_keys, vec!["k1", "k2", "k3", "k4"]);
    let missing = dir.path().join("nope");
    let err = resolve(&["--api-keys-file", missing.to_str().unwrap()], "").unwrap_err();
    assert!(err.to_string().contains("nope"));
}

/// Precedence bug 1: `--apd-threshold` over a file that enables threshold APD was
/// dropped, because the flag side replaced the file's whole APD section or nothing.
#[test]
fn an_apd_flag_changes_one_field_of_the_files_rule() {
    let file = "[decoding.apd]\nenabled = true\nmode = \"threshold\"\nmax_parallel = 4\n";
    let cfg = resolve(&["--apd-threshold", "0.8"], file).unwrap();
    assert_eq!(
        cfg.decoding.commit,
        CommitRule::Threshold {
            threshold: 0.8,
            max_parallel: 4
        },
        "the flag's threshold with the file's max_parallel"
    );
    let off = resolve(&["--apd", "off", "--apd-threshold", "0.8"], file).unwrap_err();
    assert!(off.to_string().starts_with("--apd-threshold:"), "{off}");
    let nothing_on = resolve(&["--apd-threshold", "0.8"], "").unwrap_err();
    assert!(
        nothing_on.to_string().contains("--apd threshold"),
        "a flag that would be ignored is an error naming what it needs: {nothing_on}"
    );
    let factor = resolve(&["--apd", "factor"], file).unwrap();
    assert_eq!(
        factor.decoding.commit,
        CommitRule::Factor {
            factor: 1.0,
            max_parallel: 4
        }
    );
}

#[test]
fn the_verifier_needs_its_model_and_excludes_caches_and_mor() {
    let cfg = resolve(&["--apd-verifier-model", "/v", "--apd-mix", "0.6"], "").unwrap();
    assert_eq!(cfg.verifier_model.as_deref(), Some(Path::new("/v")));
    assert_eq!(
        cfg.decoding.verifier,
        Some(CommitRule::Verifier {
            mix: 0.6,
            max_lookahead: 8
        })
    );
    assert_eq!(
        cfg.decoding.commit,
        CommitRule::Schedule,
        "loaded, not the default rule"
    );
    let file = "[decoding.apd]\nenabled = true\nmode = \"verifier\"\nverifier_model = \"/v\"\n";
    let cfg = resolve(&[], file).unwrap();
    assert!(matches!(cfg.decoding.commit, CommitRule::Verifier { .. }));
    let cases: [(&[&str], &str, &str); 5] = [
        (&["--apd", "verifier"], "", "--apd:"),
        (&["--apd-mix", "0.5"], "", "--apd-mix:"),
        (&["--kv-cache", "dual"], file, "--kv-cache:"),
        (&["--mor"], file, "--mor:"),
        (&["--apd-mix", "1.5"], file, "--apd-mix:"),
    ];
    for (flags, file, starts) in cases {
        let err = resolve(flags, file).unwrap_err().to_string();
        assert!(err.starts_with(starts), "{flags:?}: {err}");
    }
}

#[test]
fn gpu_memory_levels_are_ratios_and_warn_is_below_critical() {
    let cfg = resolve(&["--gpu-memory-utilization", "0.8"], "").unwrap();
    assert_eq!(cfg.memory_guard.utilization, 0.8);
    assert_eq!(
        (cfg.memory_guard.warn, cfg.memory_guard.critical),
        (0.85, 0.95)
    );
    let ok = resolve(
        &[
            "--gpu-memory-utilization",
            "0.95",
            "--gpu-memory-critical",
            "0.98",
        ],
        "",
    );
    assert!(ok.is_ok(), "a higher budget with a higher refusal level");
    let cases: [(&[&str], &str); 4] = [
        (
            &["--gpu-memory-utilization", "1.5"],
            "--gpu-memory-utilization:",
        ),
        (
            &["--gpu-memory-utilization", "0.95"],
            "--gpu-memory-utilization:",
        ),
        (&["--gpu-memory-critical", "0"], "--gpu-memory-critical:"),
        (&["--gpu-memory-warn", "0.97"], "--gpu-memory-warn:"),
    ];
    for (flags, starts) in cases {
        let err = resolve(flags, "").unwrap_err().to_string();
        assert!(err.starts_with(starts), "{flags:?}: {err}");
    }
}

/// Precedence bug 2: `--mor` replaced the file's recursion counts with the flag
/// defaults, and nothing on the flag side could turn a file's MoR off.
#[test]
fn mor_flags_merge_field_by_field_and_can_turn_the_files_mor_off() {
    let file = "[decoding.mor]\nenabled = true\nmin_recursions = 1\nmax_recursions = 4\n";
    let cfg = resolve(&["--mor"], file).unwrap();
    let mor = cfg.decoding.mor.unwrap();
    assert_eq!(
        (mor.min_recursions, mor.max_recursions),
        (1, 4),
        "file counts kept"
    );
    let cfg = resolve(&["--mor-max-recursions", "3"], file).unwrap();
    assert_eq!(cfg.decoding.mor.unwrap().max_recursions, 3);
    assert_eq!(cfg.decoding.mor.unwrap().min_recursions, 1);
    let off = resolve(&["--mor", "false"], file).unwrap();
    assert_eq!(off.decoding.mor, None, "--mor false beats the file");
    let err = resolve(&["--mor-min-recursions", "2"], "").unwrap_err();
    assert!(
        err.to_string().starts_with("--mor-min-recursions:"),
        "{err}"
    );
}

#[test]
fn the_sampler_checks_name_the_values_source() {
    let err = resolve(&[], "[decoding.apd]\nenabled = true\nthreshold = 1.5\n")
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("runtime.toml: decoding.apd.threshold"),
        "{err}"
    );
    let err = resolve(&["--apd", "threshold", "--apd-threshold", "1.5"], "")
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("--apd-threshold"), "{err}");
}

#[test]
fn print_config_names_every_values_origin() {
    let (flags, origins) = parse_flags(&["--port", "7000", "--api-keys", "secret"]);
    let file = ConfigLayer::parse("[server]\nmax_queue = 5\n").unwrap();
    let layered = merge(&flags, &origins, Some((&file, Path::new("/etc/rt.toml"))));
    let text = layered.render();
    assert!(text.contains("port = 7000  # --port\n"), "{text}");
    assert!(text.contains("max_queue = 5  # /etc/rt.toml\n"), "{text}");
    assert!(text.contains("host = \"0.0.0.0\"  # default\n"), "{text}");
    assert!(text.contains("[decoding.mor]\n"), "{text}");
    assert!(!text.contains("secret"), "keys are never printed: {text}");
    // What it prints is a runtime.toml that reads back to the same values.
    let back = ConfigLayer::parse(&text).unwrap();
    assert_eq!(back.server.port, Some(7000));
    assert_eq!(back.decoding, layered.merged.decoding);
}

#[test]
fn help_shows_the_tables_defaults() {
    let mut cmd = annotate_defaults(Flags::command());
    let help = cmd.render_help().to_string();
    assert!(help.contains("[default: 8000]"), "{help}");
    assert!(help.contains("[default: low_confidence]"), "{help}");
    assert!(help.contains("[default: 0.9]"), "{help}");
}

#[test]
fn generation_config_is_applied_unless_ignored_and_a_set_temperature_is_the_deployments() {
    let cfg = resolve(&[], "").unwrap();
    assert_eq!(cfg.generation_config, GenerationConfigMode::Auto);
    assert!(!cfg.decoding.temperature_set);
    let cfg = resolve(&["--generation-config", "vllm"], "").unwrap();
    assert_eq!(cfg.generation_config, GenerationConfigMode::Ignore);
    let cfg = resolve(&[], "[model]\ngeneration_config = \"ignore\"\n").unwrap();
    assert_eq!(cfg.generation_config, GenerationConfigMode::Ignore);
    assert!(
        resolve(&["--temperature", "0"], "")
            .unwrap()
            .decoding
            .temperature_set
    );
    assert!(
        resolve(&[], "[decoding]\ntemperature = 0.5\n")
            .unwrap()
            .decoding
            .temperature_set
    );
}
