//! `dfastllm generate`: one answer from a prompt, with the serving decoding knobs.

use anyhow::{anyhow, bail};
use clap::Args;
use dfastllm_core::decoding::DecodeError;
use dfastllm_core::device;
use dfastllm_core::generation::{GenerationError, Generator, Prompt};
use dfastllm_core::tokenizer::ChatMessage;
use dfastllm_server::config::{
    merge, ConfigLayer, DecodingDefaults, DecodingLayer, FlagOrigins, GenerationConfigMode,
};
use dfastllm_server::errors::ApiError;
use dfastllm_server::openai::{self, Sampling};

use super::{flag_of, ModelArgs};

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["prompt", "prompt_ids"])))]
pub struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt text.
    #[arg(long, env = "DFASTLLM_PROMPT")]
    prompt: Option<String>,
    /// Prompt as comma-separated token ids, bypassing the tokenizer.
    #[arg(long, env = "DFASTLLM_PROMPT_IDS", value_delimiter = ',')]
    prompt_ids: Option<Vec<u32>>,
    /// Wrap the prompt as a user message in the model's chat template.
    #[arg(long, env = "DFASTLLM_CHAT")]
    chat: bool,
    /// The same decoding knobs, names and defaults as `dfastllm serve`.
    #[command(flatten)]
    decoding: DecodingLayer,
    /// Seed for sampling and random remasking.
    #[arg(long, env = "DFASTLLM_SEED")]
    seed: Option<u64>,
    /// Nucleus sampling threshold, in (0, 1] [default: generation_config.json's, else 1].
    #[arg(long, env = "DFASTLLM_TOP_P")]
    top_p: Option<f64>,
    /// Autoregressive models: sample among the k most likely tokens (0 is off)
    /// [default: generation_config.json's, else 0].
    #[arg(long, env = "DFASTLLM_TOP_K")]
    top_k: Option<i64>,
    /// Autoregressive models: HF's repetition penalty (1 is off) [default:
    /// generation_config.json's, else 1].
    #[arg(long, env = "DFASTLLM_REPETITION_PENALTY")]
    repetition_penalty: Option<f64>,
    /// auto: generation_config.json's sampling fields are the defaults, as for `serve`;
    /// ignore (or vllm): they are not.
    #[arg(long, env = "DFASTLLM_GENERATION_CONFIG", default_value = "auto")]
    generation_config: GenerationConfigMode,
    /// Print one JSON object instead of the text.
    #[arg(long, env = "DFASTLLM_JSON")]
    json: bool,
}

pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    let layer = ConfigLayer {
        decoding: args.decoding.clone(),
        ..ConfigLayer::default()
    };
    let d = DecodingDefaults::resolve(&merge(&layer, &FlagOrigins::default(), None))?;
    let device = device::select(args.model.device)?;
    let generator = Generator::load(&args.model.dir, &device, args.model.dtype)?;
    let prompt = match (args.prompt, args.prompt_ids) {
        (Some(text), _) if args.chat => Prompt::Chat(vec![ChatMessage::new("user", &text)]),
        (Some(text), _) => Prompt::Text(text),
        (None, Some(ids)) => Prompt::TokenIds(ids),
        (None, None) => bail!("one of --prompt or --prompt-ids is required"),
    };
    // The server's own resolution, so the same flags mean the same answer: the
    // flags, then the deployment defaults, then generation_config.json.
    let seed = args
        .seed
        .map(i64::try_from)
        .transpose()
        .map_err(|_| anyhow!("--seed: at most {}", i64::MAX))?;
    // Lengths given as flags are this answer's own (a block length that does not
    // divide the answer is an error, not a fallback as for a deployment default).
    let own = |v: Option<usize>| v.map(|v| v as i64);
    let sampling = Sampling {
        max_tokens: own(args.decoding.gen_length),
        steps: own(args.decoding.steps),
        block_length: own(args.decoding.block_length),
        top_p: args.top_p,
        top_k: args.top_k,
        repetition_penalty: args.repetition_penalty,
        seed,
        ..Sampling::default()
    };
    let checkpoint = match args.generation_config {
        GenerationConfigMode::Auto => generator.model.sampling_defaults.clone(),
        GenerationConfigMode::Ignore => Default::default(),
    };
    let params = match openai::resolve(&sampling, &d, &checkpoint) {
        Ok(r) => r.sampling,
        Err(ApiError::InvalidRequest { param, message }) => {
            bail!(
                "{}: {message}",
                flag_of(param.as_deref().unwrap_or("prompt"))
            )
        }
        Err(e) => return Err(e.into()),
    };
    let verifier = match &args.decoding.apd.verifier_model {
        Some(dir) => Some(
            generator
                .load_verifier(dir, &device)
                .map_err(|e| anyhow!("--apd-verifier-model {}: {e}", dir.display()))?,
        ),
        None => None,
    };
    let output = match generator.generate_with(&prompt, &params, verifier.as_ref()) {
        Err(GenerationError::Decode(DecodeError::InvalidParam { param, message })) => {
            bail!("{}: {message}", flag_of(param))
        }
        other => other?,
    };
    if generator.model.is_demo {
        eprintln!(
            "note: {} holds random demo weights (dfastllm demo-model): its text is noise",
            args.model.dir.display()
        );
    }
    if args.json {
        println!("{}", serde_json::to_string(&output)?);
    } else {
        println!("{}", output.text);
    }
    Ok(())
}
