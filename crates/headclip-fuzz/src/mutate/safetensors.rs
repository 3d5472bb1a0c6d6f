//! Safetensors-aware mutations: the JSON header (dtypes, shapes, data offsets, metadata), the
//! JSON documents stored as metadata strings (`headclip.config`, training states), the header's
//! length field, and the tensor bytes (NaN and infinity included), each written back with a
//! consistent length unless the edit is the length itself.

use fastrand::Rng;
use serde_json::Value;

struct File {
    header: Value,
    data: Vec<u8>,
}

/// Mutates a safetensors file; bytes that do not parse as one get format-blind edits instead.
pub fn mutate(rng: &mut Rng, bytes: &mut Vec<u8>, partner: &[u8]) {
    let Some(mut file) = parse(bytes) else {
        return super::bytes(rng, bytes, partner);
    };
    match rng.u32(0..10) {
        0..=3 => edit_metadata_document(rng, &mut file),
        4 | 5 => super::json::mutate(rng, &mut file.header),
        6 => edit_tensor_bytes(rng, &mut file.data),
        7 => {
            let mut out = write(&file);
            edit_header_text(rng, &mut out, partner);
            *bytes = out;
            return;
        }
        8 => {
            let mut out = write(&file);
            let lie = [0u64, 1, 7, u64::MAX, 1 << 40][rng.usize(..5)];
            let true_len = u64::from_le_bytes(out[..8].try_into().unwrap_or_default());
            let len = if rng.bool() {
                lie
            } else {
                true_len.wrapping_add(rng.u64(0..8)).wrapping_sub(4)
            };
            out[..8].copy_from_slice(&len.to_le_bytes());
            *bytes = out;
            return;
        }
        _ => file.data.truncate(rng.usize(..=file.data.len())),
    }
    *bytes = write(&file);
}

fn parse(bytes: &[u8]) -> Option<File> {
    let n = usize::try_from(u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?)).ok()?;
    let header_end = 8usize.checked_add(n)?;
    let header = serde_json::from_slice(bytes.get(8..header_end)?).ok()?;
    Some(File {
        header,
        data: bytes[header_end..].to_vec(),
    })
}

fn write(file: &File) -> Vec<u8> {
    let header = serde_json::to_vec(&file.header).unwrap_or_default();
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&header);
    out.extend_from_slice(&file.data);
    out
}

/// Mutates a JSON document stored as a metadata string; without one, a metadata value.
fn edit_metadata_document(rng: &mut Rng, file: &mut File) {
    let Some(Value::Object(meta)) = file.header.get_mut("__metadata__") else {
        return super::json::mutate(rng, &mut file.header);
    };
    let documents: Vec<String> = meta
        .iter()
        .filter(|(_, v)| {
            v.as_str()
                .is_some_and(|s| s.trim_start().starts_with(['{', '[']))
        })
        .map(|(k, _)| k.clone())
        .collect();
    let Some(key) = documents.get(rng.usize(..documents.len().max(1))) else {
        let mut m = Value::Object(meta.clone());
        super::json::mutate(rng, &mut m);
        file.header["__metadata__"] = m;
        return;
    };
    let text = meta[key].as_str().unwrap_or_default();
    let mut doc: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    let new_text = if rng.u32(0..6) == 0 {
        // Broken JSON too, now and then.
        let mut raw = text.as_bytes().to_vec();
        super::edit(rng, &mut raw, &[]);
        String::from_utf8_lossy(&raw).into_owned()
    } else {
        super::json::mutate(rng, &mut doc);
        doc.to_string()
    };
    meta.insert(key.clone(), Value::String(new_text));
}

/// Writes NaN, infinity, huge or edge bit patterns into the tensor bytes.
fn edit_tensor_bytes(rng: &mut Rng, data: &mut Vec<u8>) {
    if data.len() < 4 {
        return super::edit(rng, data, &[]);
    }
    let values = [
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::MAX,
        1e30,
        f32::MIN_POSITIVE,
    ];
    let at = rng.usize(..=data.len() - 4) & !3;
    let v = values[rng.usize(..values.len())];
    data[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// Byte edits inside the header text only (the tensor data is megabytes).
fn edit_header_text(rng: &mut Rng, out: &mut Vec<u8>, partner: &[u8]) {
    let end =
        (8 + u64::from_le_bytes(out[..8].try_into().unwrap_or_default()) as usize).min(out.len());
    let mut header = out[8..end].to_vec();
    super::edit(
        rng,
        &mut header,
        partner.get(..partner.len().min(4096)).unwrap_or_default(),
    );
    out.splice(8..end, header);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_documents_are_mutated_in_place() {
        let header = serde_json::json!({
            "__metadata__": {"headclip.config": "{\"image_size\":224}"},
            "t": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}
        });
        let original = write(&File {
            header,
            data: vec![0; 4],
        });
        let mut rng = Rng::with_seed(5);
        let mut still_parse = 0;
        for _ in 0..100 {
            let mut b = original.clone();
            mutate(&mut rng, &mut b, &[]);
            still_parse += usize::from(parse(&b).is_some());
        }
        assert!(still_parse > 50, "{still_parse}");
    }
}
