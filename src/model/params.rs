//! A model family's parameters, declared once. Each family has one walk over its parameters
//! (`llama::walk!`, `gpt2::walk!`) that hands every tensor and linear layer, with its HF name
//! and what it must look like, to a visitor; loading, listing, LoRA targets and random
//! initialisation are visitors here, so no family spells a parameter name twice.
use super::layers::Linear;
use super::weights::Weights;
use anyhow::Result;
use std::collections::BTreeMap;
use tch::{Device, Kind, Tensor};

/// How a random model initialises a parameter.
#[derive(Debug, Clone, Copy)]
pub enum Init {
    /// N(0, 0.02²), as HF's `initializer_range` default.
    Normal,
    Ones,
    Zeros,
}

/// A plain tensor (an embedding, a norm's weight or bias), in HF layout.
pub struct TensorSpec {
    pub shape: Vec<i64>,
    pub init: Init,
    /// A checkpoint may leave it out (an untied LM head that falls back to the embedding).
    pub optional: bool,
}

impl TensorSpec {
    pub fn new(shape: &[i64], init: Init) -> Self {
        TensorSpec { shape: shape.to_vec(), init, optional: false }
    }
}

/// Whether a linear layer has a bias in a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Bias {
    /// Taken when present (Llama's q/k/v without `attention_bias`: Qwen2 has them, Llama not).
    Optional,
    Required,
}

/// A linear layer `y = x Wᵀ + b` with `W [out, in]` in memory. `conv1d`: HF stores the weight
/// as `[in, out]` (GPT-2's `Conv1D`), so it is transposed on the way in and out.
pub struct LinearSpec {
    pub out: i64,
    pub inp: i64,
    pub bias: Bias,
    pub conv1d: bool,
}

impl LinearSpec {
    /// The weight's shape as the checkpoint stores it.
    fn hf_shape(&self) -> [i64; 2] {
        if self.conv1d {
            [self.inp, self.out]
        } else {
            [self.out, self.inp]
        }
    }
}

/// Receives every parameter of an existing model (read-only).
pub trait Visit {
    fn tensor(&mut self, name: &str, t: &Tensor, spec: TensorSpec) -> Result<()>;
    /// `name` is the module's HF name (the weight is `{name}.weight`).
    fn linear(&mut self, name: &str, l: &Linear, spec: LinearSpec) -> Result<()>;
}

/// Receives every parameter of a model to change it; `'a` lets a visitor keep the references.
pub trait VisitMut<'a> {
    fn tensor(&mut self, name: &str, t: &'a mut Tensor, spec: TensorSpec) -> Result<()>;
    fn linear(&mut self, name: &str, l: &'a mut Linear, spec: LinearSpec) -> Result<()>;
}

/// Fills a skeleton (placeholder tensors) from HF-named weights, checking every shape.
pub struct Load<'w>(pub &'w mut Weights);

impl<'a> VisitMut<'a> for Load<'_> {
    fn tensor(&mut self, name: &str, t: &'a mut Tensor, spec: TensorSpec) -> Result<()> {
        let shape: Vec<usize> = spec.shape.iter().map(|&d| d as usize).collect();
        if spec.optional {
            if let Some(x) = self.0.take_opt(name, &shape)? {
                *t = x;
            }
        } else {
            *t = self.0.take(name, &shape)?;
        }
        Ok(())
    }

    fn linear(&mut self, name: &str, l: &'a mut Linear, spec: LinearSpec) -> Result<()> {
        let shape = spec.hf_shape().map(|d| d as usize);
        let w = self.0.take(&format!("{name}.weight"), &shape)?;
        l.weight = if spec.conv1d { w.f_t_copy()? } else { w };
        let bias = format!("{name}.bias");
        l.bias = match spec.bias {
            Bias::Required => Some(self.0.take(&bias, &[spec.out as usize])?),
            Bias::Optional => self.0.take_opt(&bias, &[spec.out as usize])?,
        };
        Ok(())
    }
}

/// Every parameter with its name. `hf`: as a checkpoint stores it (LoRA merged into the
/// weights it adapts, `Conv1D` weights transposed back); else the tensors the model itself
/// holds, which an optimizer updates.
pub struct List {
    pub hf: bool,
    pub out: Vec<(String, Tensor)>,
}

impl Visit for List {
    fn tensor(&mut self, name: &str, t: &Tensor, _: TensorSpec) -> Result<()> {
        self.out.push((name.to_string(), t.shallow_clone()));
        Ok(())
    }

    fn linear(&mut self, name: &str, l: &Linear, spec: LinearSpec) -> Result<()> {
        let w = match (self.hf, spec.conv1d) {
            (false, _) => l.weight.shallow_clone(),
            (true, false) => l.effective_weight()?,
            (true, true) => l.effective_weight()?.f_t_copy()?,
        };
        self.out.push((format!("{name}.weight"), w));
        if let Some(b) = &l.bias {
            self.out.push((format!("{name}.bias"), b.shallow_clone()));
        }
        Ok(())
    }
}

/// Every linear layer with its HF module name (LoRA targets match its last component).
#[derive(Default)]
pub struct Linears<'a>(pub Vec<(String, &'a mut Linear)>);

impl<'a> VisitMut<'a> for Linears<'a> {
    fn tensor(&mut self, _: &str, _: &'a mut Tensor, _: TensorSpec) -> Result<()> {
        Ok(())
    }

    fn linear(&mut self, name: &str, l: &'a mut Linear, _: LinearSpec) -> Result<()> {
        self.0.push((name.to_string(), l));
        Ok(())
    }
}

/// HF-named random weights in f32 on the CPU, drawn in walk order from torch's generator (the
/// caller seeds it); optional biases are left out.
#[derive(Default)]
pub struct Random(pub BTreeMap<String, Tensor>);

impl Random {
    fn draw(shape: &[i64], init: Init) -> Result<Tensor> {
        let opts = (Kind::Float, Device::Cpu);
        Ok(match init {
            Init::Normal => Tensor::f_randn(shape, opts)?.f_mul_scalar(0.02)?,
            Init::Ones => Tensor::f_ones(shape, opts)?,
            Init::Zeros => Tensor::f_zeros(shape, opts)?,
        })
    }
}

impl<'a> VisitMut<'a> for Random {
    fn tensor(&mut self, name: &str, _: &'a mut Tensor, spec: TensorSpec) -> Result<()> {
        if !spec.optional {
            self.0.insert(name.to_string(), Self::draw(&spec.shape, spec.init)?);
        }
        Ok(())
    }

    fn linear(&mut self, name: &str, _: &'a mut Linear, spec: LinearSpec) -> Result<()> {
        self.0.insert(format!("{name}.weight"), Self::draw(&spec.hf_shape(), Init::Normal)?);
        if spec.bias == Bias::Required {
            self.0.insert(format!("{name}.bias"), Self::draw(&[spec.out], Init::Zeros)?);
        }
        Ok(())
    }
}

/// A linear layer before loading: placeholder weight, no bias.
pub fn placeholder_linear() -> Linear {
    Linear::new(Tensor::new(), None)
}
