//! What the linear products store and multiply in.

/// What the linear products store and multiply in. Chosen by the user, as TensorRT's FP16 mode
/// is; f32 is the default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum Precision {
    /// f32 weights and inputs, f32 sums (the SIMT kernels).
    #[default]
    F32,
    /// f16 weights and f16-rounded inputs, f32 sums; on tensor cores (cooperative matrices)
    /// where the device has them, else on the SIMT kernels. Bias, activations and
    /// probabilities stay f32.
    F16,
}

impl Precision {
    /// `f32` or `f16`, as [`std::str::FromStr`] reads it.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(Precision::F32),
            "f16" => Ok(Precision::F16),
            _ => Err(format!("unknown precision '{s}': expected f32 or f16")),
        }
    }
}
