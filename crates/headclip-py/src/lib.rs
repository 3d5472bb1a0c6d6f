//! `headclip._headclip`: the library's inspection pipeline ([`headclip::detector::Detector`])
//! for Python. Decoding, pre-processing and scoring are the library's; this module only turns
//! Python objects into [`ImageSource`]s and results into Python objects. The package's
//! `__init__.py` loads libtorch before importing this module and wraps it (PIL images, the
//! single-item form of `predict`).

mod errors;
mod evaluate;
mod inputs;
mod prediction;

use std::path::PathBuf;
use std::sync::Mutex;

use headclip::detector::{parse_device, Detector, ModelSpec, Precision, References, DEFAULT_BETA};
use headclip_data::images::{DecodeLimits, PreparedImage, Preprocessor};
use pyo3::prelude::*;

use errors::{image_error, load_error, HeadclipError, ImageError, ModelLoadError};
use inputs::Input;
use prediction::{MapSize, Prediction};

/// A loaded HeadCLIP model with its pre-processing.
///
/// Scoring takes a lock (libtorch's tensors are not shared between threads); decoding and
/// pre-processing run outside it, so several Python threads overlap their decoding with each
/// other's scoring. The GIL is released while either runs.
#[pyclass(module = "headclip._headclip", name = "Detector")]
struct PyDetector {
    detector: Mutex<Detector>,
    preprocessor: Preprocessor,
}

#[pymethods]
impl PyDetector {
    #[new]
    // One argument per keyword of Python's constructor.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (weights, params=None, image_size=None, device="cpu", precision="fp32", clip_config=None, max_pixels=None, references=None, class_name=None, beta=DEFAULT_BETA))]
    fn new(
        py: Python<'_>,
        weights: PathBuf,
        params: Option<PathBuf>,
        image_size: Option<i64>,
        device: &str,
        precision: &str,
        clip_config: Option<PathBuf>,
        max_pixels: Option<u64>,
        references: Option<PathBuf>,
        class_name: Option<String>,
        beta: f64,
    ) -> PyResult<Self> {
        let mut spec = model_spec(weights, params, image_size, device, precision, clip_config)?;
        if let Some(path) = references {
            if !path.exists() {
                return Err(load_error(format!(
                    "references {}: no such folder or bank file",
                    path.display()
                )));
            }
            spec.references = Some(References::from_path(path));
        }
        spec.class_name = class_name;
        spec.beta = beta;
        spec.check().map_err(load_error)?;
        let limits = DecodeLimits {
            max_pixels: max_pixels.unwrap_or(DecodeLimits::default().max_pixels),
            ..DecodeLimits::default()
        };
        let detector = py
            .detach(|| Detector::load(&spec))
            .map_err(|e| load_error(e.to_string()))?
            .with_limits(limits);
        Ok(Self {
            preprocessor: *detector.preprocessor(),
            detector: Mutex::new(detector),
        })
    }

    /// Scores `items` in order; each result is a `Prediction` or, for an item that cannot be
    /// read or decoded (or that the model could not score), an `ImageError` instance.
    #[pyo3(signature = (items, threshold=None, map_size="model", batch_size=1))]
    fn predict_many(
        &self,
        py: Python<'_>,
        items: Vec<Input>,
        threshold: Option<f32>,
        map_size: &str,
        batch_size: usize,
    ) -> PyResult<Vec<Py<PyAny>>> {
        let map_size: MapSize = map_size.parse().map_err(errors::value_error)?;
        if batch_size == 0 {
            return Err(errors::value_error("batch_size must be at least 1".into()));
        }
        if let Some(t) = threshold {
            if !(0.0..=1.0).contains(&t) {
                return Err(errors::value_error(format!(
                    "threshold must be a number in [0, 1], not {t}"
                )));
            }
        }
        let mut results = Vec::with_capacity(items.len());
        for (chunk_index, chunk) in items.chunks(batch_size).enumerate() {
            let scored = py.detach(|| self.score_chunk(chunk));
            for (offset, (item, outcome)) in chunk.iter().zip(scored).enumerate() {
                let index = chunk_index * batch_size + offset;
                let result = match outcome {
                    Ok(d) => Prediction::new(py, d, threshold, map_size)?.into_pyobject_any(py)?,
                    Err(message) => image_error(py, index, &item.describe(), &message)?,
                };
                results.push(result);
            }
        }
        Ok(results)
    }

    /// The side S of the anomaly maps.
    #[getter]
    fn image_size(&self) -> u32 {
        self.preprocessor.side
    }

    /// What the model is: architecture, mode, side, device, precision.
    #[getter]
    fn info(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let info = self.lock().info();
        errors::json_to_python(py, &serde_json::to_string(&info).map_err(errors::internal)?)
    }

    /// Evaluates the data sets (the CLI's `--data` strings) with the published protocol and
    /// returns `headclip test --json`'s report, as a JSON string.
    #[pyo3(signature = (data_specs, batch_size=1, decode_threads=1, allow_missing_masks=false))]
    fn evaluate_json(
        &self,
        py: Python<'_>,
        data_specs: Vec<String>,
        batch_size: usize,
        decode_threads: usize,
        allow_missing_masks: bool,
    ) -> PyResult<String> {
        let request = evaluate::Request {
            specs: data_specs,
            batch_size,
            decode_threads,
            allow_missing_masks,
        };
        py.detach(|| evaluate::run(&self.lock(), &request))
            .map_err(errors::evaluation_error)
    }

    fn __repr__(&self) -> String {
        let info = self.lock().info();
        format!(
            "headclip.Detector({} ({}), S = {}, {}, {})",
            info.model, info.mode, info.image_size, info.device, info.precision
        )
    }
}

impl PyDetector {
    fn lock(&self) -> std::sync::MutexGuard<'_, Detector> {
        // Scoring catches libtorch's panics, so a poisoned lock still guards a sound model.
        self.detector
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Prepares every item (outside the lock), then scores the ones that decoded together.
    fn score_chunk(&self, chunk: &[Input]) -> Vec<Result<headclip::detector::Detection, String>> {
        let prepared: Vec<Result<PreparedImage, String>> = chunk
            .iter()
            .map(|item| item.prepare(&self.preprocessor))
            .collect();
        let good: Vec<PreparedImage> = prepared
            .iter()
            .filter_map(|p| p.as_ref().ok().cloned())
            .collect();
        let mut scores = if good.is_empty() {
            Vec::new()
        } else {
            self.lock().score(good)
        }
        .into_iter();
        prepared
            .into_iter()
            .map(|p| match p {
                Ok(_) => match scores.next() {
                    Some(Ok(d)) => Ok(d),
                    Some(Err(e)) => Err(e.to_string()),
                    None => Err("the model gave no result".into()),
                },
                Err(message) => Err(message),
            })
            .collect()
    }
}

/// The model description the constructor's arguments make, checked as the CLI checks them.
fn model_spec(
    weights: PathBuf,
    params: Option<PathBuf>,
    image_size: Option<i64>,
    device: &str,
    precision: &str,
    clip_config: Option<PathBuf>,
) -> PyResult<ModelSpec> {
    let device = parse_device(device).map_err(|e| load_error(format!("device: {e}")))?;
    let precision: Precision = precision
        .parse()
        .map_err(|e| load_error(format!("precision: {e}")))?;
    let weights =
        headclip::clip::find_checkpoint(&weights).map_err(|e| load_error(e.to_string()))?;
    if !weights.is_file() {
        return Err(load_error(format!(
            "CLIP weights {} not found",
            weights.display()
        )));
    }
    headclip::weights::verify_official(&weights)
        .map_err(|e| load_error(format!("checking {}: {e}", weights.display())))?;
    if let Some(config) = &clip_config {
        if !config.is_file() {
            return Err(load_error(format!(
                "clip_config {} not found",
                config.display()
            )));
        }
    }
    let spec = ModelSpec {
        clip_config,
        params,
        image_size,
        device,
        precision,
        ..ModelSpec::new(weights)
    };
    spec.check()
        .map_err(|e| load_error(format!("precision {precision}: {e}")))?;
    Ok(spec)
}

/// Sets the number of threads libtorch computes with, for the whole process (libtorch has one
/// setting per process, so this is not a detector's).
#[pyfunction]
fn set_threads(n: i32) -> PyResult<()> {
    if n < 1 {
        return Err(errors::value_error("threads must be at least 1".into()));
    }
    tch::set_num_threads(n);
    Ok(())
}

/// The number of threads libtorch computes with.
#[pyfunction]
fn get_threads() -> i32 {
    tch::get_num_threads()
}

#[pymodule]
fn _headclip(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<PyDetector>()?;
    m.add_class::<Prediction>()?;
    m.add_function(wrap_pyfunction!(set_threads, m)?)?;
    m.add_function(wrap_pyfunction!(get_threads, m)?)?;
    m.add("HeadclipError", py.get_type::<HeadclipError>())?;
    m.add("ModelLoadError", py.get_type::<ModelLoadError>())?;
    m.add("ImageError", py.get_type::<ImageError>())?;
    m.add("EvaluationError", py.get_type::<errors::EvaluationError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
