//! # headclip-data
//!
//! Everything between files on disk and the model's input, and back to pictures, without
//! libtorch: so that it builds, tests and fuzzes in seconds, and the Python package and any other
//! front end parse the same data-set specs and decode images the same way.
//!
//! - [`images`]: format sniffing, decoding (PIL-exact `convert("RGB")`, JPEG with libjpeg-turbo's
//!   arithmetic), PIL-exact resizing, CLIP normalisation, masks, and [`images::Preprocessor`],
//!   the one decode → pre-process stage every entry point uses.
//! - [`datasets`]: the data-set layouts (MVTec AD, VisA, folders, CSV manifests, yes/no) and
//!   the typed `KIND:ROOT[,key=value…]` spec that names one.
//! - [`viz`]: heat-map overlays.
//!
//! This crate must not link libtorch, print, or parse command lines: it returns values and
//! typed errors that name the file and the problem.

pub mod datasets;
pub mod images;
pub mod viz;
