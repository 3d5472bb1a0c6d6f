//! JSON-aware mutations: a value somewhere in the document becomes a number at a range's edge,
//! another type, a huge array or string, or disappears; keys appear and vanish. Settings files
//! (`headclip.config`, training states, safetensors headers, CLIP configs) stay valid JSON, so
//! the edit reaches the code that checks each field.

use fastrand::Rng;
use serde_json::{json, Map, Value};

const MAX_NODES_TO_GROW: usize = 5_000;

/// Edits one to a few values of `doc`.
pub fn mutate(rng: &mut Rng, doc: &mut Value) {
    for _ in 0..super::edit_count(rng) {
        let paths = paths(doc);
        let path = &paths[rng.usize(..paths.len())];
        let node = node_at(doc, path);
        match rng.u32(0..6) {
            0 | 1 => *node = interesting(rng),
            2 => nudge(rng, node),
            3 => remove_child(rng, node),
            4 => add_child(rng, node),
            // Growing a document that is already big only costs the harness time.
            _ if paths.len() > MAX_NODES_TO_GROW => *node = interesting(rng),
            _ => *node = grown(rng, node.clone()),
        }
    }
}

/// Paths listed at most: a grown document has millions of nodes, and listing them all would
/// cost the harness more than the input costs the code under test.
const MAX_PATHS: usize = 20_000;

/// Nodes' paths from the root, breadth first (so shallow nodes are always there), as object keys
/// and array indices (the root is `[]`); at most [`MAX_PATHS`].
fn paths(doc: &Value) -> Vec<Vec<Step>> {
    let mut out = vec![Vec::new()];
    let mut i = 0;
    while i < out.len() && out.len() < MAX_PATHS {
        let path = out[i].clone();
        match node_at_ref(doc, &path) {
            Value::Object(m) => out.extend(m.keys().map(|k| push(&path, Step::Key(k.clone())))),
            Value::Array(a) => out.extend((0..a.len()).map(|j| push(&path, Step::Index(j)))),
            _ => {}
        }
        i += 1;
    }
    out
}

#[derive(Clone)]
enum Step {
    Key(String),
    Index(usize),
}

fn push(path: &[Step], step: Step) -> Vec<Step> {
    let mut p = path.to_vec();
    p.push(step);
    p
}

fn node_at_ref<'v>(doc: &'v Value, path: &[Step]) -> &'v Value {
    path.iter().fold(doc, |v, s| match s {
        Step::Key(k) => &v[k.as_str()],
        Step::Index(i) => &v[*i],
    })
}

fn node_at<'v>(doc: &'v mut Value, path: &[Step]) -> &'v mut Value {
    path.iter().fold(doc, |v, s| match s {
        Step::Key(k) => &mut v[k.as_str()],
        Step::Index(i) => &mut v[*i],
    })
}

/// A value at the edge of some range, or of the wrong type.
fn interesting(rng: &mut Rng) -> Value {
    let choices = [
        json!(0),
        json!(-1),
        json!(1),
        json!(2),
        json!(i32::MAX),
        json!(1u64 << 32),
        json!(1u64 << 40),
        json!((1u64 << 53) + 1),
        json!(u64::MAX),
        json!(i64::MIN),
        json!(65_536),
        json!(1e15),
        json!(1e300),
        json!(-1e300),
        json!(1e-300),
        json!(-0.0),
        json!(0.5),
        json!(""),
        json!("NaN"),
        json!("inf"),
        json!("F32"),
        json!("I64"),
        json!(null),
        json!(true),
        json!([]),
        json!({}),
    ];
    choices[rng.usize(..choices.len())].clone()
}

/// A number moved by a little or a lot; other values left alone.
fn nudge(rng: &mut Rng, node: &mut Value) {
    let Some(x) = node.as_f64() else {
        return;
    };
    let y = match rng.u32(0..5) {
        0 => x + 1.0,
        1 => x - 1.0,
        2 => -x,
        3 => x * 1e6,
        _ => x * 2.0,
    };
    *node = if y.fract() == 0.0 && y.abs() < 9e15 {
        json!(y as i64)
    } else {
        json!(y)
    };
}

fn remove_child(rng: &mut Rng, node: &mut Value) {
    match node {
        Value::Object(m) if !m.is_empty() => {
            let key = m
                .keys()
                .nth(rng.usize(..m.len()))
                .cloned()
                .unwrap_or_default();
            m.remove(&key);
        }
        Value::Array(a) if !a.is_empty() => {
            a.remove(rng.usize(..a.len()));
        }
        _ => {}
    }
}

fn add_child(rng: &mut Rng, node: &mut Value) {
    match node {
        Value::Object(m) => {
            let key = [
                "unknown",
                "__metadata__",
                "dtype",
                "shape",
                "data_offsets",
                "",
            ][rng.usize(..6)];
            m.insert(key.to_string(), interesting(rng));
        }
        Value::Array(a) => {
            let copy = if a.is_empty() {
                interesting(rng)
            } else {
                a[rng.usize(..a.len())].clone()
            };
            a.insert(rng.usize(..=a.len()), copy);
        }
        _ => {}
    }
}

/// A big version of the value: a long array, a long string, or a deep nest.
fn grown(rng: &mut Rng, node: Value) -> Value {
    match rng.u32(0..3) {
        0 => {
            // About a megabyte at most, however big the repeated value.
            let size = serde_json::to_string(&node).map_or(1, |t| t.len() + 1);
            let copies = rng.usize(1..=2_000).min(1_000_000 / size).max(1);
            Value::Array(vec![node; copies])
        }
        1 => Value::String("x".repeat(rng.usize(1..=100_000))),
        _ => {
            let mut v = node;
            for _ in 0..rng.usize(1..=200) {
                let mut m = Map::new();
                m.insert("a".into(), v);
                v = Value::Object(m);
            }
            v
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_change_and_stay_json() {
        let doc = json!({"image_size": 224, "readout": [3, 6], "lhw_form": "softmax"});
        let mut rng = Rng::with_seed(1);
        let mut changed = 0;
        for _ in 0..100 {
            let mut d = doc.clone();
            mutate(&mut rng, &mut d);
            changed += usize::from(d != doc);
            serde_json::to_string(&d).unwrap();
        }
        assert!(changed > 80, "{changed}");
    }
}
