//! Python bindings of the rtdetr engine: the native module `rtdetr._rtdetr`, re-exported by
//! the `rtdetr` package (`python/rtdetr/__init__.py`, typed in `__init__.pyi`).
//!
//! Everything the engine does (decoding, preprocessing, inference, post-processing, COCO
//! evaluation) runs with the GIL released, so a [`Detector`] shared by several Python
//! threads runs them in parallel. Engine errors become Python exceptions carrying the
//! engine's message: `FileNotFoundError` for a missing file or model, `ValueError` for bad
//! arguments, images and checkpoints, `RuntimeError` for the rest; a panic (a bug) becomes
//! a `RuntimeError` too.

use std::ops::ControlFlow;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use image::RgbImage;
use numpy::ndarray::Array2;
use numpy::{
    IntoPyArray, PyArray3, PyArray4, PyArrayDescrMethods, PyArrayDyn, PyArrayMethods, PyUntypedArray,
    PyUntypedArrayMethods,
};
use pyo3::exceptions::{
    PyFileNotFoundError, PyImportError, PyIndexError, PyIsADirectoryError, PyOSError, PyPermissionError,
    PyRuntimeError, PyRuntimeWarning, PyTypeError, PyValueError,
};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyList, PyString, PyTuple};

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------

/// The Python exception class an error maps to.
#[derive(Debug, Clone, Copy)]
enum Kind {
    FileNotFound,
    IsADirectory,
    Permission,
    Os,
    Value,
    Runtime,
}

/// An error raised while the GIL is released; becomes a Python exception afterwards.
#[derive(Debug)]
struct Failure {
    kind: Kind,
    msg: String,
}

impl Failure {
    fn new(kind: Kind, msg: impl Into<String>) -> Self {
        Self { kind, msg: msg.into() }
    }

    /// The same error about one image of a batch.
    fn in_image(self, index: usize, batch: bool) -> Self {
        if batch {
            Self { kind: self.kind, msg: format!("images[{index}]: {}", self.msg) }
        } else {
            self
        }
    }
}

fn io_kind(kind: std::io::ErrorKind) -> Kind {
    match kind {
        std::io::ErrorKind::NotFound => Kind::FileNotFound,
        std::io::ErrorKind::IsADirectory => Kind::IsADirectory,
        std::io::ErrorKind::PermissionDenied => Kind::Permission,
        _ => Kind::Os,
    }
}

impl From<rtdetr::Error> for Failure {
    fn from(e: rtdetr::Error) -> Self {
        use rtdetr::Error as E;
        let kind = match &e {
            E::Io { source, .. } => io_kind(source.kind()),
            E::NotFound(_) => Kind::FileNotFound,
            E::Json { .. } | E::Config(_) | E::Weights(_) | E::Image(_) | E::InvalidArgument(_) => Kind::Value,
            _ => Kind::Runtime,
        };
        Self::new(kind, e.to_string())
    }
}

impl From<rtdetr_coco::CocoError> for Failure {
    fn from(e: rtdetr_coco::CocoError) -> Self {
        use rtdetr_coco::CocoError as E;
        let kind = match &e {
            E::Io { source, .. } => io_kind(source.kind()),
            E::Write(_) => Kind::Os,
            _ => Kind::Value,
        };
        Self::new(kind, e.to_string())
    }
}

impl From<rtdetr_coco::detector::EvalError> for Failure {
    fn from(e: rtdetr_coco::detector::EvalError) -> Self {
        use rtdetr_coco::detector::EvalError as E;
        match e {
            E::Detector(e) => e.into(),
            E::Cancelled => Self::new(Kind::Runtime, "cancelled"),
            other => Self::new(Kind::Value, other.to_string()),
        }
    }
}

impl From<Failure> for PyErr {
    fn from(f: Failure) -> Self {
        match f.kind {
            Kind::FileNotFound => PyFileNotFoundError::new_err(f.msg),
            Kind::IsADirectory => PyIsADirectoryError::new_err(f.msg),
            Kind::Permission => PyPermissionError::new_err(f.msg),
            Kind::Os => PyOSError::new_err(f.msg),
            Kind::Value => PyValueError::new_err(f.msg),
            Kind::Runtime => PyRuntimeError::new_err(f.msg),
        }
    }
}

/// Runs `f` without the GIL; a panic (a bug in rtdetr) becomes a `RuntimeError` instead of
/// pyo3's `PanicException`.
fn detached<T: Send>(py: Python<'_>, f: impl FnOnce() -> Result<T, Failure> + Send) -> PyResult<T> {
    py.detach(|| {
        catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|payload| {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(Failure::new(Kind::Runtime, format!("internal error (a bug in rtdetr, please report it): {msg}")))
        })
    })
    .map_err(PyErr::from)
}

/// A string as Python's `repr` writes it (single quotes unless the string has one).
fn py_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') { '"' } else { '\'' };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => out.push_str(&c.escape_unicode().to_string()),
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

fn value_error(msg: impl Into<String>) -> PyErr {
    PyValueError::new_err(msg.into())
}

// ---------------------------------------------------------------------------------------
// Images
// ---------------------------------------------------------------------------------------

/// One input image, taken from Python objects while the GIL is held; decoded without it.
enum Source {
    /// A file to read and decode (EXIF orientation applied).
    Path(PathBuf),
    /// Encoded image bytes (JPEG, PNG, WebP, BMP, GIF).
    Bytes(Vec<u8>),
    /// Pixels already in RGB order.
    Pixels(RgbImage),
}

impl Source {
    fn into_image(self) -> Result<RgbImage, Failure> {
        match self {
            Source::Path(p) => Ok(rtdetr::load_image(&p)?),
            Source::Bytes(b) => Ok(rtdetr::decode_image(&b, rtdetr::io::decode::DEFAULT_MAX_PIXELS)?),
            Source::Pixels(img) => Ok(img),
        }
    }
}

const IMAGE_TYPES: &str = "a path (str or os.PathLike), bytes of an encoded image, a PIL image, \
                           or an HxWx3 uint8 NumPy array (RGB; bgr=True for OpenCV's BGR)";

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "?".into())
}

/// `obj` is a `PIL.Image.Image` (checked only when PIL is already imported, so that PIL is
/// never imported here).
fn is_pil_image(obj: &Bound<'_, PyAny>) -> PyResult<bool> {
    let py = obj.py();
    let modules = py.import("sys")?.getattr("modules")?;
    let Ok(pil) = modules.get_item("PIL.Image") else { return Ok(false) };
    let class = pil.getattr("Image")?;
    obj.is_instance(&class)
}

/// A PIL image as transformers' `load_image` sees it: EXIF orientation applied, then
/// `convert("RGB")` (alpha dropped, grayscale and palettes expanded).
fn pil_to_rgb(obj: &Bound<'_, PyAny>) -> PyResult<RgbImage> {
    let py = obj.py();
    let mut img = py.import("PIL.ImageOps")?.call_method1("exif_transpose", (obj,))?;
    let mode: String = img.getattr("mode")?.extract()?;
    if mode != "RGB" {
        img = img.call_method1("convert", ("RGB",))?;
    }
    let (w, h): (u32, u32) = img.getattr("size")?.extract()?;
    if w == 0 || h == 0 {
        return Err(value_error(format!("the PIL image has zero width or height ({w}x{h})")));
    }
    let data = img.call_method0("tobytes")?;
    let bytes = data.cast::<PyBytes>().map_err(|_| PyTypeError::new_err("PIL tobytes() did not return bytes"))?;
    RgbImage::from_raw(w, h, bytes.as_bytes().to_vec())
        .ok_or_else(|| value_error(format!("the PIL image's data does not hold {w}x{h} RGB pixels")))
}

/// An HxWx3 uint8 array (any strides) as an RGB image; `bgr` swaps the first and last
/// channel.
fn array_to_rgb(arr: &Bound<'_, PyUntypedArray>, bgr: bool) -> PyResult<RgbImage> {
    let py = arr.py();
    let dtype = arr.dtype();
    if !dtype.is_equiv_to(&numpy::dtype::<u8>(py)) {
        return Err(PyTypeError::new_err(format!(
            "image arrays must have dtype uint8, got {}; convert with e.g. arr.clip(0, 255).astype(np.uint8)",
            dtype.str().map(|s| s.to_string()).unwrap_or_else(|_| "?".into())
        )));
    }
    let shape = arr.shape().to_vec();
    if shape.len() != 3 || shape[2] != 3 {
        return Err(value_error(format!(
            "image arrays must have shape (height, width, 3), got {shape:?} (a list or an (N, H, W, 3) array is a batch)"
        )));
    }
    let (h, w) = (shape[0], shape[1]);
    if h == 0 || w == 0 {
        return Err(value_error(format!("the image array has zero width or height ({shape:?})")));
    }
    let (Ok(h32), Ok(w32)) = (u32::try_from(h), u32::try_from(w)) else {
        return Err(value_error(format!("the image array is too large ({shape:?})")));
    };
    let typed = arr.cast::<PyArray3<u8>>().map_err(|_| PyTypeError::new_err("expected a uint8 array"))?;
    let ro = typed.try_readonly().map_err(|e| value_error(format!("cannot read the array: {e}")))?;
    let view = ro.as_array();
    let mut data: Vec<u8> = match view.as_slice() {
        Some(s) => s.to_vec(),
        None => view.iter().copied().collect(),
    };
    if bgr {
        for px in data.chunks_exact_mut(3) {
            px.swap(0, 2);
        }
    }
    RgbImage::from_raw(w32, h32, data).ok_or_else(|| value_error("the image array has an inconsistent size"))
}

/// One image argument. `bgr` must be false for anything but arrays.
fn extract_source(obj: &Bound<'_, PyAny>, bgr: bool) -> PyResult<Source> {
    let not_array = |what: &str| {
        if bgr {
            Err(value_error(format!("bgr=True applies to NumPy arrays only, got {what}")))
        } else {
            Ok(())
        }
    };
    if let Ok(b) = obj.cast::<PyBytes>() {
        not_array("bytes")?;
        return Ok(Source::Bytes(b.as_bytes().to_vec()));
    }
    if let Ok(b) = obj.cast::<PyByteArray>() {
        not_array("a bytearray")?;
        return Ok(Source::Bytes(b.to_vec()));
    }
    if obj.is_instance_of::<PyString>() || obj.hasattr("__fspath__")? {
        not_array("a path")?;
        let path: PathBuf = obj.extract()?;
        return Ok(Source::Path(path));
    }
    if is_pil_image(obj)? {
        not_array("a PIL image")?;
        return Ok(Source::Pixels(pil_to_rgb(obj)?));
    }
    if let Ok(arr) = obj.cast::<PyUntypedArray>() {
        return Ok(Source::Pixels(array_to_rgb(arr, bgr)?));
    }
    Err(PyTypeError::new_err(format!("unsupported image type {}: expected {IMAGE_TYPES}", type_name(obj))))
}

/// The images of a call: `Some` list for a batch (a list, a tuple or an (N, H, W, 3) array),
/// `None` inside for a single image.
fn extract_images(obj: &Bound<'_, PyAny>, bgr: bool) -> PyResult<(Vec<Source>, bool)> {
    let items: Option<Vec<Bound<'_, PyAny>>> = if let Ok(list) = obj.cast::<PyList>() {
        Some(list.iter().collect())
    } else if let Ok(tuple) = obj.cast::<PyTuple>() {
        Some(tuple.iter().collect())
    } else if let Ok(arr) = obj.cast::<PyUntypedArray>() {
        if arr.ndim() == 4 {
            let dynamic = arr.cast::<PyArrayDyn<u8>>().map_err(|_| {
                PyTypeError::new_err(format!(
                    "image arrays must have dtype uint8, got {}",
                    arr.dtype().str().map(|s| s.to_string()).unwrap_or_else(|_| "?".into())
                ))
            })?;
            let batch = dynamic.cast::<PyArray4<u8>>().map_err(|_| value_error("expected an (N, H, W, 3) array"))?;
            let n = batch.shape()[0];
            let mut out = Vec::with_capacity(n);
            for i in 0..n {
                out.push(batch.get_item(i)?);
            }
            Some(out)
        } else {
            None
        }
    } else {
        None
    };
    match items {
        Some(items) => {
            let mut sources = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                if item.is_instance_of::<PyList>() || item.is_instance_of::<PyTuple>() {
                    return Err(PyTypeError::new_err(format!(
                        "images[{i}]: a batch is a flat list of images, got a nested {}",
                        type_name(item)
                    )));
                }
                let src = extract_source(item, bgr).map_err(|e| {
                    let py = obj.py();
                    let msg = format!("images[{i}]: {}", e.value(py));
                    PyErr::from_type(e.get_type(py), msg)
                })?;
                sources.push(src);
            }
            Ok((sources, true))
        }
        None => Ok((vec![extract_source(obj, bgr)?], false)),
    }
}

// ---------------------------------------------------------------------------------------
// Results
// ---------------------------------------------------------------------------------------

/// One detected object.
#[pyclass(module = "rtdetr", frozen, name = "Detection")]
#[derive(Clone)]
struct PyDetection {
    /// Class name (the checkpoint's `id2label`).
    #[pyo3(get)]
    label: String,
    /// Class index.
    #[pyo3(get)]
    class_id: usize,
    /// Confidence in (threshold, 1].
    #[pyo3(get)]
    score: f32,
    xyxy: (f32, f32, f32, f32),
}

impl PyDetection {
    fn from_engine(d: &rtdetr::Detection) -> Self {
        let b = d.bbox;
        Self { label: d.label.clone(), class_id: d.class_id, score: d.score, xyxy: (b.xmin, b.ymin, b.xmax, b.ymax) }
    }
}

fn box_dict<'py>(py: Python<'py>, b: (f32, f32, f32, f32), integer: bool) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    for (k, v) in [("xmin", b.0), ("ymin", b.1), ("xmax", b.2), ("ymax", b.3)] {
        if integer {
            // The pipeline's `box.int()`: truncation towards zero.
            d.set_item(k, v as i64)?;
        } else {
            d.set_item(k, v)?;
        }
    }
    Ok(d)
}

#[pymethods]
impl PyDetection {
    /// Box `(xmin, ymin, xmax, ymax)` in pixels of the original image.
    #[getter]
    #[pyo3(name = "box")]
    fn get_box(&self) -> (f32, f32, f32, f32) {
        self.xyxy
    }

    /// `{"label", "class_id", "score", "box": {"xmin", "ymin", "xmax", "ymax"}}`, as one
    /// detection of `rtdetr detect --json`.
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("label", &self.label)?;
        d.set_item("class_id", self.class_id)?;
        d.set_item("score", self.score)?;
        d.set_item("box", box_dict(py, self.xyxy, false)?)?;
        Ok(d)
    }

    fn __repr__(&self) -> String {
        let (a, b, c, d) = self.xyxy;
        format!(
            "Detection(label={}, class_id={}, score={:.4}, box=({a:.1}, {b:.1}, {c:.1}, {d:.1}))",
            py_repr(&self.label),
            self.class_id,
            self.score
        )
    }
}

/// The detections of one image, sorted by score (highest first).
#[pyclass(module = "rtdetr", frozen, sequence)]
struct Detections {
    dets: Vec<PyDetection>,
    /// Width of the image in pixels (after EXIF orientation).
    #[pyo3(get)]
    width: u32,
    /// Height of the image in pixels (after EXIF orientation).
    #[pyo3(get)]
    height: u32,
}

#[pymethods]
impl Detections {
    /// Boxes as an (N, 4) float32 array of `xmin, ymin, xmax, ymax` pixels.
    #[getter]
    fn boxes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let flat: Vec<f32> = self.dets.iter().flat_map(|d| [d.xyxy.0, d.xyxy.1, d.xyxy.2, d.xyxy.3]).collect();
        let arr = Array2::from_shape_vec((self.dets.len(), 4), flat)
            .map_err(|e| PyRuntimeError::new_err(format!("internal error: {e}")))?;
        Ok(arr.into_pyarray(py).into_any())
    }

    /// Scores as an (N,) float32 array.
    #[getter]
    fn scores<'py>(&self, py: Python<'py>) -> Bound<'py, PyAny> {
        self.dets.iter().map(|d| d.score).collect::<Vec<f32>>().into_pyarray(py).into_any()
    }

    /// Class ids as an (N,) int64 array.
    #[getter]
    fn class_ids<'py>(&self, py: Python<'py>) -> Bound<'py, PyAny> {
        self.dets.iter().map(|d| d.class_id as i64).collect::<Vec<i64>>().into_pyarray(py).into_any()
    }

    /// Class names, one per detection.
    #[getter]
    fn labels(&self) -> Vec<String> {
        self.dets.iter().map(|d| d.label.clone()).collect()
    }

    fn __len__(&self) -> usize {
        self.dets.len()
    }

    fn __getitem__(&self, index: isize) -> PyResult<PyDetection> {
        let n = self.dets.len() as isize;
        let i = if index < 0 { index + n } else { index };
        if i < 0 || i >= n {
            return Err(PyIndexError::new_err(format!("detection index {index} out of range for {n} detections")));
        }
        Ok(self.dets[i as usize].clone())
    }

    fn __iter__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let list = PyList::new(py, self.dets.iter().cloned())?;
        list.try_iter().map(Bound::into_any)
    }

    fn __bool__(&self) -> bool {
        !self.dets.is_empty()
    }

    /// The Hugging Face object-detection pipeline's output:
    /// `[{"score", "label", "box": {"xmin", "ymin", "xmax", "ymax"}}]`. Boxes are float
    /// pixels; `integer_boxes=True` truncates them to int as the pipeline does.
    #[pyo3(signature = (integer_boxes = false))]
    fn to_list<'py>(&self, py: Python<'py>, integer_boxes: bool) -> PyResult<Bound<'py, PyList>> {
        let list = PyList::empty(py);
        for d in &self.dets {
            let item = PyDict::new(py);
            item.set_item("score", d.score)?;
            item.set_item("label", &d.label)?;
            item.set_item("box", box_dict(py, d.xyxy, integer_boxes)?)?;
            list.append(item)?;
        }
        Ok(list)
    }

    /// `{"width", "height", "detections": [{"label", "class_id", "score", "box"}]}`: one
    /// line of `rtdetr detect --json` without the file name.
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("width", self.width)?;
        d.set_item("height", self.height)?;
        let list = PyList::empty(py);
        for det in &self.dets {
            list.append(det.to_dict(py)?)?;
        }
        d.set_item("detections", list)?;
        Ok(d)
    }

    /// A `supervision.Detections` (xyxy, confidence, class_id, and the class names in
    /// `data["class_name"]`). Needs the `supervision` package.
    fn to_supervision<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let sv = py.import("supervision").map_err(|e| {
            PyImportError::new_err(format!(
                "to_supervision() needs the `supervision` package (pip install supervision): {}",
                e.value(py)
            ))
        })?;
        let np = py.import("numpy")?;
        let kwargs = PyDict::new(py);
        kwargs.set_item("xyxy", self.boxes(py)?)?;
        kwargs.set_item("confidence", self.scores(py))?;
        kwargs.set_item("class_id", self.class_ids(py))?;
        let data = PyDict::new(py);
        let names_kw = PyDict::new(py);
        names_kw.set_item("dtype", "str")?;
        data.set_item("class_name", np.call_method("array", (self.labels(),), Some(&names_kw))?)?;
        kwargs.set_item("data", data)?;
        sv.getattr("Detections")?.call((), Some(&kwargs))
    }

    fn __repr__(&self) -> String {
        let shown: Vec<String> = self.dets.iter().take(5).map(|d| format!("{} {:.2}", d.label, d.score)).collect();
        let more = if self.dets.len() > 5 { format!(", ... {} more", self.dets.len() - 5) } else { String::new() };
        format!("Detections({} in {}x{}: [{}{more}])", self.dets.len(), self.width, self.height, shown.join(", "))
    }
}

// ---------------------------------------------------------------------------------------
// Detector
// ---------------------------------------------------------------------------------------

/// A loaded RT-DETR checkpoint.
#[pyclass(module = "rtdetr", frozen)]
struct Detector {
    inner: rtdetr::Detector,
    model: String,
}

fn precision_name(p: rtdetr::Precision) -> &'static str {
    match p {
        rtdetr::Precision::F32 => "f32",
        rtdetr::Precision::Bf16 => "bf16",
    }
}

fn positive(v: i64, what: &str) -> PyResult<usize> {
    usize::try_from(v).ok().filter(|&v| v > 0).ok_or_else(|| value_error(format!("{what} must be positive, got {v}")))
}

fn parse_size(size: &Bound<'_, PyAny>) -> PyResult<(usize, usize)> {
    if let Ok(s) = size.extract::<i64>() {
        let s = positive(s, "size")?;
        return Ok((s, s));
    }
    if let Ok((h, w)) = size.extract::<(i64, i64)>() {
        return Ok((positive(h, "size height")?, positive(w, "size width")?));
    }
    Err(PyTypeError::new_err(format!("size must be an int or a (height, width) tuple, got {}", type_name(size))))
}

impl Detector {
    fn options(
        &self,
        threshold: f64,
        max_detections: i64,
        classes: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<rtdetr::DetectOptions> {
        if !threshold.is_finite() || !(0.0..=1.0).contains(&threshold) {
            return Err(value_error(format!("threshold must be in [0, 1], got {threshold}")));
        }
        let max_detections = positive(max_detections, "max_detections")?;
        let classes = match classes {
            None => None,
            Some(c) if c.is_none() => None,
            Some(c) => {
                let names: Vec<String> = if let Ok(s) = c.cast::<PyString>() {
                    vec![s.to_cow()?.into_owned()]
                } else {
                    c.extract().map_err(|_| {
                        PyTypeError::new_err(format!("classes must be a list of label names, got {}", type_name(c)))
                    })?
                };
                if names.is_empty() {
                    return Err(value_error("classes must not be empty (pass None to keep all)"));
                }
                let mut ids = self.inner.class_ids(&names).map_err(|e| PyErr::from(Failure::from(e)))?;
                ids.sort_unstable();
                ids.dedup();
                Some(ids)
            }
        };
        Ok(rtdetr::DetectOptions { threshold: threshold as f32, max_detections, classes })
    }

    fn run<'py>(
        &self,
        py: Python<'py>,
        images: &Bound<'py, PyAny>,
        opts: rtdetr::DetectOptions,
        bgr: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (sources, batch) = extract_images(images, bgr)?;
        let det = &self.inner;
        let results = detached(py, move || {
            let mut decoded = Vec::with_capacity(sources.len());
            for (i, s) in sources.into_iter().enumerate() {
                decoded.push(s.into_image().map_err(|e| e.in_image(i, batch))?);
            }
            let dets = det.detect_batch(&decoded, &opts)?;
            Ok(decoded
                .iter()
                .zip(dets)
                .map(|(img, ds)| Detections {
                    dets: ds.iter().map(PyDetection::from_engine).collect(),
                    width: img.width(),
                    height: img.height(),
                })
                .collect::<Vec<_>>())
        })?;
        if batch {
            Ok(PyList::new(py, results)?.into_any())
        } else {
            let one = results.into_iter().next().ok_or_else(|| PyRuntimeError::new_err("internal error: no result"))?;
            Ok(Bound::new(py, one)?.into_any())
        }
    }
}

#[pymethods]
impl Detector {
    /// Loads a checkpoint: a local directory (config.json, model.safetensors,
    /// preprocessor_config.json) or a Hugging Face Hub id, downloaded into the standard
    /// cache as `rtdetr detect --model` does.
    #[new]
    #[pyo3(signature = (model = None, *, precision = "f32", size = None, decoder_layers = None))]
    fn new(
        py: Python<'_>,
        model: Option<&Bound<'_, PyAny>>,
        precision: &str,
        size: Option<&Bound<'_, PyAny>>,
        decoder_layers: Option<i64>,
    ) -> PyResult<Self> {
        let model: String = match model.filter(|m| !m.is_none()) {
            None => rtdetr::DEFAULT_MODEL.to_string(),
            Some(model) if model.is_instance_of::<PyString>() || model.hasattr("__fspath__")? => {
                let p: PathBuf = model.extract()?;
                p.to_str()
                    .ok_or_else(|| value_error(format!("model path is not valid UTF-8: {}", p.display())))?
                    .to_string()
            }
            Some(other) => {
                return Err(PyTypeError::new_err(format!(
                    "model must be a directory path or a Hub id string, got {}",
                    type_name(other)
                )))
            }
        };
        let precision = match precision.to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" => rtdetr::Precision::F32,
            "bf16" | "bfloat16" => rtdetr::Precision::Bf16,
            other => return Err(value_error(format!("precision must be \"f32\" or \"bf16\", got {other:?}"))),
        };
        let size = size.filter(|s| !s.is_none()).map(parse_size).transpose()?;
        let decoder_layers = decoder_layers.map(|n| positive(n, "decoder_layers")).transpose()?;
        let opts = rtdetr::LoadOptions { precision, size, decoder_layers, ..Default::default() };
        let name = model.clone();
        let inner = detached(py, move || Ok(rtdetr::Detector::load(&name, &opts)?))?;
        if inner.precision() != precision {
            PyErr::warn(
                py,
                py.get_type::<PyRuntimeWarning>().as_any(),
                c"this CPU has no bf16 dot products (AVX512-BF16): running f32",
                1,
            )?;
        }
        Ok(Self { inner, model })
    }

    /// Detects objects in one image, or in a list of images as one batch.
    #[pyo3(signature = (images, *, threshold = 0.5, max_detections = 100, classes = None, bgr = false))]
    fn __call__<'py>(
        &self,
        py: Python<'py>,
        images: &Bound<'py, PyAny>,
        threshold: f64,
        max_detections: i64,
        classes: Option<&Bound<'py, PyAny>>,
        bgr: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let opts = self.options(threshold, max_detections, classes)?;
        self.run(py, images, opts, bgr)
    }

    /// Same as calling the detector.
    #[pyo3(signature = (images, *, threshold = 0.5, max_detections = 100, classes = None, bgr = false))]
    fn detect<'py>(
        &self,
        py: Python<'py>,
        images: &Bound<'py, PyAny>,
        threshold: f64,
        max_detections: i64,
        classes: Option<&Bound<'py, PyAny>>,
        bgr: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.__call__(py, images, threshold, max_detections, classes, bgr)
    }

    /// COCO bbox evaluation of this detector on a COCO-format dataset, as `rtdetr eval`:
    /// threshold 0, at most 100 detections per image, the model's labels matched to the
    /// dataset's categories by name. Returns the 12 numbers of pycocotools' summary.
    #[pyo3(signature = (images_dir, annotations, *, batch_size = 1, limit = None, out = None))]
    fn eval<'py>(
        &self,
        py: Python<'py>,
        images_dir: PathBuf,
        annotations: PathBuf,
        batch_size: i64,
        limit: Option<i64>,
        out: Option<PathBuf>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let batch_size = positive(batch_size, "batch_size")?;
        let limit = limit
            .map(|n| usize::try_from(n).map_err(|_| value_error(format!("limit must be >= 0, got {n}"))))
            .transpose()?;
        if !images_dir.is_dir() {
            return Err(PyFileNotFoundError::new_err(format!("{}: no such directory", images_dir.display())));
        }
        let det = &self.inner;
        let mut interrupted: Option<PyErr> = None;
        let interrupted_ref = &mut interrupted;
        let result = detached(py, move || {
            let gt = rtdetr_coco::CocoDataset::from_path(&annotations)?;
            let opts = rtdetr_coco::detector::EvalOptions { batch_size, limit };
            let run = rtdetr_coco::detector::evaluate_detector(det, &gt, &images_dir, &opts, |_| {
                // Ctrl-C between batches.
                match Python::attach(|py| py.check_signals()) {
                    Ok(()) => ControlFlow::Continue(()),
                    Err(e) => {
                        *interrupted_ref = Some(e);
                        ControlFlow::Break(())
                    }
                }
            })?;
            if let Some(path) = &out {
                write_results(path, &run.detections)?;
            }
            Ok(run.summary.stats)
        });
        if let Some(e) = interrupted {
            return Err(e);
        }
        let stats = result?;
        let d = PyDict::new(py);
        for (name, v) in rtdetr_coco::STAT_NAMES.iter().zip(stats) {
            d.set_item(*name, v)?;
        }
        Ok(d)
    }

    /// Class names, indexed by class id.
    #[getter]
    fn labels(&self) -> Vec<String> {
        self.inner.labels().to_vec()
    }

    /// The network's input `(height, width)`, or `None` when the checkpoint keeps each
    /// image's size.
    #[getter]
    fn input_size(&self) -> Option<(usize, usize)> {
        self.inner.preprocessor().size
    }

    /// The arithmetic in effect: `"f32"`, or `"bf16"` where asked for and the CPU has it.
    #[getter]
    fn precision(&self) -> &'static str {
        precision_name(self.inner.precision())
    }

    /// Decoder layers each forward pass runs.
    #[getter]
    fn decoder_layers(&self) -> usize {
        self.inner.decoder_layers()
    }

    /// The model as given: a directory or a Hub id.
    #[getter]
    fn model(&self) -> &str {
        &self.model
    }

    fn __repr__(&self) -> String {
        let size = match self.inner.preprocessor().size {
            Some((h, w)) => format!("({h}, {w})"),
            None => "None".into(),
        };
        format!(
            "Detector(model={}, precision={}, input_size={size}, decoder_layers={}, classes={})",
            py_repr(&self.model),
            py_repr(self.precision()),
            self.inner.decoder_layers(),
            self.inner.labels().len()
        )
    }
}

fn write_results(path: &Path, dets: &[rtdetr_coco::Detection]) -> Result<(), Failure> {
    Ok(rtdetr_coco::write_results(path, dets)?)
}

/// RT-DETR object detection with a native Rust engine (no PyTorch).
#[pymodule]
fn _rtdetr(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Detector>()?;
    m.add_class::<Detections>()?;
    m.add_class::<PyDetection>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("DEFAULT_MODEL", rtdetr::DEFAULT_MODEL)?;
    Ok(())
}
