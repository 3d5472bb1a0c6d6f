//! One image's result as Python sees it.

use std::str::FromStr;

use headclip::detector::Detection;
use headclip_data::viz;
use numpy::ndarray::Array2;
use numpy::{IntoPyArray, PyArray2};
use pyo3::prelude::*;

/// The size `anomaly_map` is returned at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapSize {
    /// The model's S×S.
    Model,
    /// The image's own height × width, stretched bilinearly as overlays are.
    Image,
}

impl FromStr for MapSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "model" => Ok(MapSize::Model),
            "image" => Ok(MapSize::Image),
            other => Err(format!(
                "map_size must be \"model\" or \"image\", not {other:?}"
            )),
        }
    }
}

/// One image's scores and anomaly map.
#[pyclass(module = "headclip._headclip", frozen, get_all)]
pub struct Prediction {
    /// The joint anomaly score.
    score: f32,
    /// The score from the global image feature.
    global_score: f32,
    /// The mean of the top fraction of the smoothed map.
    pixel_score: f32,
    /// The anomaly map, float32, S×S (or the image's H×W with map_size="image"), values in [0, 1].
    anomaly_map: Py<PyArray2<f32>>,
    /// The map's largest value (at S×S).
    map_max: f32,
    /// The map's mean (at S×S).
    map_mean: f32,
    /// The image's width as decoded.
    width: u32,
    /// The image's height as decoded.
    height: u32,
    /// The model's side S.
    image_size: u32,
    /// The encoded format (png, jpeg, ...), None for arrays.
    format: Option<String>,
    /// The threshold given, if any.
    threshold: Option<f32>,
    /// The verdict, score >= threshold; None without a threshold.
    anomalous: Option<bool>,
}

impl Prediction {
    pub fn new(
        py: Python<'_>,
        d: Detection,
        threshold: Option<f32>,
        map_size: MapSize,
    ) -> PyResult<Self> {
        let side = d.side as usize;
        let map = match map_size {
            MapSize::Model => Array2::from_shape_vec((side, side), d.map),
            MapSize::Image => {
                let (w, h) = (d.width as usize, d.height as usize);
                Array2::from_shape_vec((h, w), viz::resize_map(&d.map, side, w, h))
            }
        }
        .map_err(super::errors::internal)?;
        Ok(Self {
            score: d.score,
            global_score: d.global_score,
            pixel_score: d.pixel_score,
            anomaly_map: map.into_pyarray(py).unbind(),
            map_max: d.map_max,
            map_mean: d.map_mean,
            width: d.width,
            height: d.height,
            image_size: d.side,
            format: d.format.map(|f| f.to_string()),
            threshold,
            anomalous: threshold.map(|t| d.score >= t),
        })
    }

    pub fn into_pyobject_any(self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        Ok(Py::new(py, self)?.into_any())
    }
}

#[pymethods]
impl Prediction {
    fn __repr__(&self) -> String {
        let verdict = match self.anomalous {
            Some(true) => ", anomalous",
            Some(false) => ", normal",
            None => "",
        };
        format!(
            "Prediction(score={:.6}, global_score={:.6}, pixel_score={:.6}, {}×{}{verdict})",
            self.score, self.global_score, self.pixel_score, self.width, self.height
        )
    }
}
