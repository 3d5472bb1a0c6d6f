//! A training step gives the same bits in every process, which bit-identical resumed training
//! (a run stopped, then continued by a new process) relies on.
//!
//! The first multithreaded `log` of a process used to be off by a few ulps in about one process
//! in ten: MKL's vector math picks its code lazily, and two threads raced to the first call.
//! `headclip::runtime::prepare`, which building a `Clip` calls, settles that first. The check
//! needs fresh processes, so this test runs itself as a child many times; the child's step is the
//! one where the difference was seen (the first batch of the CLI training test).

use std::path::Path;
use std::process::Command;

use headclip::clip::{load_state_dict, Clip};
use headclip::model::HeadClipConfig;
use headclip::train::{TrainOptions, TrainSample, Trainer};
use headclip_data::images::{self, DecodeLimits};

const CHILD: &str = "HEADCLIP_DETERMINISM_CHILD";
const PROCESSES: usize = 40;
const SIDE: u32 = 64;

fn bottle() -> &'static Path {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/data/mvtec_bottle/bottle"
    ))
}

/// In a child process: one training step of the tiny model on four real images, on two threads;
/// prints the bits of its loss terms.
#[test]
fn child_training_step() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    tch::set_num_threads(2);
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny");
    let state = load_state_dict(&fixtures.join("clip_openai.safetensors")).unwrap();
    let clip = Clip::from_state_dict(&state, tch::Device::Cpu).unwrap();
    let config = HeadClipConfig {
        image_size: Some(SIDE as i64),
        readout: Some(vec![2, 4, 6]),
        dpam_start: Some(3),
        ..Default::default()
    };
    let options = TrainOptions {
        batch_size: 4,
        ..Default::default()
    };
    let mut trainer = Trainer::new(&clip, config, options, 8).unwrap();
    let limits = DecodeLimits::default();
    let samples: Vec<TrainSample> = [
        "good/000",
        "broken_large/000",
        "good/001",
        "broken_large/001",
    ]
    .iter()
    .map(|name| {
        let image = images::read_rgb(&bottle().join(format!("test/{name}.png")), &limits).unwrap();
        let anomalous = name.starts_with("broken");
        let mask = if anomalous {
            let path = bottle().join(format!("ground_truth/{name}_mask.png"));
            images::read_mask(&path, SIDE, &limits).unwrap().values
        } else {
            vec![0; (SIDE * SIDE) as usize]
        };
        TrainSample {
            image: images::preprocess(&image, SIDE),
            mask,
            anomalous,
            mask_known: true,
        }
    })
    .collect();
    let terms = trainer.train_batch(&samples).unwrap();
    println!(
        "bits {:016x} {:016x} {:016x} {:016x}",
        terms.total.to_bits(),
        terms.ce.to_bits(),
        terms.focal.to_bits(),
        terms.dice.to_bits()
    );
}

#[test]
fn a_training_step_gives_the_same_bits_in_every_process() {
    let exe = std::env::current_exe().unwrap();
    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    for _ in 0..PROCESSES {
        let out = Command::new(&exe)
            .args(["--exact", "child_training_step", "--nocapture"])
            .env(CHILD, "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let bits = stdout
            .lines()
            .find_map(|l| l.split("bits ").nth(1))
            .unwrap_or_else(|| panic!("no loss bits in the child's output:\n{stdout}"))
            .to_string();
        *seen.entry(bits).or_default() += 1;
    }
    assert_eq!(
        seen.len(),
        1,
        "the same step gave different losses in different processes (bits: count): {seen:?}"
    );
}
