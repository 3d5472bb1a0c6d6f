//! Few-shot references of a detector: reading the normal images, building the memory bank
//! once, saving it, and reloading it only for the model it was built with.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};

use headclip_data::images::{PreparedImage, Preprocessor};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::{panic_message, Detector, References};
use crate::model::{serialize_f32, FewShot, HeadClip, MemoryBank};
use crate::weights;

/// The metadata key of a saved bank.
pub const BANK_KEY: &str = "headclip.bank";
/// The `format` a saved bank's metadata names.
const BANK_FORMAT: &str = "headclip-bank-1";

/// One reference image: its name (relative to the folder given, or its file name) and the
/// sha256 of its bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReferenceRecord {
    pub name: String,
    pub sha256: String,
}

/// What a bank was built from: the model that computed it and the references it holds. A saved
/// bank is refused by a model that differs in any field but `references`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BankOrigin {
    pub format: String,
    /// sha256 of the CLIP checkpoint file.
    pub weights_sha256: String,
    /// sha256 of HeadCLIP's parameters file (`None`: training-free).
    pub params_sha256: Option<String>,
    /// CLIP's architecture, e.g. `ViT-L/14@336px`.
    pub architecture: String,
    pub image_size: i64,
    pub precision: String,
    pub readout: Vec<usize>,
    pub dpam_start: usize,
    /// In the order the bank's rows hold them.
    pub references: Vec<ReferenceRecord>,
}

/// The references a detector holds, for reports and the score identity.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FewShotSummary {
    /// The references, in bank order.
    pub references: Vec<ReferenceRecord>,
    /// The sha256 of the bank file, when the bank was loaded from one.
    pub bank_sha256: Option<String>,
    /// β of the fused map.
    pub beta: f64,
    /// Patch features per read-out layer.
    pub patches: i64,
}

/// The image files of a folder, recursively, sorted; names starting with '.' are left out.
fn folder_files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        let entries = std::fs::read_dir(&d)
            .and_then(|e| e.collect::<std::io::Result<Vec<_>>>())
            .map_err(|e| format!("cannot list references folder {}: {e}", d.display()))?;
        for entry in entries {
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The files of image references with the names they are recorded under.
fn reference_files(references: &References) -> Result<Vec<(PathBuf, String)>, String> {
    match references {
        References::Folder(dir) => {
            if !dir.is_dir() {
                return Err(format!(
                    "references {}: no such folder or file",
                    dir.display()
                ));
            }
            let files = folder_files(dir)?;
            if files.is_empty() {
                return Err(format!("references folder {} holds no file", dir.display()));
            }
            Ok(files
                .into_iter()
                .map(|f| {
                    let name = f.strip_prefix(dir).unwrap_or(&f).display().to_string();
                    (f, name)
                })
                .collect())
        }
        References::Images(files) => Ok(files
            .iter()
            .map(|f| {
                let name = f.file_name().map_or_else(
                    || f.display().to_string(),
                    |n| n.to_string_lossy().into_owned(),
                );
                (f.clone(), name)
            })
            .collect()),
        References::Bank(path) => Err(format!("{} is a bank, not images", path.display())),
    }
}

/// Refuses a bank of `references` images of `grid`² patches over `cap` patch features.
fn check_cap(
    references: usize,
    grid: i64,
    width: i64,
    layers: usize,
    cap: usize,
) -> Result<(), String> {
    let patches = references * (grid * grid) as usize;
    if patches > cap {
        let mib = (patches * width as usize * 4 * layers) as f64 / (1024.0 * 1024.0);
        return Err(format!(
            "{references} references of {grid}×{grid} patches make {patches} patch features per \
             read-out layer ({mib:.0} MiB over {layers} layers), over the bank cap of {cap} \
             (at most {} references at this size; raise the cap to allow more)",
            cap / (grid * grid) as usize
        ));
    }
    Ok(())
}

/// Reads and pre-processes the reference images; one that cannot be read or decoded is named in
/// a warning and left out. No usable image is an error.
fn read_references(
    files: &[(PathBuf, String)],
    preprocessor: &Preprocessor,
) -> Result<(Vec<PreparedImage>, Vec<ReferenceRecord>), String> {
    let mut images = Vec::with_capacity(files.len());
    let mut records = Vec::with_capacity(files.len());
    for (path, name) in files {
        let prepared = std::fs::read(path)
            .map_err(|e| format!("cannot read: {e}"))
            .and_then(|bytes| {
                let image = preprocessor
                    .prepare_encoded(&bytes, false)
                    .map_err(|e| e.to_string())?;
                Ok((
                    image,
                    weights::sha256_reader(bytes.as_slice()).unwrap_or_default(),
                ))
            });
        match prepared {
            Ok((image, sha256)) => {
                images.push(image);
                records.push(ReferenceRecord {
                    name: name.clone(),
                    sha256,
                });
            }
            Err(e) => tracing::warn!("reference {} left out: {e}", path.display()),
        }
    }
    if images.is_empty() {
        return Err(format!(
            "none of the {} reference files could be used (see the warnings above)",
            files.len()
        ));
    }
    Ok((images, records))
}

/// The bank of prepared reference images; a libtorch failure is an error, not a panic.
fn build_bank(model: &HeadClip, images: &[PreparedImage]) -> Result<MemoryBank, String> {
    let s = model.image_size();
    let flat: Vec<f32> = images
        .iter()
        .flat_map(|i| i.pixels.iter().copied())
        .collect();
    let batch = Tensor::from_slice(&flat).view([images.len() as i64, 3, s, s]);
    let bank = std::panic::catch_unwind(AssertUnwindSafe(|| model.memory_bank(&batch)))
        .map_err(|p| format!("building the bank failed: {}", panic_message(&p)))?;
    let finite = bank.layers.iter().all(|t| crate::non_finite_count(t) == 0);
    if !finite {
        return Err("the bank holds non-finite features (NaN or infinite weights?)".into());
    }
    Ok(bank)
}

impl Detector {
    /// The references the detector uses, if any.
    pub fn few_shot(&self) -> Option<&FewShotSummary> {
        self.few_shot.as_ref()
    }

    /// Replaces the references (and so the bank; `None`: zero-shot) with β as the spec says.
    /// The bank is built once here; a failure leaves the detector zero-shot.
    pub fn set_references(&mut self, references: Option<References>) -> Result<(), String> {
        self.model.few_shot = None;
        self.few_shot = None;
        self.spec.references = references.clone();
        let Some(references) = references else {
            return Ok(());
        };
        let started = std::time::Instant::now();
        let (bank, records, bank_sha256) = match &references {
            References::Bank(path) => {
                let (bank, origin, sha) = self.load_bank(path)?;
                (bank, origin.references, Some(sha))
            }
            images => {
                let files = reference_files(images)?;
                self.check_bank_cap(files.len())?;
                let (prepared, records) = read_references(&files, &self.preprocessor)?;
                (build_bank(&self.model, &prepared)?, records, None)
            }
        };
        let summary = FewShotSummary {
            references: records,
            bank_sha256,
            beta: self.spec.beta,
            patches: bank.patches(),
        };
        tracing::info!(
            "few-shot: {} references, {} patch features per layer ({:.1} MiB), β = {}, ready in {:.1} s",
            summary.references.len(),
            summary.patches,
            bank.bytes() as f64 / (1024.0 * 1024.0),
            self.spec.beta,
            started.elapsed().as_secs_f64()
        );
        self.model.few_shot = Some(FewShot {
            bank,
            beta: self.spec.beta,
        });
        self.few_shot = Some(summary);
        Ok(())
    }

    /// Sets the class name of the training-free prompt ensemble (learned prompts ignore it).
    pub fn set_class_name(&mut self, class_name: Option<&str>) -> Result<(), String> {
        self.model
            .set_class_name(class_name)
            .map_err(|e| format!("class name {class_name:?}: {e}"))?;
        self.spec.class_name = class_name.map(str::to_string);
        Ok(())
    }

    fn grid(&self) -> i64 {
        self.model.image_size() / self.model.clip.config.vision.patch
    }

    fn check_bank_cap(&self, references: usize) -> Result<(), String> {
        check_cap(
            references,
            self.grid(),
            self.model.clip.config.embed_dim,
            self.model.config.readout.len(),
            self.spec.bank_cap,
        )
    }

    /// What a bank built by this detector records about its model.
    fn bank_origin(&self, references: Vec<ReferenceRecord>) -> Result<BankOrigin, String> {
        // The identity's checksums: the checkpoint found in a weights folder, hashed once.
        let identity = self.score_identity().map_err(|e| e.to_string())?;
        Ok(BankOrigin {
            format: BANK_FORMAT.into(),
            weights_sha256: identity.weights_sha256,
            params_sha256: identity.params_sha256,
            architecture: self.model.clip.config.name(),
            image_size: self.model.image_size(),
            precision: self.spec.precision.to_string(),
            readout: self.model.config.readout.clone(),
            dpam_start: self.model.config.dpam_start,
            references,
        })
    }

    /// Writes the detector's bank to `path` (safetensors, one tensor per read-out layer, what it
    /// was built from in the metadata), atomically.
    pub fn save_bank(&self, path: &Path) -> Result<(), String> {
        let (Some(fs), Some(summary)) = (&self.model.few_shot, &self.few_shot) else {
            return Err("no references to save: give a references folder".into());
        };
        let origin = self.bank_origin(summary.references.clone())?;
        let named: Vec<(String, Tensor)> = self
            .model
            .config
            .readout
            .iter()
            .zip(&fs.bank.layers)
            .map(|(l, t)| (format!("bank.layer{l}"), t.shallow_clone()))
            .collect();
        let metadata = HashMap::from([(
            BANK_KEY.to_string(),
            serde_json::to_string(&origin).map_err(|e| e.to_string())?,
        )]);
        let bytes = serialize_f32(&named, metadata)?;
        crate::write_atomically(path, &bytes)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))
    }

    /// A saved bank, checked against this detector's model; also the file's sha256.
    fn load_bank(&self, path: &Path) -> Result<(MemoryBank, BankOrigin, String), String> {
        let fail = |m: String| format!("bank {}: {m}", path.display());
        let bytes = std::fs::read(path).map_err(|e| fail(format!("cannot read: {e}")))?;
        let (_, metadata) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| fail(format!("not a safetensors file: {e}")))?;
        let json = metadata
            .metadata()
            .as_ref()
            .and_then(|m| m.get(BANK_KEY))
            .ok_or_else(|| {
                fail(format!(
                    "no `{BANK_KEY}` metadata: not a bank from `headclip bank`"
                ))
            })?;
        let origin: BankOrigin =
            serde_json::from_str(json).map_err(|e| fail(format!("metadata `{BANK_KEY}`: {e}")))?;
        if origin.format != BANK_FORMAT {
            return Err(fail(format!(
                "format {:?}, expected {BANK_FORMAT:?}",
                origin.format
            )));
        }
        self.check_bank_cap(origin.references.len()).map_err(fail)?;
        let mine = self.bank_origin(origin.references.clone()).map_err(fail)?;
        refuse_other_model(&origin, &mine).map_err(fail)?;
        let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| fail(e.to_string()))?;
        let width = self.model.clip.config.embed_dim;
        let rows = origin.references.len() as i64 * self.grid() * self.grid();
        let layers = self
            .model
            .config
            .readout
            .iter()
            .map(|l| {
                let name = format!("bank.layer{l}");
                let view = st
                    .tensor(&name)
                    .map_err(|_| fail(format!("no tensor `{name}`")))?;
                let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
                if view.dtype() != safetensors::Dtype::F32 || shape != [rows, width] {
                    return Err(fail(format!(
                        "`{name}` is {:?} {shape:?}, expected F32 [{rows}, {width}]",
                        view.dtype()
                    )));
                }
                let t = Tensor::f_from_data_size(view.data(), &shape, Kind::Float)
                    .map_err(|e| fail(format!("`{name}`: {e}")))?;
                if crate::non_finite_count(&t) > 0 {
                    return Err(fail(format!("`{name}` holds NaN or infinite values")));
                }
                Ok(t.to_device(self.model.device()))
            })
            .collect::<Result<Vec<_>, String>>()?;
        let sha = weights::sha256_reader(bytes.as_slice()).map_err(|e| fail(e.to_string()))?;
        Ok((MemoryBank { layers }, origin, sha))
    }
}

/// Names every field in which a bank's model differs from this one.
fn refuse_other_model(bank: &BankOrigin, mine: &BankOrigin) -> Result<(), String> {
    let mut differ = Vec::new();
    let mut check = |what: &str, theirs: String, ours: String| {
        if theirs != ours {
            differ.push(format!("{what} {theirs} (this model: {ours})"));
        }
    };
    check(
        "weights sha256",
        bank.weights_sha256.clone(),
        mine.weights_sha256.clone(),
    );
    let params = |p: &Option<String>| p.clone().unwrap_or_else(|| "none (training-free)".into());
    check(
        "parameters sha256",
        params(&bank.params_sha256),
        params(&mine.params_sha256),
    );
    check(
        "architecture",
        bank.architecture.clone(),
        mine.architecture.clone(),
    );
    check(
        "image size",
        bank.image_size.to_string(),
        mine.image_size.to_string(),
    );
    check("precision", bank.precision.clone(), mine.precision.clone());
    check(
        "read-out layers",
        format!("{:?}", bank.readout),
        format!("{:?}", mine.readout),
    );
    check(
        "DPAM start",
        bank.dpam_start.to_string(),
        mine.dpam_start.to_string(),
    );
    if differ.is_empty() {
        Ok(())
    } else {
        Err(format!("built for another model: {}", differ.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_names_the_numbers() {
        assert!(check_cap(16, 37, 768, 4, 16 * 37 * 37).is_ok());
        let err = check_cap(17, 37, 768, 4, 16 * 37 * 37).unwrap_err();
        assert!(
            err.contains("17 references of 37×37 patches make 23273"),
            "{err}"
        );
        assert!(err.contains("over the bank cap of 21904"), "{err}");
        assert!(err.contains("at most 16 references"), "{err}");
    }

    #[test]
    fn another_model_is_named_field_by_field() {
        let origin = BankOrigin {
            format: BANK_FORMAT.into(),
            weights_sha256: "a".into(),
            params_sha256: None,
            architecture: "ViT-B/16".into(),
            image_size: 512,
            precision: "fp32".into(),
            readout: vec![3, 6, 9, 12],
            dpam_start: 4,
            references: vec![],
        };
        assert!(refuse_other_model(&origin, &origin).is_ok());
        let other = BankOrigin {
            weights_sha256: "b".into(),
            image_size: 224,
            ..origin.clone()
        };
        let err = refuse_other_model(&origin, &other).unwrap_err();
        assert!(err.contains("weights sha256 a (this model: b)"), "{err}");
        assert!(err.contains("image size 512 (this model: 224)"), "{err}");
        assert!(!err.contains("precision"), "{err}");
    }
}
