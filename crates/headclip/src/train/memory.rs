//! Whether a training batch fits where it runs, estimated before the first epoch.

use tch::Device;

use super::Trainer;
use crate::model::LhwPaths;

/// Autograd's live tensors per block with `lhw_paths = both`, in units of one [B, N, D] fp32
/// token tensor (calibrated: ViT-B/16 shapes, S = 512, batch 8 peaked at 6.4 GB, 3.3 GB with
/// gradient checkpointing).
const PER_BLOCK_AUTOGRAD: f64 = 18.0;

/// The bytes one step keeps alive, and the memory available for it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemoryEstimate {
    /// Estimated peak bytes of one batch.
    pub bytes: f64,
    /// With `lhw_paths = both` and no checkpointing: the estimate with gradient checkpointing.
    pub bytes_with_checkpointing: Option<f64>,
    /// Free memory where the step runs; `None` where it cannot be found out.
    pub available: Option<f64>,
}

impl MemoryEstimate {
    /// Leaves a tenth of the free memory for everything else.
    pub fn fits(&self) -> bool {
        match self.available {
            Some(a) => self.bytes <= 0.9 * a,
            None => true,
        }
    }

    /// Whether gradient checkpointing would make a batch that does not fit, fit.
    pub fn checkpointing_would_fit(&self) -> bool {
        match (self.bytes_with_checkpointing, self.available) {
            (Some(b), Some(a)) => b <= 0.9 * a,
            _ => false,
        }
    }
}

/// Counts the tensors one step keeps alive: with `vv`, the value–value outputs of every
/// two-path block, the read-out tokens and their gradients; with `both`, autograd's tensors
/// per block, or with checkpointing two per two-path block plus one block's worth; and the S×S
/// probability maps of each read-out layer.
pub fn estimate(trainer: &Trainer<'_>, batch: usize) -> MemoryEstimate {
    let v = &trainer.clip.vision.config;
    let s = trainer.config.image_size as f64;
    let n = (s / v.patch as f64).powi(2) + 1.0;
    let tokens = batch as f64 * n * v.width as f64 * 4.0;
    let blocks = (v.layers + 1 - trainer.config.dpam_start) as f64;
    let readout = trainer.config.readout.len() as f64;
    let maps = readout * batch as f64 * 2.0 * s * s * 4.0 * 6.0;
    let checkpointed = (2.0 * blocks + PER_BLOCK_AUTOGRAD) * tokens + maps;
    let (bytes, with_checkpointing) = match trainer.config.lhw_paths {
        LhwPaths::Vv => (
            blocks * tokens + readout * tokens * 4.0 + maps + 8.0 * tokens,
            None,
        ),
        LhwPaths::Both if trainer.options.gradient_checkpointing => (checkpointed, None),
        LhwPaths::Both => (
            v.layers as f64 * PER_BLOCK_AUTOGRAD * tokens + maps,
            Some(checkpointed),
        ),
    };
    MemoryEstimate {
        bytes,
        bytes_with_checkpointing: with_checkpointing,
        available: available_memory(trainer.clip.text.device()).map(|b| b as f64),
    }
}

/// Free memory where the step runs: MemAvailable for the CPU; for a CUDA device what
/// `nvidia-smi` reports free (libtorch's C API does not expose cudaMemGetInfo).
fn available_memory(device: Device) -> Option<u64> {
    if let Device::Cuda(index) = device {
        let out = std::process::Command::new("nvidia-smi")
            .args([
                "--query-gpu=memory.free",
                "--format=csv,noheader,nounits",
                &format!("--id={index}"),
            ])
            .output()
            .ok()?;
        let mib: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
        return Some(mib * 1024 * 1024);
    }
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
