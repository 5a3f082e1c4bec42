//! Causal (autoregressive) transformers: Llama, Qwen2, Phi and GPT-2 are one network
//! with different parts (RMSNorm or LayerNorm, gated or plain MLP, full, partial or no
//! rotary embedding, learned positions, sequential or parallel residuals). Each model
//! file maps its checkpoint's names and config onto these parts; this file runs them.
//!
//! Decoding keeps keys and values in a [`CausalCache`] of preallocated slots, one per
//! running sequence. A step appends each sequence's new tokens at its own offset with an
//! in-place write and attends over a view of the slots: no per-step concatenation, and
//! sequences of different lengths (a prompt being prefilled beside others decoding) run
//! in one pass. Writing candle-transformers' models would have meant one cache per
//! sequence and one pass per sequence, which is why these are our own.

use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::{Embedding, LayerNorm, Linear, RmsNorm};

use super::bidirectional::RotaryTable;

/// Rows up to which a CPU linear layer runs as `(W x^T)^T`.
const FEW_ROWS: usize = 16;

/// `x W^T + b`. With few rows (decoding) on the CPU, candle's `x @ W^T` is 2.4x slower
/// than `(W @ x^T)^T` for 8 rows of TinyLlama's MLP (7.5 ms against 3.1 ms measured),
/// as the weight, not the activations, then streams through the kernel once.
pub fn linear(layer: &Linear, x: &Tensor) -> Result<Tensor> {
    let dims = x.dims();
    let k = dims.last().copied().unwrap_or(0);
    let rows = x.elem_count() / k.max(1);
    if rows > FEW_ROWS || !x.device().is_cpu() {
        return layer.forward(x);
    }
    let w = layer.weight();
    let y = w.matmul(&x.reshape((rows, k))?.t()?)?.t()?;
    let y = match layer.bias() {
        Some(b) => y.broadcast_add(b)?,
        None => y.contiguous()?,
    };
    let mut shape = dims.to_vec();
    if let Some(last) = shape.last_mut() {
        *last = w.dim(0)?;
    }
    y.reshape(shape)
}

/// Pre-attention and final normalisation.
#[derive(Debug, Clone)]
pub enum Norm {
    Rms(RmsNorm),
    Layer(LayerNorm),
}

impl Module for Norm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Rms(n) => n.forward(x),
            Self::Layer(n) => n.forward(x),
        }
    }
}

/// MLP activations under their `transformers` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Silu,
    /// `gelu_new`, `gelu_pytorch_tanh`, `gelu_fast`: the tanh approximation.
    GeluTanh,
    /// `gelu`: the exact erf form.
    GeluErf,
    Relu,
}

impl Activation {
    pub fn from_name(name: &str) -> std::result::Result<Self, String> {
        match name {
            "silu" | "swish" => Ok(Self::Silu),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Ok(Self::GeluTanh),
            "gelu" => Ok(Self::GeluErf),
            "relu" => Ok(Self::Relu),
            other => Err(format!(
                "unsupported activation {other:?} (supported: silu, gelu, gelu_new, gelu_pytorch_tanh, gelu_fast, relu)"
            )),
        }
    }

    fn apply(self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Silu => candle_nn::ops::silu(x),
            Self::GeluTanh => x.gelu(),
            Self::GeluErf => x.gelu_erf(),
            Self::Relu => x.relu(),
        }
    }
}

#[derive(Debug, Clone)]
pub enum Mlp {
    /// `down(act(gate(x)) * up(x))` (Llama, Qwen2).
    Gated {
        gate: Linear,
        up: Linear,
        down: Linear,
        act: Activation,
    },
    /// `fc_out(act(fc_in(x)))` (Phi, GPT-2).
    Plain {
        fc_in: Linear,
        fc_out: Linear,
        act: Activation,
    },
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Gated {
                gate,
                up,
                down,
                act,
            } => down.forward(&(act.apply(&gate.forward(x)?)? * up.forward(x)?)?),
            Self::Plain { fc_in, fc_out, act } => fc_out.forward(&act.apply(&fc_in.forward(x)?)?),
        }
    }
}

/// How token positions enter the network.
#[derive(Debug, Clone)]
pub enum PositionEncoding {
    /// Rotate-half RoPE on the first `dims` of each head (all of it for Llama, 40% for
    /// Phi-2); the table is built for `dims`.
    Rotary { table: RotaryTable, dims: usize },
    /// A learned embedding added to the token embedding (GPT-2).
    Learned(Embedding),
}

#[derive(Debug, Clone)]
pub struct SelfAttention {
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub o: Linear,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub scale: f64,
    /// Scores and softmax in f32 whatever the weights' dtype: Phi-2's q.k overflows
    /// f16, and transformers upcasts there too.
    pub f32_scores: bool,
}

#[derive(Debug, Clone)]
pub struct Layer {
    pub attn_norm: Norm,
    pub attn: SelfAttention,
    /// `None`: attention and MLP read the same normalised input and are added to the
    /// residual together (Phi's parallel block).
    pub mlp_norm: Option<Norm>,
    pub mlp: Mlp,
}

/// Where a row's new tokens sit in the step's grid and in its cache slot.
#[derive(Debug, Clone, Copy)]
struct RowPlan {
    /// Padding columns before the row's tokens (rows are left-padded to the widest).
    pad: usize,
    /// New tokens of the row.
    len: usize,
    /// Tokens already in the row's slot: the new ones go at this offset.
    cached: usize,
}

#[derive(Debug, Clone)]
pub struct CausalModel {
    pub embed: Embedding,
    pub positions: PositionEncoding,
    pub layers: Vec<Layer>,
    pub norm: Norm,
    pub lm_head: Linear,
    pub max_context: usize,
}

impl CausalModel {
    /// Rows of the LM head.
    pub fn vocab_size(&self) -> usize {
        self.lm_head.weight().dim(0).unwrap_or(0)
    }

    pub fn max_context(&self) -> usize {
        self.max_context
    }

    pub fn device(&self) -> &Device {
        self.lm_head.weight().device()
    }

    /// Bytes of keys and values one token holds in the cache, every layer.
    pub fn kv_bytes_per_token(&self) -> usize {
        let (heads, dim) = self.kv_shape();
        2 * heads * dim * self.dtype().size_in_bytes() * self.layers.len()
    }

    pub fn dtype(&self) -> DType {
        self.lm_head.weight().dtype()
    }

    fn kv_shape(&self) -> (usize, usize) {
        self.layers
            .first()
            .map_or((1, 1), |l| (l.attn.n_kv_heads, l.attn.head_dim))
    }

    /// Appends `inputs[i]` to the sequence in cache slot `first_slot + i` and returns the
    /// next-token logits `[n, V]` after each row's last new token, or with
    /// `every_position`, `[n, T, V]` for every column of the left-padded grid (padding
    /// columns hold unused, finite values).
    ///
    /// Rows may mix a whole prompt (prefill) with single tokens (decode). Each row's
    /// tokens attend to its own cached tokens and to each other causally.
    pub fn step(
        &self,
        cache: &mut CausalCache,
        first_slot: usize,
        inputs: &[&[u32]],
        every_position: bool,
    ) -> Result<Tensor> {
        if every_position {
            let width = inputs.iter().map(|r| r.len()).max().unwrap_or(0);
            self.step_columns(cache, first_slot, inputs, width)
        } else {
            self.step_columns(cache, first_slot, inputs, 1)?.squeeze(1)
        }
    }

    /// [`Self::step`] with the LM head on the grid's last `columns` columns only:
    /// `[n, columns, V]`.
    fn step_columns(
        &self,
        cache: &mut CausalCache,
        first_slot: usize,
        inputs: &[&[u32]],
        columns: usize,
    ) -> Result<Tensor> {
        let n = inputs.len();
        if n == 0 || inputs.iter().any(|r| r.is_empty()) {
            candle_core::bail!("a causal step needs at least one new token in every row")
        }
        cache.ensure_slots(first_slot + n);
        let width = inputs.iter().map(|r| r.len()).max().unwrap_or(0);
        let plans: Vec<RowPlan> = inputs
            .iter()
            .enumerate()
            .map(|(i, r)| RowPlan {
                pad: width - r.len(),
                len: r.len(),
                cached: cache.lens[first_slot + i],
            })
            .collect();
        let keys = plans.iter().map(|p| p.cached + p.len).max().unwrap_or(0);
        if keys > self.max_context {
            candle_core::bail!(
                "{keys} tokens exceed the model's context of {} tokens",
                self.max_context
            )
        }
        cache.reserve(self, keys)?;

        let mut ids = Vec::with_capacity(n * width);
        let mut positions = Vec::with_capacity(n * width);
        for (row, plan) in inputs.iter().zip(&plans) {
            ids.extend(std::iter::repeat_n(0u32, plan.pad).chain(row.iter().copied()));
            positions.extend(
                std::iter::repeat_n(0u32, plan.pad)
                    .chain((plan.cached..plan.cached + plan.len).map(|p| p as u32)),
            );
        }
        let device = self.device();
        let ids = Tensor::from_vec(ids, (n, width), device)?;
        let positions = Tensor::from_vec(positions, (n, width), device)?;
        let bias = causal_bias(&plans, width, keys, device)?.to_dtype(self.dtype())?;

        let mut x = self.embed.forward(&ids)?;
        let rotary = match &self.positions {
            PositionEncoding::Rotary { table, dims } => {
                let (cos, sin) = table.for_positions(&positions)?;
                Some((cos, sin, *dims))
            }
            PositionEncoding::Learned(wpe) => {
                x = (x + wpe.forward(&positions)?)?;
                None
            }
        };
        for (layer, (ck, cv)) in self.layers.iter().zip(&cache.layers) {
            let h = layer.attn_norm.forward(&x)?;
            let attn = layer.attn.forward(
                &h,
                rotary.as_ref(),
                &bias,
                (ck, cv),
                first_slot,
                &plans,
                keys,
            )?;
            x = match &layer.mlp_norm {
                Some(norm) => {
                    let x = (x + attn)?;
                    let m = layer.mlp.forward(&norm.forward(&x)?)?;
                    (x + m)?
                }
                None => {
                    let m = layer.mlp.forward(&h)?;
                    ((x + attn)? + m)?
                }
            };
        }
        for (i, plan) in plans.iter().enumerate() {
            cache.lens[first_slot + i] = plan.cached + plan.len;
        }
        let columns = columns.clamp(1, width);
        let x = x.narrow(1, width - columns, columns)?;
        linear(&self.lm_head, &self.norm.forward(&x)?)
    }

    /// Next-token logits `[B, T, V]` for every column of `rows` left-padded to one grid,
    /// from a fresh cache (the APD verifier and the parity tests use it).
    pub fn forward_full(&self, rows: &[&[u32]]) -> Result<Tensor> {
        let mut cache = CausalCache::new();
        self.step(&mut cache, 0, rows, true)
    }

    /// Logits `[B, columns, V]` of the last `columns` columns of `rows` left-padded to
    /// one grid (so every row's last `columns` tokens, when no row is shorter), from a
    /// fresh cache: the LM head, the widest matrix, runs on those columns only.
    pub fn forward_last(&self, rows: &[&[u32]], columns: usize) -> Result<Tensor> {
        let mut cache = CausalCache::new();
        self.step_columns(&mut cache, 0, rows, columns)
    }
}

/// `[n, 1, T, keys]`: grid column c of a row with `pad` padding columns is token
/// `cached + c - pad` and sees the slot's columns up to itself. Padding columns see
/// column 0 only, which keeps their softmax finite.
fn causal_bias(plans: &[RowPlan], width: usize, keys: usize, device: &Device) -> Result<Tensor> {
    let mut bias = Vec::with_capacity(plans.len() * width * keys);
    for plan in plans {
        for c in 0..width {
            let last = if c < plan.pad {
                0
            } else {
                plan.cached + c - plan.pad
            };
            bias.extend((0..keys).map(|j| if j <= last { 0.0f32 } else { f32::NEG_INFINITY }));
        }
    }
    Tensor::from_vec(bias, (plans.len(), 1, width, keys), device)
}

impl SelfAttention {
    #[allow(clippy::too_many_arguments)]
    fn forward(
        &self,
        x: &Tensor,
        rotary: Option<&(Tensor, Tensor, usize)>,
        bias: &Tensor,
        (cache_k, cache_v): (&Tensor, &Tensor),
        first_slot: usize,
        plans: &[RowPlan],
        keys: usize,
    ) -> Result<Tensor> {
        let (n, t, _) = x.dims3()?;
        let d = self.head_dim;
        let heads = |proj: &Linear, count: usize| -> Result<Tensor> {
            linear(proj, x)?
                .reshape((n, t, count, d))?
                .transpose(1, 2)?
                .contiguous()
        };
        let mut q = heads(&self.q, self.n_heads)?;
        let mut k = heads(&self.k, self.n_kv_heads)?;
        let v = heads(&self.v, self.n_kv_heads)?;
        if let Some((cos, sin, dims)) = rotary {
            q = apply_rotary(&q, cos, sin, *dims)?;
            k = apply_rotary(&k, cos, sin, *dims)?;
        }
        for (row, plan) in plans.iter().enumerate() {
            let slot = first_slot + row;
            let fresh_k = k
                .narrow(0, row, 1)?
                .narrow(2, plan.pad, plan.len)?
                .contiguous()?;
            let fresh_v = v
                .narrow(0, row, 1)?
                .narrow(2, plan.pad, plan.len)?
                .contiguous()?;
            cache_k
                .narrow(0, slot, 1)?
                .slice_set(&fresh_k, 2, plan.cached)?;
            cache_v
                .narrow(0, slot, 1)?
                .slice_set(&fresh_v, 2, plan.cached)?;
        }
        let all_k = cache_k.narrow(0, first_slot, n)?.narrow(2, 0, keys)?;
        let all_v = cache_v.narrow(0, first_slot, n)?.narrow(2, 0, keys)?;
        // Grouped-query attention without repeating the key/value heads: the query heads
        // of one group are adjacent, so they fold into the rows of one matmul.
        let group = self.n_heads / self.n_kv_heads;
        let q = q.reshape((n, self.n_kv_heads, group * t, d))?;
        let upcast = self.f32_scores && q.dtype() != DType::F32;
        let (q, all_k_t, bias) = if upcast {
            (
                q.to_dtype(DType::F32)?,
                all_k.to_dtype(DType::F32)?.t()?,
                bias.to_dtype(DType::F32)?,
            )
        } else {
            (q, all_k.t()?, bias.clone())
        };
        let scores = (q.matmul(&all_k_t)? * self.scale)?
            .reshape((n, self.n_heads, t, keys))?
            .broadcast_add(&bias)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?
            .to_dtype(all_v.dtype())?
            .reshape((n, self.n_kv_heads, group * t, keys))?;
        let out = probs
            .matmul(&all_v)?
            .reshape((n, self.n_heads, t, d))?
            .transpose(1, 2)?
            .reshape((n, t, self.n_heads * d))?;
        linear(&self.o, &out)
    }
}

/// RoPE on the first `dims` of the last dimension, the rest passed through.
fn apply_rotary(x: &Tensor, cos: &Tensor, sin: &Tensor, dims: usize) -> Result<Tensor> {
    let full = x.dim(D::Minus1)?;
    if dims == full {
        return candle_nn::rotary_emb::rope(x, cos, sin);
    }
    let rotated =
        candle_nn::rotary_emb::rope(&x.narrow(D::Minus1, 0, dims)?.contiguous()?, cos, sin)?;
    Tensor::cat(
        &[&rotated, &x.narrow(D::Minus1, dims, full - dims)?],
        D::Minus1,
    )
}

/// Keys and values of every running sequence: per layer `[slots, kv_heads, capacity,
/// head_dim]`, allocated once and grown by doubling (so a sequence's tokens are copied
/// O(log n) times over its life, not every step), and capped at the model's context.
#[derive(Debug, Default)]
pub struct CausalCache {
    layers: Vec<(Tensor, Tensor)>,
    /// Tokens held per slot.
    lens: Vec<usize>,
    capacity: usize,
}

impl CausalCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// Tokens cached for `slot` (0 for a slot never used).
    pub fn len(&self, slot: usize) -> usize {
        self.lens.get(slot).copied().unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.lens.iter().all(|&l| l == 0)
    }

    /// Slots with storage.
    pub fn slots(&self) -> usize {
        self.layers.first().map_or(0, |(k, _)| k.dims()[0])
    }

    /// Bytes held by the cache tensors.
    pub fn bytes(&self) -> usize {
        self.layers
            .iter()
            .map(|(k, v)| (k.elem_count() + v.elem_count()) * k.dtype().size_in_bytes())
            .sum()
    }

    fn ensure_slots(&mut self, slots: usize) {
        if self.lens.len() < slots {
            self.lens.resize(slots, 0);
        }
    }

    /// Grows the tensors to hold `self.lens.len()` slots of `keys` tokens each.
    fn reserve(&mut self, model: &CausalModel, keys: usize) -> Result<()> {
        let slots = self.lens.len();
        let have_slots = self.slots();
        if !self.layers.is_empty() && have_slots >= slots && self.capacity >= keys {
            return Ok(());
        }
        let new_slots = if have_slots >= slots {
            have_slots
        } else {
            slots.max(have_slots * 2)
        };
        let new_capacity = if self.capacity >= keys {
            self.capacity
        } else {
            keys.max(self.capacity * 2)
                .max(16)
                .min(model.max_context.max(keys))
        };
        let (kv, d) = model.kv_shape();
        let shape = (new_slots, kv, new_capacity, d);
        if self.layers.is_empty() {
            self.layers = (0..model.layers.len())
                .map(|_| {
                    Ok((
                        Tensor::zeros(shape, model.dtype(), model.device())?,
                        Tensor::zeros(shape, model.dtype(), model.device())?,
                    ))
                })
                .collect::<Result<_>>()?;
        } else {
            let grow = |t: &Tensor| -> Result<Tensor> {
                t.pad_with_zeros(2, 0, new_capacity - self.capacity)?
                    .pad_with_zeros(0, 0, new_slots - have_slots)
            };
            self.layers = self
                .layers
                .iter()
                .map(|(k, v)| Ok((grow(k)?, grow(v)?)))
                .collect::<Result<_>>()?;
        }
        self.capacity = new_capacity;
        Ok(())
    }

    /// Keeps the slots where `keep` is true, moved down to slots `0..kept` in order (the
    /// engine's running sequences stay in slot order). Copies only moved slots' tokens.
    pub fn retain(&mut self, keep: &[bool]) -> Result<()> {
        let mut next = 0;
        for (slot, &kept) in keep.iter().enumerate() {
            if !kept {
                continue;
            }
            let len = self.len(slot);
            if slot != next && len > 0 {
                for (k, v) in &self.layers {
                    for t in [k, v] {
                        // A fresh buffer of just these tokens (`copy` would clone the
                        // whole storage, and slice_set refuses a shared one).
                        let src = t.narrow(0, slot, 1)?.narrow(2, 0, len)?.affine(1.0, 0.0)?;
                        t.narrow(0, next, 1)?.slice_set(&src, 2, 0)?;
                    }
                }
            }
            if next < self.lens.len() {
                self.lens[next] = len;
            }
            next += 1;
        }
        let total = self.lens.len().max(keep.len());
        self.lens.resize(total, 0);
        for l in &mut self.lens[next..] {
            *l = 0;
        }
        Ok(())
    }

    /// Forgets every sequence; the storage stays for the next ones.
    pub fn clear(&mut self) {
        self.lens.iter_mut().for_each(|l| *l = 0);
    }
}
