//! `dfastllm generate`: one answer from a prompt, with the serving decoding knobs.

use anyhow::bail;
use clap::Args;
use dfastllm_core::decoding::{ArKnobs, DecodeError, DiffusionParams, SamplingParams};
use dfastllm_core::device;
use dfastllm_core::generation::{GenerationError, Generator, Prompt};
use dfastllm_core::tokenizer::ChatMessage;
use dfastllm_server::config::{merge, ConfigLayer, DecodingDefaults, DecodingLayer, FlagOrigins};

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
    /// Nucleus sampling threshold, in (0, 1].
    #[arg(long, env = "DFASTLLM_TOP_P", default_value_t = 1.0)]
    top_p: f32,
    /// Autoregressive models: sample among the k most likely tokens (0 is off).
    #[arg(long, env = "DFASTLLM_TOP_K", default_value_t = 0)]
    top_k: usize,
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
    let defaults = DiffusionParams::with_defaults(d.gen_length);
    let params = DiffusionParams {
        steps: d.steps.unwrap_or(defaults.steps),
        block_length: d.block_length.unwrap_or(defaults.block_length),
        remasking: d.remasking,
        temperature: d.temperature,
        top_p: args.top_p,
        seed: args.seed,
        commit: d.commit,
        mor: d.mor,
        kv_cache: d.kv_cache,
        ..defaults
    };
    let params = SamplingParams {
        autoregressive: ArKnobs {
            top_k: args.top_k,
            ..ArKnobs::default()
        },
        ..SamplingParams::from_diffusion(params)
    };
    let output = match generator.generate(&prompt, &params) {
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
