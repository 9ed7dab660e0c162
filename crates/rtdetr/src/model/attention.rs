//! The transformer blocks the encoder and decoder layers share: multi-head self-attention
//! with its output projection, and the feed-forward network, each with the residual add
//! fused into its last product.

use candle_core::Tensor;

use crate::error::Result;
use crate::io::config::Activation;
use crate::io::weights::Weights;
use crate::kernels::tensor_ops::multi_head_attention;
use crate::model::layers::Linear;

/// `q_proj`, `k_proj`, `v_proj`, `o_proj` of an attention module under `key`.
pub struct SelfAttention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    heads: usize,
}

impl SelfAttention {
    pub fn load(w: &Weights, key: &str, dim: usize, heads: usize) -> Result<Self> {
        Ok(Self {
            q: Linear::load(w, &format!("{key}.q_proj"), dim, dim)?,
            k: Linear::load(w, &format!("{key}.k_proj"), dim, dim)?,
            v: Linear::load(w, &format!("{key}.v_proj"), dim, dim)?,
            o: Linear::load(w, &format!("{key}.o_proj"), dim, dim)?,
            heads,
        })
    }

    /// `o_proj(attention(q_proj(qk), k_proj(qk), v_proj(value))) + residual`, all (B, L, D).
    pub fn forward(&self, qk: &Tensor, value: &Tensor, residual: &Tensor) -> Result<Tensor> {
        let attn =
            multi_head_attention(&self.q.forward(qk)?, &self.k.forward(qk)?, &self.v.forward(value)?, self.heads)?;
        self.o.forward_with(&attn, Some(residual), Activation::Identity)
    }
}

/// `mlp.fc1` → activation → `mlp.fc2`, plus the input.
pub struct FeedForward {
    fc1: Linear,
    fc2: Linear,
    act: Activation,
}

impl FeedForward {
    pub fn load(w: &Weights, key: &str, dim: usize, hidden: usize, act: Activation) -> Result<Self> {
        Self::load_named(w, &format!("{key}.fc1"), &format!("{key}.fc2"), dim, hidden, act)
    }

    /// The two linear layers at their own keys (D-FINE: `mlp.layers.0`, `mlp.layers.1`).
    pub fn load_named(w: &Weights, fc1: &str, fc2: &str, dim: usize, hidden: usize, act: Activation) -> Result<Self> {
        Ok(Self { fc1: Linear::load(w, fc1, dim, hidden)?, fc2: Linear::load(w, fc2, hidden, dim)?, act })
    }

    /// `fc2(act(fc1(x))) + x`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.fc2.forward_with(&self.fc1.forward_with(x, None, self.act)?, Some(x), Activation::Identity)
    }
}
