//! Character-level Transformer encoder for next-character prediction.
//!
//! Token embedding + learned positional embedding → burn's [`TransformerEncoder`] under a causal
//! mask → linear head to the vocabulary. The paper gives no sizes; the defaults here are small
//! ones chosen so that a CPU run of 250 steps takes seconds, and mirror
//! `torch.nn.TransformerEncoderLayer` (post-norm, ReLU feed-forward, layer-norm ε 1e-5) except
//! for dropout, which is 0: dropout draws from a random generator that is neither parameters nor
//! optimizer state, so a rollback could not restore it.

use burn::nn::activation::ActivationConfig;
use burn::nn::attention::generate_autoregressive_mask;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::transformer::{
    TransformerEncoder, TransformerEncoderConfig, TransformerEncoderInput,
};
use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig};
use burn::prelude::*;

use crate::LossModel;
use crate::batch::TextBatch;
use crate::error::ModelConfigError;

/// Configuration of [`CharTransformer`]. Only `vocab_size` has no default.
#[derive(Config, Debug)]
pub struct CharTransformerConfig {
    /// Number of distinct characters (the corpus's vocabulary size).
    pub vocab_size: usize,
    /// Longest sequence the positional embedding covers; the paper uses 64.
    #[config(default = 64)]
    pub seq_len: usize,
    /// Width of embeddings and of the encoder. Default 64.
    #[config(default = 64)]
    pub d_model: usize,
    /// Attention heads (must divide `d_model`). Default 4.
    #[config(default = 4)]
    pub n_heads: usize,
    /// Encoder layers. Default 2.
    #[config(default = 2)]
    pub n_layers: usize,
    /// Hidden width of the feed-forward sub-layer. Default 256 (4 × `d_model`).
    #[config(default = 256)]
    pub d_ff: usize,
    /// Dropout probability. Default 0, so that a training step is a deterministic function of
    /// parameters, optimizer state and batch.
    #[config(default = 0.0)]
    pub dropout: f64,
    /// Pre-norm (`true`) or post-norm (`false`, PyTorch's default) encoder layers.
    #[config(default = false)]
    pub norm_first: bool,
}

impl CharTransformerConfig {
    /// Checks sizes, head divisibility and the dropout range.
    ///
    /// # Errors
    /// [`ModelConfigError::ZeroSize`], [`ModelConfigError::HeadsDoNotDivide`] or
    /// [`ModelConfigError::BadDropout`].
    pub fn validate(&self) -> Result<(), ModelConfigError> {
        for (what, value) in [
            ("vocab_size", self.vocab_size),
            ("seq_len", self.seq_len),
            ("d_model", self.d_model),
            ("n_heads", self.n_heads),
            ("n_layers", self.n_layers),
            ("d_ff", self.d_ff),
        ] {
            if value == 0 {
                return Err(ModelConfigError::ZeroSize { what });
            }
        }
        if !self.d_model.is_multiple_of(self.n_heads) {
            return Err(ModelConfigError::HeadsDoNotDivide {
                d_model: self.d_model,
                n_heads: self.n_heads,
            });
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(ModelConfigError::BadDropout {
                dropout: self.dropout,
            });
        }
        Ok(())
    }

    /// Builds the model on `device` (use `device.autodiff()` for training); initialization is
    /// drawn from the device's random generator, so call `device.seed(s)` first to fix it.
    ///
    /// # Errors
    /// See [`CharTransformerConfig::validate`].
    pub fn init(&self, device: &Device) -> Result<CharTransformer, ModelConfigError> {
        self.validate()?;
        let encoder =
            TransformerEncoderConfig::new(self.d_model, self.d_ff, self.n_heads, self.n_layers)
                .with_dropout(self.dropout)
                .with_norm_first(self.norm_first)
                .with_activation(ActivationConfig::Relu)
                .init(device);
        Ok(CharTransformer {
            token_embedding: EmbeddingConfig::new(self.vocab_size, self.d_model).init(device),
            position_embedding: EmbeddingConfig::new(self.seq_len, self.d_model).init(device),
            encoder,
            head: LinearConfig::new(self.d_model, self.vocab_size).init(device),
            seq_len: self.seq_len,
        })
    }
}

/// A causal character-level Transformer; see [`CharTransformerConfig`].
#[derive(Module, Debug)]
pub struct CharTransformer {
    /// Token embedding, `[vocab_size, d_model]`.
    pub token_embedding: Embedding,
    /// Learned positional embedding, `[seq_len, d_model]`.
    pub position_embedding: Embedding,
    /// The encoder stack.
    pub encoder: TransformerEncoder,
    /// Linear head to vocabulary logits.
    pub head: Linear,
    /// Longest sequence the positional embedding covers.
    pub seq_len: usize,
}

impl CharTransformer {
    /// Next-character logits `[batch, seq, vocab_size]` for token ids `[batch, seq]`.
    ///
    /// Position `i` attends to positions `0..=i` only (causal mask), so the logits at `i` are a
    /// prediction of token `i + 1` from its prefix.
    ///
    /// # Panics
    /// If `seq` exceeds the configured `seq_len` (batches built by this crate never do).
    pub fn forward(&self, tokens: Tensor<2, Int>) -> Tensor<3> {
        let [batch, seq] = tokens.dims();
        assert!(
            seq <= self.seq_len,
            "sequence of {seq} tokens exceeds the model's seq_len {}",
            self.seq_len
        );
        let device = tokens.device();
        let positions = Tensor::<1, Int>::arange(0..seq as i64, &device)
            .reshape([1, seq])
            .repeat_dim(0, batch);
        let x = self.token_embedding.forward(tokens) + self.position_embedding.forward(positions);
        let mask = generate_autoregressive_mask(batch, seq, &device);
        let x = self
            .encoder
            .forward(TransformerEncoderInput::new(x).mask_attn(mask));
        self.head.forward(x)
    }

    /// Mean cross-entropy over every position of every sequence, a one-element tensor.
    pub fn loss(&self, batch: &TextBatch) -> Tensor<1> {
        let logits = self.forward(batch.inputs.clone());
        let [b, s, v] = logits.dims();
        CrossEntropyLossConfig::new()
            .init(&logits.device())
            .forward(
                logits.reshape([b * s, v]),
                batch.targets.clone().reshape([b * s]),
            )
    }
}

impl LossModel for CharTransformer {
    type Batch = TextBatch;

    fn loss(&self, batch: &TextBatch) -> Tensor<1> {
        CharTransformer::loss(self, batch)
    }
}
