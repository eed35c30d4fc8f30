//! What the activation buffer stores: f32, or f16 for scoring at the f16 precision. The kernels
//! that touch it (gather, linear, MMoE mix) are compiled after one of two WGSL preludes,
//! `shaders/act_f32.wgsl` or `shaders/act_f16.wgsl`, which give the element type `Act` and its
//! conversions; the rest of their source is the same.
//!
//! f16 storage halves the bytes of every activation read and written, the dominant traffic of
//! the f16 forward (docs/performance.md). Values are rounded to f16 ties-to-even as they are
//! stored; probabilities stay f32, in a buffer of their own. Training keeps f32 storage at both
//! precisions: its backward reads the stored activations, and f32 keeps the gradients' error to
//! that of the f16 products alone.

use crate::gpu::PRELUDE;
use crate::precision::Precision;

/// The f32 prelude.
pub const F32_PRELUDE: &str = include_str!("../../shaders/act_f32.wgsl");
/// The f16 prelude (after `enable f16;` and with `half.wgsl` in the same source).
pub const F16_PRELUDE: &str = include_str!("../../shaders/act_f16.wgsl");
/// f16 rounding, ties to even, shared by the f16 kernels.
pub const HALF: &str = include_str!("../../shaders/half.wgsl");

/// The element type of an activation buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ActStorage {
    /// 4 bytes an activation: training, and scoring at f32 or without f16 shaders.
    #[default]
    F32,
    /// 2 bytes an activation: scoring at f16 on a device with f16 shaders.
    F16,
}

impl ActStorage {
    /// What a scoring engine at `precision` stores: f16 at the f16 precision where the device
    /// has f16 shaders, else f32.
    pub fn for_scoring(precision: Precision, device_has_f16: bool) -> Self {
        match precision {
            Precision::F16 if device_has_f16 => ActStorage::F16,
            _ => ActStorage::F32,
        }
    }

    /// Bytes of one slot.
    pub fn bytes(self) -> u64 {
        match self {
            ActStorage::F32 => 4,
            ActStorage::F16 => 2,
        }
    }

    /// `f32` or `f16`.
    pub fn name(self) -> &'static str {
        match self {
            ActStorage::F32 => "f32",
            ActStorage::F16 => "f16",
        }
    }

    /// The directives this storage needs at the very start of a source.
    pub fn directives(self) -> &'static str {
        match self {
            ActStorage::F32 => "",
            ActStorage::F16 => "enable f16;\n",
        }
    }

    /// The prelude: `Act`, `act_in` and `act_out`.
    pub fn prelude(self) -> &'static str {
        match self {
            ActStorage::F32 => F32_PRELUDE,
            ActStorage::F16 => F16_PRELUDE,
        }
    }

    /// A kernel's complete source over this storage: the directives, the kernels' shared
    /// prelude, this storage's, f16 rounding, then `body`.
    pub fn source(self, body: &str) -> String {
        format!(
            "{}{PRELUDE}{}{HALF}{body}",
            self.directives(),
            self.prelude()
        )
    }

    /// The value a stored activation reads back as (the host's mirror of `act_out`).
    pub fn round(self, x: f32) -> f32 {
        match self {
            ActStorage::F32 => x,
            ActStorage::F16 => half::f16::from_f32(x).to_f32(),
        }
    }
}

/// A kernel's compiled form for each storage: the f32 one built with the kernel, the f16 one on
/// first use (at an engine's start-up, never per batch), so devices and engines that never
/// store f16 never compile it.
pub struct ByStorage<T> {
    f32: T,
    f16: std::sync::OnceLock<T>,
}

impl<T> ByStorage<T> {
    /// `f32` for f32 storage; the f16 form is built on first use.
    pub fn new(f32: T) -> Self {
        Self {
            f32,
            f16: std::sync::OnceLock::new(),
        }
    }

    /// The form for `storage`, built by `build` if it is the first use.
    pub fn get_or_build(&self, storage: ActStorage, build: impl FnOnce() -> T) -> &T {
        match storage {
            ActStorage::F32 => &self.f32,
            ActStorage::F16 => self.f16.get_or_init(build),
        }
    }

    /// The form for `storage`, which must have been built (binding builds it: a dispatch
    /// always follows a bind group).
    pub fn built(&self, storage: ActStorage) -> &T {
        match storage {
            ActStorage::F32 => &self.f32,
            ActStorage::F16 => self
                .f16
                .get()
                .expect("the f16-storage kernel is built when its bind group is"),
        }
    }
}
