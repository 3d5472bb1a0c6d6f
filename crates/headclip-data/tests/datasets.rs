//! Data set loaders on the real shared data (read in place) and on small generated layouts.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use headclip_data::datasets::{
    load, load_str, DataKind, DataSpec, Dataset, DatasetError, DatasetWarning, Layout, LoadOptions,
    SpecError, DATA_SPEC_HELP,
};

/// `shared/data` beside the repository (CI clones the repo next to a copy of `shared/`).
fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data")
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn load_ok(spec: &str) -> Dataset {
    load_str(spec, &LoadOptions::default()).unwrap_or_else(|e| panic!("{spec}: {e}"))
}

fn load_err(spec: &str, opts: LoadOptions) -> DatasetError {
    match load_str(spec, &opts) {
        Ok(d) => panic!("{spec}: loaded {} samples, expected an error", d.len()),
        Err(e) => e,
    }
}

fn spec_err(spec: &str) -> SpecError {
    match spec.parse::<DataSpec>() {
        Ok(s) => panic!("{spec}: parsed as {s:?}"),
        Err(e) => e,
    }
}

fn png(path: &Path, w: u32, h: u32) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::GrayImage::from_fn(w, h, |x, y| image::Luma([((x + y) % 2 * 255) as u8]))
        .save_with_format(path, image::ImageFormat::Png)
        .unwrap();
}

fn sorted(d: &Dataset) -> bool {
    d.categories
        .iter()
        .all(|c| c.samples.windows(2).all(|w| w[0].image < w[1].image))
        && d.categories.windows(2).all(|w| w[0].name < w[1].name)
}

// ---- real data -------------------------------------------------------------------------------

#[test]
fn mvtec_bottle_category_folder() {
    let root = data().join("mvtec_bottle/bottle");
    let d = load_ok(&format!("mvtec:{}", root.display()));
    assert_eq!(d.kind, DataKind::Mvtec);
    assert_eq!(d.name, "bottle");
    assert_eq!(d.categories.len(), 1);
    let c = &d.categories[0];
    assert_eq!(c.name, "bottle");
    assert_eq!(c.samples.len(), 83);
    assert_eq!(c.num_normal(), 20);
    assert_eq!(c.num_anomalous(), 63);
    assert!(c.has_masks && d.has_masks);
    assert!(c.image_metrics_defined() && c.pixel_metrics_defined());
    let masks: Vec<_> = c.samples.iter().filter_map(|s| s.mask.as_ref()).collect();
    assert_eq!(masks.len(), 63);
    for s in &c.samples {
        assert_eq!(s.anomalous, s.mask.is_some(), "{}", s.image.display());
        assert_eq!(s.anomalous, s.defect.is_some());
        if let Some(m) = &s.mask {
            let stem = s.image.file_stem().unwrap().to_str().unwrap();
            assert_eq!(
                m.file_name().unwrap().to_str().unwrap(),
                format!("{stem}_mask.png")
            );
            assert_eq!(
                m.parent().unwrap().file_name(),
                s.image.parent().unwrap().file_name()
            );
        }
    }
    let defects: BTreeSet<_> = c.samples.iter().filter_map(|s| s.defect.clone()).collect();
    assert_eq!(
        defects.into_iter().collect::<Vec<_>>(),
        ["broken_large", "broken_small", "contamination"]
    );
    let count = |d: &str| {
        c.samples
            .iter()
            .filter(|s| s.defect.as_deref() == Some(d))
            .count()
    };
    assert_eq!(
        (
            count("broken_large"),
            count("broken_small"),
            count("contamination")
        ),
        (20, 22, 21)
    );
    assert!(sorted(&d));
    // license.txt and readme.txt sit outside test/: nothing to warn about, masks match sizes.
    assert!(d.warnings.is_empty(), "{:?}", d.warnings);
}

#[test]
fn mvtec_root_of_categories_filter_and_train_split() {
    let root = data().join("mvtec_bottle");
    let d = load_ok(&format!("mvtec:{},name=MVTec AD", root.display()));
    assert_eq!(d.name, "MVTec AD");
    assert_eq!(d.categories.len(), 1);
    assert_eq!(d.categories[0].name, "bottle");
    assert_eq!(d.len(), 83);

    let d = load_ok(&format!("mvtec:{},category=bottle", root.display()));
    assert_eq!(d.len(), 83);

    let e = load_err(
        &format!("mvtec:{},category=bottle+cable", root.display()),
        LoadOptions::default(),
    );
    assert!(
        matches!(&e, DatasetError::UnknownCategory { requested, available, .. }
            if requested == "cable" && available == &["bottle"]),
        "{e}"
    );
    assert!(e.to_string().contains("available: bottle"), "{e}");

    let d = load_ok(&format!("mvtec:{},split=train", root.display()));
    assert_eq!(d.len(), 8);
    assert_eq!(d.num_normal(), 8);
    assert!(!d.categories[0].image_metrics_defined());
}

#[test]
fn colondb_only_anomalous() {
    let d = load_ok(&format!(
        "mvtec:{},name=ColonDB",
        data().join("colondb/colon").display()
    ));
    assert_eq!(d.name, "ColonDB");
    let c = &d.categories[0];
    assert_eq!(c.name, "colon");
    assert_eq!(c.num_anomalous(), 100);
    assert_eq!(c.num_normal(), 0);
    assert_eq!(c.samples.iter().filter(|s| s.mask.is_some()).count(), 100);
    assert!(c
        .samples
        .iter()
        .all(|s| s.defect.as_deref() == Some("polyp")));
    assert!(c.pixel_metrics_defined());
    assert!(!c.image_metrics_defined());
    assert!(d.warnings.is_empty(), "{:?}", d.warnings);

    // The parent folder works too: one category.
    let d = load_ok(&format!("mvtec:{}", data().join("colondb").display()));
    assert_eq!(d.name, "colondb");
    assert_eq!(d.categories[0].name, "colon");
    assert_eq!(d.len(), 100);

    // No train split there.
    let e = load_err(
        &format!(
            "mvtec:{},split=train",
            data().join("colondb/colon").display()
        ),
        LoadOptions::default(),
    );
    assert!(matches!(e, DatasetError::Missing { .. }), "{e}");
    assert!(e.to_string().contains("train split"), "{e}");
}

#[test]
fn kvasir_folder_pair() {
    let k = data().join("kvasir");
    for spec in [
        format!(
            "folder:anomalous={},masks={}",
            k.join("images").display(),
            k.join("masks").display()
        ),
        format!("folder:{},anomalous=images,masks=masks", k.display()),
        // Relative to the current folder (cargo runs tests in the crate's folder).
        "folder:anomalous=../../../shared/data/kvasir/images,masks=../../../shared/data/kvasir/masks"
            .to_string(),
    ] {
        let d = load_ok(&spec);
        assert_eq!(d.kind, DataKind::Folder);
        assert_eq!(d.name, "kvasir", "{spec}");
        assert_eq!(d.categories.len(), 1);
        let c = &d.categories[0];
        assert_eq!(c.name, "kvasir");
        assert_eq!(c.num_anomalous(), 200);
        assert_eq!(c.num_normal(), 0);
        assert!(c.has_masks && c.pixel_metrics_defined() && !c.image_metrics_defined());
        for s in &c.samples {
            let m = s.mask.as_ref().expect("every Kvasir image has a mask");
            assert_eq!(m.file_name(), s.image.file_name());
            assert!(m.parent().unwrap().ends_with("masks"));
        }
        assert!(sorted(&d));
        assert!(d.warnings.is_empty(), "{spec}: {:?}", d.warnings);
    }
}

#[test]
fn headct_manifest_through_options() {
    let spec = format!(
        "csv:{},image=id,label=hemorrhage,template=head_ct/{{:03}}.png",
        data().join("headct/labels.csv").display()
    );
    let d = load_ok(&spec);
    assert_eq!(d.kind, DataKind::Csv);
    assert_eq!(d.name, "headct");
    let c = &d.categories[0];
    assert_eq!(c.name, "headct");
    assert_eq!(c.samples.len(), 200);
    assert_eq!((c.num_normal(), c.num_anomalous()), (100, 100));
    assert!(!c.has_masks && !d.has_masks && !c.pixel_metrics_defined());
    assert!(c.image_metrics_defined());
    let first = &c.samples[0];
    assert!(
        first.image.ends_with("head_ct/000.png"),
        "{}",
        first.image.display()
    );
    assert!(first.anomalous, "id 0 is labelled 1");
    assert!(
        first.source.ends_with("labels.csv line 2"),
        "{}",
        first.source
    );
    assert!(c.samples[199].image.ends_with("head_ct/199.png"));
    assert!(!c.samples[199].anomalous);
    assert!(c.samples.iter().all(|s| s.mask.is_none()));
    assert!(d.warnings.is_empty(), "{:?}", d.warnings);

    // The column name may be written as in the header, with its leading space.
    let spec2 = format!(
        "csv:{},image=id,label=\" hemorrhage\",template=head_ct/{{:03}}.png,anomalous=1,normal=0",
        data().join("headct/labels.csv").display()
    );
    assert_eq!(load_ok(&spec2).len(), 200);
}

#[test]
fn brainmri_yes_no() {
    let d = load_ok(&format!(
        "yesno:{},name=BrainMRI",
        data().join("brainmri").display()
    ));
    assert_eq!(d.kind, DataKind::YesNo);
    assert_eq!(d.name, "BrainMRI");
    let c = &d.categories[0];
    assert_eq!(c.name, "BrainMRI");
    assert_eq!(c.num_anomalous(), 155);
    assert_eq!(c.num_normal(), 98);
    assert!(!d.has_masks && c.image_metrics_defined() && !c.pixel_metrics_defined());
    for s in &c.samples {
        let folder = s.image.parent().unwrap().file_name().unwrap();
        assert_eq!(s.anomalous, folder == "yes");
    }
    assert!(c
        .samples
        .iter()
        .any(|s| s.image.file_name().unwrap().to_str().unwrap().contains(' ')));
    // The .jpg files that are really PNGs are loaded like the rest.
    let png_named_jpg = c
        .samples
        .iter()
        .filter(|s| {
            let ext = s.image.extension().unwrap().to_ascii_lowercase();
            let head = fs::read(&s.image).unwrap();
            ext == "jpg" && head.starts_with(b"\x89PNG")
        })
        .count();
    assert_eq!(png_named_jpg, 6);
    assert!(d.warnings.is_empty(), "{:?}", d.warnings);
}

// ---- VisA fixture ----------------------------------------------------------------------------

#[test]
fn visa_fixture() {
    let root = fixtures().join("visa");
    let d = load_ok(&format!("visa:{}", root.display()));
    assert_eq!(d.kind, DataKind::Visa);
    assert_eq!(d.name, "visa");
    let names: Vec<_> = d.categories.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["candle", "pcb1"]);
    let candle = d.category("candle").unwrap();
    assert_eq!((candle.num_normal(), candle.num_anomalous()), (2, 2));
    let pcb1 = d.category("pcb1").unwrap();
    assert_eq!((pcb1.num_normal(), pcb1.num_anomalous()), (1, 2));
    assert!(d.has_masks);
    assert!(sorted(&d));
    assert!(d.warnings.is_empty(), "{:?}", d.warnings);
    // Masks are label maps (0, 1, 2): every non-zero label is anomalous, pixel for pixel where
    // the mask is square and read at its own size (the PNG decoded by the image crate is the
    // reference).
    let limits = headclip_data::images::DecodeLimits::default();
    let mut compared = 0;
    for s in d.samples() {
        assert_eq!(s.anomalous, s.mask.is_some());
        assert!(s.source.contains("1cls.csv line "), "{}", s.source);
        let Some(m) = &s.mask else { continue };
        let raw = image::open(m).unwrap().to_luma8();
        let side = raw.width();
        let mask = headclip_data::images::read_mask(m, side, &limits).unwrap();
        assert!(mask.values.iter().any(|&v| v > 0), "{}", m.display());
        if raw.height() == side {
            let want: Vec<u8> = raw.pixels().map(|p| u8::from(p.0[0] != 0)).collect();
            assert_eq!(mask.values, want, "{}", m.display());
            compared += 1;
        }
    }
    assert_eq!(compared, 2, "pcb1's two masks are square");

    let spec: DataSpec = format!("visa:{},split=train", root.display())
        .parse()
        .unwrap();
    let d = load(&spec, &LoadOptions::default()).unwrap();
    assert_eq!(d.len(), 3);
    assert_eq!(d.num_anomalous(), 0);

    let d = load_ok(&format!("visa:{},category=pcb1", root.display()));
    assert_eq!(d.categories.len(), 1);
    assert_eq!(d.len(), 3);
    assert!(d.samples().any(|s| s.image.extension().unwrap() == "png"));

    let e = load_err(
        &format!("visa:{},category=capsules", root.display()),
        LoadOptions::default(),
    );
    assert!(e.to_string().contains("available: candle, pcb1"), "{e}");
}

// ---- spec syntax -----------------------------------------------------------------------------

#[test]
fn spec_parsing() {
    let s: DataSpec = "mvtec:data/mvtec,category=bottle+cable,split=train,name=M"
        .parse()
        .unwrap();
    assert_eq!(s.kind(), DataKind::Mvtec);
    assert_eq!(s.name.as_deref(), Some("M"));
    match &s.layout {
        Layout::Mvtec(m) => {
            assert_eq!(m.root, Path::new("data/mvtec"));
            assert_eq!(m.categories.as_deref().unwrap(), ["bottle", "cable"]);
            assert_eq!(m.split.as_str(), "train");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        s.to_string(),
        "mvtec:data/mvtec,category=bottle+cable,split=train,name=M"
    );

    // folder: the first item is an option when it is one of the kind's keys, else the root.
    let s: DataSpec = "folder:normal=a,anomalous=b".parse().unwrap();
    assert!(matches!(&s.layout, Layout::Folder(f) if f.root.is_none()));
    let s: DataSpec = "folder:r,anomalous=b,masks=m,mask_suffix=_mask"
        .parse()
        .unwrap();
    match &s.layout {
        Layout::Folder(f) => {
            assert_eq!(f.root.as_deref(), Some(Path::new("r")));
            assert_eq!(f.mask_suffix, "_mask");
            assert_eq!(f.masks.as_deref(), Some(Path::new("m")));
        }
        other => panic!("{other:?}"),
    }
    // A quoted value may hold a comma.
    let s: DataSpec = "yesno:\"a,b\",yes=Y".parse().unwrap();
    assert!(matches!(&s.layout, Layout::YesNo(y)
        if y.root == Path::new("a,b") && y.yes == "Y"));
    // Template padding.
    let s: DataSpec = "csv:l.csv,image=id,label=y,template=x/{:03}_{}.png"
        .parse()
        .unwrap();
    let Layout::Csv(c) = &s.layout else { panic!() };
    let t = c.template.as_ref().unwrap();
    assert_eq!(t.apply("7").unwrap(), "x/007_7.png");
    assert_eq!(t.apply("1234").unwrap(), "x/1234_1234.png");
    assert!(t.apply("a").is_err());

    assert!(DATA_SPEC_HELP.contains("mvtec:ROOT"));
    for k in DataKind::ALL {
        assert!(DATA_SPEC_HELP.contains(&format!("{k}:")), "{k}");
    }
}

#[test]
fn spec_errors() {
    let e = spec_err("data/mvtec");
    assert!(e.message.contains("expected KIND:ROOT"), "{e}");
    assert!(
        e.to_string().contains("yesno:ROOT"),
        "shows the syntax of every kind: {e}"
    );

    let e = spec_err("mvtecc:data");
    assert!(
        e.message.contains("unknown data set kind \"mvtecc\""),
        "{e}"
    );
    assert!(e.message.contains("mvtec, visa, folder, csv, yesno"), "{e}");

    let e = spec_err("mvtec:data,colour=red");
    assert_eq!(e.kind, Some(DataKind::Mvtec));
    assert!(e.message.contains("unknown option \"colour\""), "{e}");
    assert!(e.message.contains("name, category, split"), "{e}");
    assert!(e.to_string().contains("expected: mvtec:ROOT"), "{e}");

    let e = spec_err("mvtec:");
    assert!(e.message.contains("root folder is missing"), "{e}");
    let e = spec_err("csv:labels.csv,label=y");
    assert!(e.message.contains("image=COL and label=COL"), "{e}");
    let e = spec_err("csv:labels.csv,image=id,label=y,template=head_ct/{:3}.png");
    assert!(e.message.contains("{:0N}"), "{e}");
    let e = spec_err("csv:labels.csv,image=id,label=y,template=head_ct.png");
    assert!(e.message.contains("no placeholder"), "{e}");
    let e = spec_err("csv:labels.csv,image=id,label=y,anomalous=1,normal=1+0");
    assert!(e.message.contains("both anomalous and normal"), "{e}");
    let e = spec_err("mvtec:data,split=val");
    assert!(e.message.contains("split=test or split=train"), "{e}");
    let e = spec_err("mvtec:data,split=test,split=train");
    assert!(e.message.contains("given twice"), "{e}");
    let e = spec_err("mvtec:data,category=");
    assert!(e.message.contains("empty value"), "{e}");
    let e = spec_err("mvtec:data,bottle");
    assert!(e.message.contains("expected key=value"), "{e}");
    let e = spec_err("folder:root");
    assert!(e.message.contains("normal=DIR and/or anomalous=DIR"), "{e}");
    let e = spec_err("folder:normal=a,masks=m");
    assert!(e.message.contains("anomalous=DIR is missing"), "{e}");
    let e = spec_err("yesno:\"data");
    assert!(e.message.contains("not closed"), "{e}");

    // load_str turns spec errors into DatasetError::Spec.
    let e = load_err("nope", LoadOptions::default());
    assert!(matches!(e, DatasetError::Spec(_)), "{e}");
}

#[test]
fn missing_roots() {
    let e = load_err("mvtec:/nonexistent/mvtec", LoadOptions::default());
    assert!(matches!(e, DatasetError::Missing { .. }), "{e}");
    assert!(
        e.to_string().contains("/nonexistent/mvtec does not exist"),
        "{e}"
    );
    let e = load_err(
        "csv:/nonexistent/labels.csv,image=a,label=b",
        LoadOptions::default(),
    );
    assert!(
        e.to_string()
            .contains("manifest /nonexistent/labels.csv does not exist"),
        "{e}"
    );
    let e = load_err(
        &format!(
            "folder:{},anomalous=pictures",
            data().join("kvasir").display()
        ),
        LoadOptions::default(),
    );
    assert!(e.to_string().contains("anomalous image folder"), "{e}");
    let e = load_err(
        &format!("yesno:{}", data().join("kvasir").display()),
        LoadOptions::default(),
    );
    assert!(e.to_string().contains("(yes=)"), "{e}");
    let e = load_err(
        &format!("visa:{}", data().join("kvasir").display()),
        LoadOptions::default(),
    );
    assert!(e.to_string().contains("split_csv/1cls.csv"), "{e}");
    let e = load_err(
        &format!("mvtec:{}", data().join("kvasir").display()),
        LoadOptions::default(),
    );
    assert!(matches!(e, DatasetError::NotLayout { .. }), "{e}");
}

// ---- generated layouts -----------------------------------------------------------------------

/// A tiny MVTec category: test/good/000.png, test/crack/000.png + 001.png, one mask.
fn tiny_mvtec(dir: &Path) -> PathBuf {
    let cat = dir.join("widget");
    png(&cat.join("test/good/000.png"), 8, 8);
    png(&cat.join("test/crack/000.png"), 8, 8);
    png(&cat.join("test/crack/001.png"), 8, 8);
    png(&cat.join("ground_truth/crack/000_mask.png"), 8, 8);
    cat
}

#[test]
fn missing_mask_error_and_allow_missing_masks() {
    let tmp = tempfile::tempdir().unwrap();
    let cat = tiny_mvtec(tmp.path());
    let spec = format!("mvtec:{}", cat.display());
    let e = load_err(&spec, LoadOptions::default());
    match &e {
        DatasetError::MissingMask { image, .. } => assert!(image.ends_with("crack/001.png")),
        other => panic!("{other}"),
    }
    let msg = e.to_string();
    assert!(
        msg.contains("crack/001.png") && msg.contains("001_mask.png"),
        "{msg}"
    );

    let d = load_str(
        &spec,
        &LoadOptions {
            allow_missing_masks: true,
            ..LoadOptions::default()
        },
    )
    .unwrap();
    assert_eq!(d.len(), 3);
    assert!(!d.has_masks && !d.categories[0].has_masks);
    assert!(!d.categories[0].pixel_metrics_defined());
    assert!(d.warnings.iter().any(|w| matches!(w,
        DatasetWarning::MissingMasks { category, count: 1, .. } if category == "widget")));

    // Adding the mask (named by stem alone, as some MVTec-like sets do) fixes it.
    png(&cat.join("ground_truth/crack/001.png"), 8, 8);
    let d = load_ok(&spec);
    assert!(d.has_masks);
    assert_eq!(d.samples().filter(|s| s.mask.is_some()).count(), 2);
}

#[test]
fn stray_files_mask_sizes_and_empty_categories() {
    let tmp = tempfile::tempdir().unwrap();
    let cat = tiny_mvtec(tmp.path());
    png(&cat.join("ground_truth/crack/001_mask.png"), 8, 8);
    fs::write(cat.join("test/good/notes.txt"), "not an image").unwrap();
    fs::write(cat.join("test/good/.DS_Store"), "hidden").unwrap();
    // An image by its bytes is kept whatever its name says.
    png(&cat.join("test/good/001.dat"), 8, 8);
    // A mask of another size is a warning, not an error.
    png(&cat.join("ground_truth/crack/000_mask.png"), 4, 8);
    let d = load_ok(&format!("mvtec:{}", cat.display()));
    assert_eq!(d.categories[0].num_normal(), 2);
    assert_eq!(d.len(), 4);
    assert!(d.warnings.iter().any(|w| matches!(w,
        DatasetWarning::SkippedFile { path, reason } if path.ends_with("notes.txt")
            && reason == "not an image: the file looks like text")));
    assert!(d.warnings.iter().any(|w| matches!(
        w,
        DatasetWarning::MaskSizeMismatch {
            image_size: (8, 8),
            mask_size: (4, 8),
            ..
        }
    )));
    assert_eq!(d.warnings.len(), 2, "{:?}", d.warnings);
    let shown: Vec<String> = d.warnings.iter().map(|w| w.to_string()).collect();
    assert!(shown.iter().any(|w| w.contains("4×8")), "{shown:?}");
    // Without size checks the mismatch is not seen.
    let d = load_str(
        &format!("mvtec:{}", cat.display()),
        &LoadOptions {
            check_sizes: false,
            ..LoadOptions::default()
        },
    )
    .unwrap();
    assert_eq!(d.warnings.len(), 1);

    // A category with no images at all.
    let empty = tmp.path().join("empty");
    fs::create_dir_all(empty.join("test/good")).unwrap();
    fs::write(empty.join("test/good/readme.txt"), "nothing").unwrap();
    let e = load_err(
        &format!("mvtec:{}", empty.display()),
        LoadOptions::default(),
    );
    assert!(matches!(e, DatasetError::EmptyCategory { .. }), "{e}");

    // A mask that is not an image is an error naming it.
    fs::write(cat.join("ground_truth/crack/001_mask.png"), "text").unwrap();
    let e = load_err(&format!("mvtec:{}", cat.display()), LoadOptions::default());
    assert!(matches!(e, DatasetError::NotAnImage { .. }), "{e}");
    assert!(e.to_string().contains("001_mask.png"), "{e}");
}

#[test]
fn folder_mask_suffix_and_normals() {
    let tmp = tempfile::tempdir().unwrap();
    let r = tmp.path();
    png(&r.join("ok/a.png"), 8, 8);
    png(&r.join("ok/b.png"), 8, 8);
    png(&r.join("bad/x.png"), 8, 8);
    png(&r.join("gt/x_gt.png"), 8, 8);
    png(&r.join("gt/y_gt.png"), 8, 8);
    let spec = format!(
        "folder:{},normal=ok,anomalous=bad,masks=gt,mask_suffix=_gt,category=parts,name=Parts",
        r.display()
    );
    let d = load_ok(&spec);
    assert_eq!(d.name, "Parts");
    assert_eq!(d.categories[0].name, "parts");
    assert_eq!((d.num_normal(), d.num_anomalous()), (2, 1));
    assert!(d.has_masks && d.categories[0].image_metrics_defined());
    assert!(d
        .samples()
        .any(|s| s.mask.as_ref().is_some_and(|m| m.ends_with("gt/x_gt.png"))));
    // y_gt.png belongs to no image.
    assert!(d
        .warnings
        .iter()
        .any(|w| matches!(w, DatasetWarning::UnusedMasks { count: 1, .. })));

    // Without the suffix nothing matches.
    let e = load_err(
        &format!("folder:{},anomalous=bad,masks=gt", r.display()),
        LoadOptions::default(),
    );
    assert!(e.to_string().contains("gt/x.<ext>"), "{e}");

    // Two masks with one stem are ambiguous.
    png(&r.join("gt/x_gt.jpg"), 8, 8);
    let e = load_err(&spec, LoadOptions::default());
    assert!(matches!(e, DatasetError::AmbiguousMask { .. }), "{e}");

    // Image-level folder pair.
    let d = load_ok(&format!(
        "folder:normal={},anomalous={}",
        r.join("ok").display(),
        r.join("bad").display()
    ));
    assert!(!d.has_masks);
    assert_eq!(d.len(), 3);
}

#[test]
fn manifest_errors_name_the_line() {
    let tmp = tempfile::tempdir().unwrap();
    let r = tmp.path();
    png(&r.join("img/0.png"), 8, 8);
    png(&r.join("img/1.png"), 8, 8);
    png(&r.join("img/m1.png"), 8, 8);
    fs::write(r.join("readme.txt"), "text").unwrap();
    let csv = r.join("list.csv");
    let spec = |extra: &str| format!("csv:{},image=file,label=status{extra}", csv.display());

    // A missing file, on line 3.
    fs::write(&csv, "file, status\nimg/0.png,ok\nimg/2.png,defect\n").unwrap();
    let e = load_err(&spec(",anomalous=defect,normal=ok"), LoadOptions::default());
    match &e {
        DatasetError::MissingFile { line, path, .. } => {
            assert_eq!(*line, 3);
            assert!(path.ends_with("img/2.png"));
        }
        other => panic!("{other}"),
    }
    assert!(e.to_string().contains("list.csv line 3"), "{e}");

    // An unknown label, on line 3, with the accepted values.
    fs::write(&csv, "file, status\nimg/0.png,ok\nimg/1.png,broken\n").unwrap();
    let e = load_err(&spec(",anomalous=defect,normal=ok"), LoadOptions::default());
    assert!(matches!(&e, DatasetError::UnknownLabel { line: 3, value, .. } if value == "broken"));
    let msg = e.to_string();
    assert!(
        msg.contains("line 3") && msg.contains("\"broken\""),
        "{msg}"
    );
    assert!(msg.contains("anomalous = defect; normal = ok"), "{msg}");
    // Default label values.
    let e = load_err(&spec(""), LoadOptions::default());
    assert!(
        e.to_string().contains("line 2") && e.to_string().contains("\"ok\""),
        "{e}"
    );

    // Line numbers count physical lines: a quoted field over two lines, CRLF endings and a blank
    // line before the bad row (line 5); a UTF-8 byte-order mark does not hide the first column.
    fs::write(
        &csv,
        "\u{feff}file,status,note\r\nimg/0.png,ok,\"two\nlines\"\r\n\r\nimg/1.png,broken,\r\n",
    )
    .unwrap();
    let e = load_err(&spec(",anomalous=defect,normal=ok"), LoadOptions::default());
    assert!(
        matches!(&e, DatasetError::UnknownLabel { line: 5, .. }),
        "{e}"
    );

    // An id without template= gets a hint.
    fs::write(&csv, "file,status\n0,0\n").unwrap();
    let e = load_err(&spec(""), LoadOptions::default());
    assert!(e.to_string().contains("use template="), "{e}");

    // A listed file that is not an image: the message says what it looks like.
    fs::write(
        r.join("page.png"),
        "<!DOCTYPE html>\n<html><body>Not found</body></html>",
    )
    .unwrap();
    fs::write(&csv, "file,status\nreadme.txt,0\npage.png,1\n").unwrap();
    let e = load_err(&spec(""), LoadOptions::default());
    assert!(matches!(e, DatasetError::NotAnImage { .. }), "{e}");
    assert!(e.to_string().contains("list.csv line 2"), "{e}");
    assert!(e.to_string().ends_with("the file looks like text"), "{e}");
    fs::write(&csv, "file,status\npage.png,1\n").unwrap();
    let e = load_err(&spec(""), LoadOptions::default());
    assert!(e.to_string().ends_with("the file looks like HTML"), "{e}");

    // Wrong field count, missing column, empty manifest.
    fs::write(&csv, "file,status\nimg/0.png,0,extra\n").unwrap();
    let e = load_err(&spec(""), LoadOptions::default());
    assert!(e.to_string().contains("line 2: 3 fields"), "{e}");
    fs::write(&csv, "file,status\nimg/0.png,0\n").unwrap();
    let e = load_err(&spec(",mask=gt"), LoadOptions::default());
    assert!(e.to_string().contains("no column \"gt\""), "{e}");
    assert!(e.to_string().contains("file, status"), "{e}");
    fs::write(&csv, "file,status\n").unwrap();
    let e = load_err(&spec(""), LoadOptions::default());
    assert!(matches!(e, DatasetError::NoImages { .. }), "{e}");

    // Masks from a column: an anomalous row without one is an error unless allowed.
    fs::write(
        &csv,
        "file,status,gt\nimg/0.png,0,\n\"img/1.png\",1,img/m1.png\nimg/m1.png,1,\n",
    )
    .unwrap();
    let e = load_err(&spec(",mask=gt"), LoadOptions::default());
    assert!(
        matches!(&e, DatasetError::MissingMask { origin, .. } if origin.ends_with("line 4")),
        "{e}"
    );
    let d = load_str(
        &spec(",mask=gt,category=c"),
        &LoadOptions {
            allow_missing_masks: true,
            ..LoadOptions::default()
        },
    )
    .unwrap();
    assert_eq!(d.categories[0].name, "c");
    assert!(!d.has_masks);
    assert_eq!(d.len(), 3);
}

#[test]
fn visa_manifest_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let r = tmp.path();
    png(&r.join("obj/a.png"), 8, 8);
    png(&r.join("obj/b.png"), 8, 8);
    fs::create_dir_all(r.join("split_csv")).unwrap();
    let m = r.join("split_csv/1cls.csv");
    fs::write(
        &m,
        "object,split,label,image,mask\nobj,test,normal,obj/a.png,\nobj,test,anomaly,obj/b.png,\n",
    )
    .unwrap();
    let e = load_err(&format!("visa:{}", r.display()), LoadOptions::default());
    assert!(
        matches!(&e, DatasetError::MissingMask { origin, .. } if origin.ends_with("1cls.csv line 3")),
        "{e}"
    );
    fs::write(
        &m,
        "object,split,label,image,mask\nobj,test,normal,obj/a.png,\nobj,test,bad,obj/b.png,\n",
    )
    .unwrap();
    let e = load_err(&format!("visa:{}", r.display()), LoadOptions::default());
    assert!(
        e.to_string().contains("line 3: unknown label \"bad\""),
        "{e}"
    );
    assert!(e.to_string().contains("anomaly"), "{e}");
}

#[test]
fn manifest_repeats_warn_and_conflicting_labels_fail() {
    let tmp = tempfile::tempdir().unwrap();
    let r = tmp.path();
    png(&r.join("img/0.png"), 8, 8);
    png(&r.join("img/1.png"), 8, 8);
    let csv = r.join("list.csv");
    let spec = format!("csv:{},image=file,label=status", csv.display());

    // The same image twice with the same label: a warning naming both lines, counted once.
    fs::write(
        &csv,
        "file,status\nimg/0.png,0\nimg/1.png,1\n./img/../img/0.png,0\nimg/0.png,0\n",
    )
    .unwrap();
    let d = load_ok(&spec);
    assert_eq!((d.num_normal(), d.num_anomalous()), (1, 1));
    assert!(
        d.warnings.iter().any(|w| matches!(w,
            DatasetWarning::DuplicateRow { first_line: 2, line: 5, image, .. }
                if image.ends_with("img/0.png"))),
        "{:?}",
        d.warnings
    );
    assert!(d
        .warnings
        .iter()
        .any(|w| w.to_string().contains("list.csv line 5")));

    // The same image labelled both ways: an error naming the manifest, both lines and the image.
    fs::write(
        &csv,
        "file,status\nimg/0.png,0\nimg/1.png,1\nimg/0.png,yes\n",
    )
    .unwrap();
    let e = load_err(&spec, LoadOptions::default());
    assert!(
        matches!(
            &e,
            DatasetError::ConflictingLabels {
                first_line: 2,
                line: 4,
                ..
            }
        ),
        "{e}"
    );
    let msg = e.to_string();
    for part in [
        "list.csv",
        "img/0.png",
        "normal on line 2",
        "anomalous on line 4",
    ] {
        assert!(msg.contains(part), "{part}: {msg}");
    }

    // VisA's manifest too.
    fs::create_dir_all(r.join("split_csv")).unwrap();
    let m = r.join("split_csv/1cls.csv");
    let header = "object,split,label,image,mask\n";
    fs::write(
        &m,
        format!("{header}obj,test,normal,img/0.png,\nobj,test,normal,img/0.png,\n"),
    )
    .unwrap();
    let d = load_ok(&format!("visa:{}", r.display()));
    assert_eq!(d.len(), 1);
    assert!(d.warnings.iter().any(|w| matches!(
        w,
        DatasetWarning::DuplicateRow {
            first_line: 2,
            line: 3,
            ..
        }
    )));
    fs::write(
        &m,
        format!("{header}obj,test,anomaly,img/0.png,img/1.png\nobj,test,normal,img/0.png,\n"),
    )
    .unwrap();
    let e = load_err(&format!("visa:{}", r.display()), LoadOptions::default());
    assert!(
        matches!(
            &e,
            DatasetError::ConflictingLabels {
                first_line: 2,
                line: 3,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("1cls.csv"), "{e}");
}

/// A grey PNG of one value.
fn flat_png(path: &Path, value: u8) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::GrayImage::from_pixel(8, 8, image::Luma([value]))
        .save_with_format(path, image::ImageFormat::Png)
        .unwrap();
}

#[test]
fn folder_labels_from_masks_and_empty_masks() {
    let tmp = tempfile::tempdir().unwrap();
    let r = tmp.path();
    for name in ["a", "b", "c"] {
        png(&r.join(format!("imgs/{name}.png")), 8, 8);
    }
    flat_png(&r.join("gt/a.png"), 0); // empty: normal
    png(&r.join("gt/b.png"), 8, 8); // 0/255: anomalous
    flat_png(&r.join("gt/c.png"), 1); // a label map's 1: anomalous by the mask rule
    let spec = format!("folder:{},images=imgs,masks=gt", r.display());
    let d = load_ok(&spec);
    assert!(d.has_masks);
    let label = |n: &str| {
        let s = d.samples().find(|s| s.image.ends_with(n)).unwrap();
        (s.anomalous, s.mask.is_some())
    };
    assert_eq!(
        [label("a.png"), label("b.png"), label("c.png")],
        [(false, false), (true, true), (true, true)]
    );
    assert!(d.warnings.is_empty(), "{:?}", d.warnings);

    // An image without a mask has no label.
    fs::remove_file(r.join("gt/c.png")).unwrap();
    let e = load_err(&spec, LoadOptions::default());
    assert!(
        matches!(&e, DatasetError::UnlabelledImage { image, .. } if image.ends_with("imgs/c.png")),
        "{e}"
    );
    assert!(e.to_string().contains("gt/c.<ext>"), "{e}");

    // anomalous= with an empty mask: a warning naming the image.
    fs::remove_file(r.join("imgs/c.png")).unwrap();
    let d = load_ok(&format!("folder:{},anomalous=imgs,masks=gt", r.display()));
    assert_eq!(d.num_anomalous(), 2);
    let empty: Vec<_> = d
        .warnings
        .iter()
        .filter_map(|w| match w {
            DatasetWarning::EmptyMask { image, .. } => Some(image.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(empty.len(), 1, "{:?}", d.warnings);
    assert!(empty[0].ends_with("imgs/a.png"));

    // The spec's rules for images=.
    let e = spec_err("folder:r,images=i");
    assert!(e.message.contains("images= needs masks=DIR"), "{e}");
    let e = spec_err("folder:r,images=i,normal=n,masks=m");
    assert!(e.message.contains("cannot be combined"), "{e}");
    assert!(DATA_SPEC_HELP.contains("images=DIR,masks=DIR"));
}
