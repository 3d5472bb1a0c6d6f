//! What `predict` accepts, turned into the library's image sources: a path, encoded bytes, or
//! a NumPy `uint8` array of decoded pixels (H×W grey, H×W×C with C in 1, 3, 4).

use std::path::PathBuf;

use headclip_data::images::{ImageSource, PreparedImage, Preprocessor, RgbImage};
use numpy::ndarray::{ArrayViewD, Axis};
use numpy::{PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyMemoryView};

/// One item of a `predict` call.
pub enum Input {
    Path(PathBuf),
    Bytes(Vec<u8>),
    Pixels(RgbImage),
    /// An array of the right type whose shape is no image: reported in its own result.
    BadArray(String),
}

impl<'py> FromPyObject<'_, 'py> for Input {
    type Error = PyErr;

    fn extract(ob: Borrowed<'_, 'py, PyAny>) -> PyResult<Self> {
        if let Ok(bytes) = ob.cast::<PyBytes>() {
            return Ok(Input::Bytes(bytes.as_bytes().to_vec()));
        }
        if let Ok(bytes) = ob.cast::<PyByteArray>() {
            return Ok(Input::Bytes(bytes.to_vec()));
        }
        if ob.cast::<PyMemoryView>().is_ok() {
            return Ok(Input::Bytes(ob.call_method0("tobytes")?.extract()?));
        }
        if let Ok(array) = ob.extract::<PyReadonlyArrayDyn<'py, u8>>() {
            return Ok(match pixels_from_array(array.as_array()) {
                Ok(image) => Input::Pixels(image),
                Err(message) => Input::BadArray(message),
            });
        }
        if let Ok(array) = ob.cast::<numpy::PyUntypedArray>() {
            return Err(PyTypeError::new_err(format!(
                "image arrays must be uint8, not {}",
                array.dtype()
            )));
        }
        if let Ok(path) = ob.extract::<PathBuf>() {
            return Ok(Input::Path(path));
        }
        Err(PyTypeError::new_err(format!(
            "cannot score a {}: give a path, bytes, a uint8 NumPy array, a PIL image, or a list of these",
            ob.get_type().name()?
        )))
    }
}

impl Input {
    /// How errors name the item: its path, or what it was.
    pub fn describe(&self) -> String {
        match self {
            Input::Path(path) => path.display().to_string(),
            Input::Bytes(bytes) => format!("<{} bytes>", bytes.len()),
            Input::Pixels(image) => format!("<{}×{} array>", image.width, image.height),
            Input::BadArray(_) => "<array>".into(),
        }
    }

    /// Decodes and pre-processes the item, as `headclip predict` does for files.
    pub fn prepare(&self, preprocessor: &Preprocessor) -> Result<PreparedImage, String> {
        let prepared = match self {
            Input::Path(path) => {
                let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
                preprocessor.prepare_encoded(&bytes, false)
            }
            Input::Bytes(bytes) => preprocessor.prepare_encoded(bytes, false),
            Input::Pixels(image) => {
                preprocessor.prepare(ImageSource::Decoded(image.clone()), false)
            }
            Input::BadArray(message) => return Err(message.clone()),
        };
        prepared.map_err(|e| e.to_string())
    }
}

/// RGB pixels from an H×W or H×W×C array: grey is replicated, a fourth channel (alpha) is
/// dropped without compositing, as the decoder does for files.
fn pixels_from_array(array: ArrayViewD<'_, u8>) -> Result<RgbImage, String> {
    let shape = array.shape().to_vec();
    let (height, width, channels) = match shape[..] {
        [h, w] => (h, w, 1),
        [h, w, c] if matches!(c, 1 | 3 | 4) => (h, w, c),
        _ => {
            return Err(format!(
                "an image array is H×W or H×W×C with C in 1, 3, 4; this one has shape {shape:?}"
            ))
        }
    };
    let (Ok(w), Ok(h)) = (u32::try_from(width), u32::try_from(height)) else {
        return Err(format!("{width}×{height} is too large"));
    };
    let array = if channels == 1 && shape.len() == 2 {
        array.insert_axis(Axis(2))
    } else {
        array
    };
    let mut pixels = Vec::with_capacity(width * height * 3);
    for pixel in array.lanes(Axis(2)) {
        match channels {
            1 => pixels.extend([pixel[0]; 3]),
            _ => pixels.extend([pixel[0], pixel[1], pixel[2]]),
        }
    }
    RgbImage::new(w, h, pixels).map_err(|e| e.to_string())
}
