//! The `dfastllm` command line: clap structs and dispatch only. Each subcommand's
//! flags and the few lines that call the libraries live in `cmd/<subcommand>.rs`.

mod cmd;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "dfastllm",
    version,
    about = "Serve and run diffusion language models"
)]
struct Cli {
    /// CPU threads for tensor kernels [default: every core]. Tiny models run faster on
    /// fewer threads, where dispatch costs more than the arithmetic.
    #[arg(long, global = true, env = "DFASTLLM_THREADS")]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve the OpenAI-compatible API (/v1/completions, /v1/chat/completions, ...).
    Serve(Box<cmd::serve::ServeArgs>),
    /// Generate one answer from a prompt and print it.
    Generate(Box<cmd::generate::GenerateArgs>),
    /// Exact-match accuracy and cost of decoding strategies on a JSONL eval set.
    Eval(cmd::eval::EvalArgs),
    /// Write a tiny checkpoint with RANDOM weights in a real upstream layout.
    DemoModel(cmd::demo_model::DemoModelArgs),
    /// What the runtime makes of a checkpoint: architecture, size, dtype, special ids,
    /// tokenizer, template, and what it refuses (exit 1 if anything).
    Inspect(cmd::inspect::InspectArgs),
    /// Measure the runtime.
    #[command(subcommand)]
    Bench(cmd::bench::BenchCommand),
    /// Run an OpenAI Batch API file (resumable) against a model or a server.
    Batch(cmd::batch::BatchArgs),
}

/// One line: clap's first paragraph names the flag and the problem.
fn one_line(e: &clap::Error) -> String {
    let rendered = e.render().to_string();
    let first: Vec<&str> = rendered
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    first.join(" ")
}

fn main() -> ExitCode {
    let command =
        Cli::command().mut_subcommand("serve", dfastllm_server::config::annotate_defaults);
    let parsed = command
        .try_get_matches()
        .and_then(|m| Cli::from_arg_matches(&m).map(|cli| (cli, m)));
    let (cli, matches) = match parsed {
        Ok(ok) => ok,
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            print!("{e}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("{}", one_line(&e));
            return ExitCode::from(2);
        }
    };
    if let Some(threads) = cli.threads {
        if threads == 0 {
            eprintln!("error: --threads must be at least 1");
            return ExitCode::from(2);
        }
        // Read by candle's CPU kernels and by rayon's pool, which starts lazily: set
        // before any tensor work or thread exists.
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    }
    let result = match cli.command {
        Command::Serve(args) => match matches.subcommand_matches("serve") {
            Some(m) => cmd::serve::run(*args, m),
            None => unreachable!("clap parsed the serve subcommand"),
        },
        Command::Generate(args) => cmd::generate::run(*args),
        Command::Eval(args) => cmd::eval::run(args),
        Command::DemoModel(args) => cmd::demo_model::run(args),
        Command::Inspect(args) => cmd::inspect::run(args),
        Command::Bench(args) => cmd::bench::run(args),
        Command::Batch(args) => cmd::batch::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
