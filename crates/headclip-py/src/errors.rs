//! The package's exceptions. Their messages are the CLI's.

use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyRuntimeError, PyValueError};
use pyo3::prelude::*;

create_exception!(
    headclip,
    HeadclipError,
    PyException,
    "Base class of headclip's errors."
);
create_exception!(
    headclip,
    ModelLoadError,
    HeadclipError,
    "The model could not be built (weights, parameters, device or precision)."
);
create_exception!(
    headclip,
    ImageError,
    HeadclipError,
    "An image could not be read, decoded or scored; `index` and `source` name it."
);
create_exception!(
    headclip,
    EvaluationError,
    HeadclipError,
    "A data set could not be loaded or evaluated."
);

pub fn load_error(message: String) -> PyErr {
    ModelLoadError::new_err(message)
}

pub fn evaluation_error(message: String) -> PyErr {
    EvaluationError::new_err(message)
}

pub fn value_error(message: String) -> PyErr {
    PyValueError::new_err(message)
}

pub fn internal(e: impl std::fmt::Display) -> PyErr {
    PyRuntimeError::new_err(e.to_string())
}

/// An `ImageError` instance (not raised) for item `index` of a list, message
/// `"<source>: <why>"` as the CLI prints it.
pub fn image_error(py: Python<'_>, index: usize, source: &str, why: &str) -> PyResult<Py<PyAny>> {
    let error = ImageError::new_err(format!("{source}: {why}"));
    let value = error.value(py);
    value.setattr("index", index)?;
    value.setattr("source", source)?;
    value.setattr("reason", why)?;
    Ok(value.clone().into_any().unbind())
}

/// A JSON text as Python objects (dicts, lists, numbers, None).
pub fn json_to_python(py: Python<'_>, json: &str) -> PyResult<Py<PyAny>> {
    let loads = py.import("json")?.getattr("loads")?;
    Ok(loads.call1((json,))?.unbind())
}
