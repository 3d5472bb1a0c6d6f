//! Training HeadCLIP's prompts and head weights on an auxiliary annotated data set
//! (spec: "Training"). CLIP stays frozen.

pub mod adam;
pub mod loss;
pub mod memory;
mod run;
pub mod step;
pub mod trainer;

pub use adam::Adam;
pub use loss::LossTerms;
pub use memory::MemoryEstimate;
pub use run::{
    run_settings, setting_differences, CheckpointPolicy, RunFiles, RunOutcome, RunSettings,
    SettingDifference, TrainImage, TrainObserver, TrainSet, TrainSetCounts,
};
pub use step::{loss_and_gradients, trainable, Batch, LossSelection};
pub use trainer::{EpochProgress, EpochRecord, TrainError, TrainOptions, TrainSample, Trainer};
