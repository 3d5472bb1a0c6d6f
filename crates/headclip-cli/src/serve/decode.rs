//! Decoding on the blocking pool, within a budget and only for requests still waiting.
//!
//! Every image is admitted against `--decode-budget-pixels` from its header alone, before any
//! work: over the budget it is refused at once (503) instead of queuing work that the pool
//! cannot finish within the request's timeout. Its pixels stay reserved while the pool works on
//! it (decoding, pre-processing, drawing the overlay) and while its decoded original waits for
//! the overlay, so the budget bounds both the pool's backlog and the memory of decoded images.
//! A request that times out or whose client leaves cancels its decode: not started if it has
//! not begun, stopped before pre-processing if it has.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use headclip_data::images::{
    decode_cost, decode_rgb, DataError, DecodeLimits, ImageFormat, ImageSource, PreparedImage,
    Preprocessor, RgbImage,
};

/// What decoding an image is expected to cost, from its header.
#[derive(Debug, Clone, Copy)]
pub struct Estimate {
    pub format: ImageFormat,
    /// Budget units: pixels.
    pub cost: u64,
}

/// Reads the header (and a JPEG's markers) and prices the decode, refusing images over any of
/// `limits` (pixels, scans, block visits) before any work. The budget counts pixels, what a
/// decoded image holds; the work per pixel is bounded by `limits`.
pub fn estimate(bytes: &[u8], limits: &DecodeLimits) -> Result<Estimate, DataError> {
    let cost = decode_cost(bytes, limits)?;
    Ok(Estimate {
        format: cost.format,
        cost: u64::from(cost.width) * u64::from(cost.height),
    })
}

/// The pixels that admitted images may hold at once.
pub struct Budget {
    total: u64,
    used: AtomicU64,
}

/// Pixels reserved for one image; given back when dropped.
pub struct Reservation {
    budget: Arc<Budget>,
    cost: u64,
}

impl Budget {
    pub fn new(total: u64) -> Arc<Self> {
        Arc::new(Self {
            total,
            used: AtomicU64::new(0),
        })
    }

    /// Reserves `cost`, or `None` when that would pass the total.
    pub fn try_reserve(self: &Arc<Self>, cost: u64) -> Option<Reservation> {
        self.used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                used.checked_add(cost).filter(|&after| after <= self.total)
            })
            .ok()?;
        Some(Reservation {
            budget: self.clone(),
            cost,
        })
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.cost, Ordering::SeqCst);
    }
}

/// Set once the request an image belongs to is gone (answered, timed out, client left).
#[derive(Clone, Default)]
pub struct Cancel(Arc<AtomicBool>);

/// Cancels when dropped: held by the request's future, so that dropping the future (timeout,
/// disconnect) reaches the blocking pool.
pub struct CancelOnDrop(Cancel);

impl Cancel {
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    pub fn on_drop(&self) -> CancelOnDrop {
        CancelOnDrop(self.clone())
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0 .0.store(true, Ordering::SeqCst);
    }
}

/// Why [`prepare_unless_cancelled`] gave no image.
pub enum NotPrepared {
    /// The request went away before or during the decode.
    Cancelled,
    Failed(DataError),
}

/// Decodes and pre-processes, unless the request has gone: checked before decoding and again
/// between decoding and pre-processing (the decoder itself cannot be interrupted).
pub fn prepare_unless_cancelled(
    preprocessor: &Preprocessor,
    bytes: &[u8],
    format: Option<ImageFormat>,
    keep_original: bool,
    cancel: &Cancel,
) -> Result<PreparedImage, NotPrepared> {
    if cancel.is_cancelled() {
        return Err(NotPrepared::Cancelled);
    }
    let image = decode_rgb(bytes, &preprocessor.limits).map_err(NotPrepared::Failed)?;
    if cancel.is_cancelled() {
        return Err(NotPrepared::Cancelled);
    }
    let mut prepared = preprocessor
        .prepare(ImageSource::Decoded(image), keep_original)
        .map_err(NotPrepared::Failed)?;
    prepared.format = format;
    Ok(prepared)
}

/// Makes the RGB image of pixels already decoded and pre-processes it, unless the request has
/// gone.
pub fn prepare_pixels_unless_cancelled(
    preprocessor: &Preprocessor,
    make_image: impl FnOnce() -> RgbImage,
    keep_original: bool,
    cancel: &Cancel,
) -> Result<PreparedImage, NotPrepared> {
    if cancel.is_cancelled() {
        return Err(NotPrepared::Cancelled);
    }
    preprocessor
        .prepare(ImageSource::Decoded(make_image()), keep_original)
        .map_err(NotPrepared::Failed)
}
