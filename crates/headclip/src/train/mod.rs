//! Training HeadCLIP's prompts and head weights on an auxiliary annotated data set
//! (spec: "Training"). CLIP stays frozen.

pub mod adam;
pub mod loss;
pub mod step;
pub mod trainer;

pub use adam::Adam;
pub use loss::LossTerms;
pub use step::{loss_and_gradients, trainable, Batch, LossSelection};
pub use trainer::{EpochRecord, TrainError, TrainOptions, TrainSample, Trainer};
