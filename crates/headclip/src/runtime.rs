//! Process-wide preparation of libtorch that the engine's guarantees rely on.
//!
//! Bit-identical training runs on the CPU (same seed, same thread count) need every kernel to
//! give the same bits in every process. libtorch computes `log` and a few other elementwise
//! functions with MKL's vector math library, which picks its CPU-specific code lazily, on the
//! first call. When that first call comes from two OpenMP threads at once, one of them can run
//! before the choice is made and give results a few ulps off: about one process in ten computed
//! the first batch's focal loss differently (seen as `0.2088812292` against `0.2088820040` on the
//! same inputs, and only in the first call of the process). Calling each of these functions once
//! on a tiny tensor, which runs on one thread, makes the choice before any parallel call.

use std::sync::Once;

use tch::{Kind, Tensor};

/// Makes MKL's lazy choices once per process, before any multithreaded call. Cheap (microseconds)
/// and idempotent; [`crate::clip::Clip`] calls it when it is built.
pub fn prepare() {
    static PREPARED: Once = Once::new();
    PREPARED.call_once(|| {
        let _guard = tch::no_grad_guard();
        for kind in [Kind::Float, Kind::Double] {
            let x = Tensor::from_slice(&[0.25f32, 0.5]).to_kind(kind);
            // The functions libtorch hands to MKL's vector math library on the CPU.
            let _ = (
                x.log(),
                x.log2(),
                x.log10(),
                x.log1p(),
                x.exp(),
                x.expm1(),
                x.erf(),
                x.erfc(),
                x.erfinv(),
                x.tanh(),
                x.sin(),
                x.cos(),
                x.tan(),
            );
            let _ = (
                x.asin(),
                x.acos(),
                x.atan(),
                x.sinh(),
                x.cosh(),
                x.sqrt(),
                x.rsqrt(),
            );
        }
    });
}

/// Loads libtorch's CUDA half, a separate library that the CPU build does not need at start-up;
/// it registers its kernels when loaded, so it is loaded only when CUDA is asked for.
pub fn load_cuda_backend() {
    // The libtorch this crate was built against first, then the loader's search path
    // (LD_LIBRARY_PATH), for a binary moved to a machine whose libtorch lives elsewhere.
    let built = format!("{}/libtorch_cuda.so", env!("HEADCLIP_LIBTORCH_LIB"));
    for candidate in [built.as_str(), "libtorch_cuda.so"] {
        let Ok(path) = std::ffi::CString::new(candidate) else {
            continue;
        };
        // SAFETY: dlopen with a valid C string; the handle is intentionally never closed.
        let handle = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
        if !handle.is_null() {
            return;
        }
        tracing::debug!("could not load {candidate}");
    }
}
