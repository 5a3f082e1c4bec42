//! Transformer pieces shared by the LLaMA-family diffusion models (LLaDA, Dream).
//!
//! The model files load weights under their own checkpoint names and assemble these
//! parts; the parts know nothing about names. Attention here is bidirectional: the
//! only mask is the padding bias carried by [`Batch`].
//!
//! Fast-dLLM's KV caching lives here too: a full pass can hand back every layer's keys
//! and values ([`KvCache`]), and a later pass can recompute only a window of columns,
//! taking the other columns' keys and values from that cache.

use std::ops::Range;

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{Embedding, Linear, RmsNorm};

use super::Batch;

/// Precomputed rotate-half RoPE tables (`[max_positions, head_dim / 2]`). The tables'
/// dtype is the precision the rotation runs in ([`rope`]): an f32 table under bf16
/// weights is LLaDA's `rope_full_precision`.
#[derive(Debug, Clone)]
pub struct RotaryTable {
    cos: Tensor,
    sin: Tensor,
}

impl RotaryTable {
    pub fn new(
        head_dim: usize,
        max_positions: usize,
        theta: f64,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let half = head_dim / 2;
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| (1.0 / theta.powf(2.0 * i as f64 / head_dim as f64)) as f32)
            .collect();
        Self::from_inv_freq(inv_freq, max_positions, dtype, device)
    }

    /// The table for given inverse frequencies (one per pair of head dimensions), as
    /// scaled RoPE variants compute them.
    pub fn from_inv_freq(
        inv_freq: Vec<f32>,
        max_positions: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let half = inv_freq.len();
        let inv_freq = Tensor::from_vec(inv_freq, (1, half), device)?;
        let t = Tensor::arange(0u32, max_positions as u32, device)?
            .to_dtype(DType::F32)?
            .reshape((max_positions, 1))?;
        let freqs = t.matmul(&inv_freq)?;
        Ok(Self {
            cos: freqs.cos()?.to_dtype(dtype)?,
            sin: freqs.sin()?.to_dtype(dtype)?,
        })
    }

    /// `(cos, sin)` of shape `[B, T, head_dim / 2]` for a batch's positions.
    pub fn for_positions(&self, positions: &Tensor) -> Result<(Tensor, Tensor)> {
        let (b, t) = positions.dims2()?;
        let flat = positions.flatten_all()?;
        let half = self.cos.dim(1)?;
        let max = self.cos.dim(0)?;
        let furthest = flat.max(0)?.to_scalar::<u32>()? as usize;
        if furthest >= max {
            candle_core::bail!("position {furthest} is beyond the model's context of {max} tokens")
        }
        let cos = self.cos.index_select(&flat, 0)?.reshape((b, t, half))?;
        let sin = self.sin.index_select(&flat, 0)?.reshape((b, t, half))?;
        Ok((cos, sin))
    }
}

/// Rotates `x` (`[B, heads, T, head_dim]`) in the precision of the tables: LLaDA
/// upcasts q and k to f32 for RoPE and casts back (`rope_full_precision`), where HF's
/// Qwen2 (Dream) rotates in the model's dtype with tables cast down to it.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    if cos.dtype() == x.dtype() {
        return candle_nn::rotary_emb::rope(x, cos, sin);
    }
    candle_nn::rotary_emb::rope(&x.to_dtype(cos.dtype())?, cos, sin)?.to_dtype(x.dtype())
}

/// Multi-head attention with grouped key/value heads, no causal mask.
#[derive(Debug, Clone)]
pub struct Attention {
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub o: Linear,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

/// Every layer's keys (after rotary) and values, `[B, kv_heads, T, head_dim]`, from a
/// full pass over a batch.
#[derive(Debug, Clone)]
pub struct KvCache {
    pub layers: Vec<(Tensor, Tensor)>,
}

impl KvCache {
    /// Columns of the grid the cache covers.
    pub fn width(&self) -> usize {
        self.layers.first().map_or(0, |(k, _)| k.dims()[2])
    }

    /// Row `row`, columns `cols`: one sequence's cache out of a padded batch's.
    pub fn row(&self, row: usize, cols: Range<usize>) -> Result<Self> {
        let layers = self
            .layers
            .iter()
            .map(|(k, v)| {
                Ok((
                    k.narrow(0, row, 1)?.narrow(2, cols.start, cols.len())?,
                    v.narrow(0, row, 1)?.narrow(2, cols.start, cols.len())?,
                ))
            })
            .collect::<Result<_>>()?;
        Ok(Self { layers })
    }

    /// Stacks same-width caches along the batch dimension.
    pub fn stack(caches: &[&Self]) -> Result<Self> {
        let Some(first) = caches.first() else {
            candle_core::bail!("no caches to stack")
        };
        if caches.len() == 1 {
            return Ok((*first).clone());
        }
        let layers = (0..first.layers.len())
            .map(|l| {
                let ks: Vec<&Tensor> = caches.iter().map(|c| &c.layers[l].0).collect();
                let vs: Vec<&Tensor> = caches.iter().map(|c| &c.layers[l].1).collect();
                Ok((Tensor::cat(&ks, 0)?, Tensor::cat(&vs, 0)?))
            })
            .collect::<Result<_>>()?;
        Ok(Self { layers })
    }
}

/// The window's fresh keys or values between the cached ones before and after it.
fn splice(cached: &Tensor, fresh: &Tensor, cols: &Range<usize>) -> Result<Tensor> {
    let width = cached.dim(2)?;
    let mut parts = Vec::with_capacity(3);
    if cols.start > 0 {
        parts.push(cached.narrow(2, 0, cols.start)?);
    }
    parts.push(fresh.clone());
    if cols.end < width {
        parts.push(cached.narrow(2, cols.end, width - cols.end)?);
    }
    if parts.len() == 1 {
        return Ok(fresh.clone());
    }
    Tensor::cat(&parts, 2)
}

/// Keys and values a window pass takes from the cache: `(keys, values, window columns)`.
type CachedKv<'a> = (&'a Tensor, &'a Tensor, &'a Range<usize>);

impl Attention {
    /// Attention for the tokens in `x`. Without `cached`, `x` is the whole grid; with it,
    /// `x` is the window `cols` and the other columns' keys/values come from the cache.
    /// Returns the output and this pass's own keys/values (for capturing).
    fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        bias: Option<&Tensor>,
        cached: Option<CachedKv<'_>>,
    ) -> Result<(Tensor, (Tensor, Tensor))> {
        let (b, t, _) = x.dims3()?;
        let heads = |proj: &Linear, n: usize| -> Result<Tensor> {
            proj.forward(x)?
                .reshape((b, t, n, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = rope(&heads(&self.q, self.n_heads)?, cos, sin)?;
        let k_own = rope(&heads(&self.k, self.n_kv_heads)?, cos, sin)?;
        let v_own = heads(&self.v, self.n_kv_heads)?;
        let (k, v) = match cached {
            Some((ck, cv, cols)) => (splice(ck, &k_own, cols)?, splice(cv, &v_own, cols)?),
            None => (k_own.clone(), v_own.clone()),
        };
        let group = self.n_heads / self.n_kv_heads;
        let k = repeat_kv(k, group)?;
        let v = repeat_kv(v, group)?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let mut scores = (q.matmul(&k.t()?)? * scale)?;
        if let Some(bias) = bias {
            scores = scores.broadcast_add(bias)?;
        }
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let out =
            probs
                .matmul(&v)?
                .transpose(1, 2)?
                .reshape((b, t, self.n_heads * self.head_dim))?;
        Ok((self.o.forward(&out)?, (k_own, v_own)))
    }
}

/// `[B, kv, T, D]` -> `[B, kv * group, T, D]`, each kv head repeated for its group.
fn repeat_kv(x: Tensor, group: usize) -> Result<Tensor> {
    if group == 1 {
        return Ok(x);
    }
    let (b, kv, t, d) = x.dims4()?;
    x.unsqueeze(2)?
        .expand((b, kv, group, t, d))?
        .reshape((b, kv * group, t, d))
}

/// SwiGLU feed-forward: `down(silu(gate(x)) * up(x))`.
#[derive(Debug, Clone)]
pub struct SwiGlu {
    pub gate: Linear,
    pub up: Linear,
    pub down: Linear,
}

impl Module for SwiGlu {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gated = (candle_nn::ops::silu(&self.gate.forward(x)?)? * self.up.forward(x)?)?;
        self.down.forward(&gated)
    }
}

/// Pre-norm transformer block.
#[derive(Debug, Clone)]
pub struct Block {
    pub attn_norm: RmsNorm,
    pub attn: Attention,
    pub mlp_norm: RmsNorm,
    pub mlp: SwiGlu,
}

impl Block {
    fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        bias: Option<&Tensor>,
        cached: Option<CachedKv<'_>>,
    ) -> Result<(Tensor, (Tensor, Tensor))> {
        let (attn, kv) = self
            .attn
            .forward(&self.attn_norm.forward(x)?, cos, sin, bias, cached)?;
        let x = (x + attn)?;
        Ok(((&x + self.mlp.forward(&self.mlp_norm.forward(&x)?)?)?, kv))
    }
}

/// Embedding, blocks and final norm: everything up to the LM head.
#[derive(Debug, Clone)]
pub struct Trunk {
    pub embed: Embedding,
    pub blocks: Vec<Block>,
    pub norm: RmsNorm,
    pub rotary: RotaryTable,
}

impl Trunk {
    /// Bytes of keys and values one token holds across every layer, at `dtype`.
    pub fn kv_bytes_per_token(&self, dtype: candle_core::DType) -> usize {
        self.blocks
            .iter()
            .map(|b| 2 * b.attn.n_kv_heads * b.attn.head_dim * dtype.size_in_bytes())
            .sum()
    }

    /// Final hidden states `[B, T, H]`.
    pub fn hidden_states(&self, batch: &Batch) -> Result<Tensor> {
        Ok(self.run(batch, None, false)?.0)
    }

    /// Final hidden states of the whole grid and every layer's keys/values.
    pub fn hidden_states_capture(&self, batch: &Batch) -> Result<(Tensor, KvCache)> {
        let (hidden, cache) = self.run(batch, None, true)?;
        let cache = cache.ok_or_else(|| candle_core::Error::Msg("no cache captured".into()))?;
        Ok((hidden, cache))
    }

    /// Final hidden states `[B, cols.len(), H]` of the columns `cols` only: their keys and
    /// values are recomputed, every other column's come from `cache` (captured from a
    /// batch of the same shape). Exact when nothing outside `cols` changed since.
    pub fn hidden_states_window(
        &self,
        batch: &Batch,
        cols: Range<usize>,
        cache: &KvCache,
    ) -> Result<Tensor> {
        if cache.width() != batch.width() || cache.layers.len() != self.blocks.len() {
            candle_core::bail!(
                "KV cache of {} columns x {} layers does not fit a batch of {} columns x {} layers",
                cache.width(),
                cache.layers.len(),
                batch.width(),
                self.blocks.len()
            )
        }
        Ok(self.run(batch, Some((cols, cache)), false)?.0)
    }

    /// `lm_head` logits for `positions` from a full pass that also captures the cache,
    /// for a model whose logits at column i come from hidden state `i - shift`.
    pub fn logits_capture(
        &self,
        lm_head: &Linear,
        batch: &Batch,
        positions: Range<usize>,
        shift: usize,
    ) -> Result<(Tensor, KvCache)> {
        if positions.start < shift {
            candle_core::bail!("no logits for column {} in a cached pass", positions.start)
        }
        let (hidden, cache) = self.hidden_states_capture(batch)?;
        let logits =
            lm_head.forward(&hidden.narrow(1, positions.start - shift, positions.len())?)?;
        Ok((logits, cache))
    }

    /// `lm_head` logits for `positions` from a windowed pass over the columns `mode`
    /// recomputes (see [`super::recomputed_columns`]), the rest taken from `cache`.
    pub fn logits_cached(
        &self,
        lm_head: &Linear,
        batch: &Batch,
        cache: &KvCache,
        positions: Range<usize>,
        mode: KvCacheMode,
        shift: usize,
    ) -> Result<Tensor> {
        let cols = super::recomputed_columns(&positions, batch.width(), shift, mode)?;
        let hidden = self.hidden_states_window(batch, cols.clone(), cache)?;
        lm_head.forward(&hidden.narrow(1, positions.start - shift - cols.start, positions.len())?)
    }

    fn run(
        &self,
        batch: &Batch,
        window: Option<(Range<usize>, &KvCache)>,
        capture: bool,
    ) -> Result<(Tensor, Option<KvCache>)> {
        let (ids, positions) = match &window {
            Some((cols, _)) => (
                batch.input_ids.narrow(1, cols.start, cols.len())?,
                batch.positions.narrow(1, cols.start, cols.len())?,
            ),
            None => (batch.input_ids.clone(), batch.positions.clone()),
        };
        let (cos, sin) = self.rotary.for_positions(&positions)?;
        let mut x = self.embed.forward(&ids)?;
        let mut captured = Vec::with_capacity(if capture { self.blocks.len() } else { 0 });
        for (i, block) in self.blocks.iter().enumerate() {
            let cached = window
                .as_ref()
                .map(|(cols, cache)| (&cache.layers[i].0, &cache.layers[i].1, cols));
            let (next, kv) =
                block.forward(&x, &cos, &sin, batch.attention_bias.as_ref(), cached)?;
            if capture {
                captured.push(kv);
            }
            x = next;
        }
        let cache = capture.then_some(KvCache { layers: captured });
        Ok((self.norm.forward(&x)?, cache))
    }
}

/// Checks the head layout of a config before any weight is read.
pub fn check_heads(
    hidden: usize,
    n_heads: usize,
    n_kv_heads: usize,
) -> std::result::Result<usize, String> {
    if n_heads == 0 || hidden % n_heads != 0 {
        return Err(format!(
            "hidden size {hidden} is not divisible by {n_heads} attention heads"
        ));
    }
    if n_kv_heads == 0 || n_heads % n_kv_heads != 0 {
        return Err(format!(
            "{n_heads} attention heads are not a multiple of {n_kv_heads} key/value heads"
        ));
    }
    let head_dim = hidden / n_heads;
    if head_dim % 2 != 0 {
        return Err(format!(
            "head dimension {head_dim} must be even for rotary embeddings"
        ));
    }
    Ok(head_dim)
}

/// Fast-dLLM KV caching.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
#[value(rename_all = "lowercase")]
pub enum KvCacheMode {
    /// Every step runs the whole sequence (exact).
    #[default]
    #[serde(alias = "off")]
    #[value(alias = "off")]
    None,
    /// A full pass at each block's start caches the keys/values before the block; the
    /// block's other steps recompute only the block and everything after it.
    Prefix,
    /// Also reuses the (still masked) suffix: the block's other steps feed only the block.
    Dual,
}

crate::named_enum!(KvCacheMode, "kv_cache", false);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeat_kv_repeats_each_head_for_its_group() {
        let x = Tensor::arange(0f32, 4.0, &Device::Cpu)
            .unwrap()
            .reshape((1, 2, 2, 1))
            .unwrap();
        let y = repeat_kv(x, 2)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(y, vec![0.0, 1.0, 0.0, 1.0, 2.0, 3.0, 2.0, 3.0]);
    }

    #[test]
    fn rotary_position_zero_is_identity() {
        let table = RotaryTable::new(4, 8, 10_000.0, DType::F32, &Device::Cpu).unwrap();
        let pos = Tensor::new(&[[0u32, 3]], &Device::Cpu).unwrap();
        let (cos, sin) = table.for_positions(&pos).unwrap();
        let cos = cos.to_vec3::<f32>().unwrap();
        let sin = sin.to_vec3::<f32>().unwrap();
        assert_eq!(cos[0][0], vec![1.0, 1.0]);
        assert_eq!(sin[0][0], vec![0.0, 0.0]);
        assert!((cos[0][1][0] - 3f32.cos()).abs() < 1e-6);
        assert!((sin[0][1][1] - (3.0f32 * 0.01).sin()).abs() < 1e-6);
    }

    #[test]
    fn an_f32_table_rotates_bf16_heads_in_f32() {
        let dev = Device::Cpu;
        let x = Tensor::arange(0f32, 64.0, &dev)
            .unwrap()
            .affine(0.37, -3.0)
            .unwrap()
            .reshape((1, 1, 4, 16))
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap();
        let pos = Tensor::new(&[[0u32, 5, 900, 1999]], &dev).unwrap();
        let full = RotaryTable::new(16, 2048, 500_000.0, DType::F32, &dev).unwrap();
        let (cos, sin) = full.for_positions(&pos).unwrap();
        let got = rope(&x, &cos, &sin).unwrap();
        assert_eq!(got.dtype(), DType::BF16);
        let want = candle_nn::rotary_emb::rope(&x.to_dtype(DType::F32).unwrap(), &cos, &sin)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap();
        let flat = |t: &Tensor| {
            t.to_dtype(DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        assert_eq!(flat(&got), flat(&want));
        // A bf16 table (rope_full_precision false) rounds differently at far positions.
        let half = RotaryTable::new(16, 2048, 500_000.0, DType::BF16, &dev).unwrap();
        let (c, s) = half.for_positions(&pos).unwrap();
        assert_ne!(flat(&rope(&x, &c, &s).unwrap()), flat(&want));
    }

    #[test]
    fn positions_beyond_the_table_are_an_error() {
        let table = RotaryTable::new(4, 8, 10_000.0, DType::F32, &Device::Cpu).unwrap();
        let pos = Tensor::new(&[[8u32]], &Device::Cpu).unwrap();
        assert!(table.for_positions(&pos).is_err());
    }

    #[test]
    fn head_layout_is_checked() {
        assert_eq!(check_heads(64, 4, 2), Ok(16));
        assert!(check_heads(64, 5, 5).is_err());
        assert!(check_heads(64, 4, 3).is_err());
        assert!(check_heads(12, 4, 4).is_err());
    }
}
