//! The Open Inference Protocol's tensors as they travel: JSON `data`, or raw bytes after
//! the JSON header with the binary tensor data extension (Triton's, which `tritonclient`
//! uses by default): `Inference-Header-Content-Length` says where the JSON ends, each
//! input's `binary_data_size` how many of the following bytes are its; a BYTES element is
//! a 4-byte little-endian length and then its bytes; FP32 is little-endian.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::ProtocolError;

pub const HEADER_LENGTH: &str = "inference-header-content-length";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InferRequest {
    #[serde(default)]
    pub id: Option<String>,
    /// The kserve SDK repeats the path's model (and version) in the body.
    #[serde(default)]
    pub model_name: Option<String>,
    #[serde(default)]
    pub model_version: Option<String>,
    #[serde(default)]
    pub parameters: Map<String, Value>,
    pub inputs: Vec<InputTensor>,
    #[serde(default)]
    pub outputs: Vec<RequestedOutput>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputTensor {
    pub name: String,
    pub shape: Vec<i64>,
    pub datatype: String,
    #[serde(default)]
    pub parameters: Map<String, Value>,
    #[serde(default)]
    pub data: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestedOutput {
    pub name: String,
    #[serde(default)]
    pub parameters: Map<String, Value>,
}

/// An input's values, from JSON or from the binary part.
#[derive(Debug)]
pub enum Values {
    Bytes(Vec<Vec<u8>>),
    Fp32(Vec<f32>),
}

/// Each input's part of the binary data (None: its values are in its JSON `data`).
pub type BinaryParts = Vec<Option<Vec<u8>>>;

/// Splits the body into the request and each input's binary part (in the inputs' order).
pub fn parse(
    body: &[u8],
    header_length: Option<&str>,
) -> Result<(InferRequest, BinaryParts), ProtocolError> {
    let json_length = match header_length {
        None => body.len(),
        Some(text) => {
            let n: usize = text.trim().parse().map_err(|_| {
                ProtocolError::bad_request(format!(
                    "Inference-Header-Content-Length = {text:?}: not a byte count"
                ))
            })?;
            if n > body.len() {
                return Err(ProtocolError::bad_request(format!(
                    "Inference-Header-Content-Length = {n}, but the body is {} bytes",
                    body.len()
                )));
            }
            n
        }
    };
    let (json, mut binary) = body.split_at(json_length);
    let request: InferRequest = serde_json::from_slice(json).map_err(|e| {
        ProtocolError::bad_request(format!("the body is not an inference request: {e}"))
    })?;
    let mut parts = Vec::with_capacity(request.inputs.len());
    for input in &request.inputs {
        match input.parameters.get("binary_data_size") {
            None => parts.push(None),
            Some(size) => {
                let size = size.as_u64().ok_or_else(|| {
                    ProtocolError::bad_request(format!(
                        "input `{}`: binary_data_size is a byte count",
                        input.name
                    ))
                })? as usize;
                if size > binary.len() {
                    return Err(ProtocolError::bad_request(format!(
                        "input `{}`: binary_data_size {size}, but {} bytes of binary data are left",
                        input.name,
                        binary.len()
                    )));
                }
                let (part, rest) = binary.split_at(size);
                parts.push(Some(part.to_vec()));
                binary = rest;
            }
        }
    }
    if !binary.is_empty() {
        return Err(ProtocolError::bad_request(format!(
            "{} bytes of binary data after the inputs' binary_data_size",
            binary.len()
        )));
    }
    Ok((request, parts))
}

/// The input's values, checked against its datatype and shape.
pub fn values(input: &InputTensor, binary: Option<Vec<u8>>) -> Result<Values, ProtocolError> {
    let bad = |m: String| ProtocolError::bad_request(format!("input `{}`: {m}", input.name));
    if input.shape.iter().any(|&d| d < 0) {
        return Err(bad(format!("shape {:?} has a negative size", input.shape)));
    }
    let count = input
        .shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d as usize))
        .ok_or_else(|| bad(format!("shape {:?} is too large", input.shape)))?;
    let values = match (input.datatype.as_str(), binary, &input.data) {
        (_, Some(_), Some(_)) => {
            return Err(bad(
                "has both `data` and binary_data_size: one or the other".into(),
            ))
        }
        (_, None, None) => return Err(bad("has no `data` and no binary data".into())),
        ("BYTES", Some(raw), None) => Values::Bytes(split_bytes(&raw).map_err(bad)?),
        ("BYTES", None, Some(data)) => {
            let mut elements = Vec::new();
            flatten(data, &mut elements);
            let decoded = elements
                .into_iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Value::String(text) => base64_simd::forgiving_decode_to_vec(text.as_bytes())
                        .map_err(|_| bad(format!("element {i} is not base64: in JSON `data` a BYTES element is the file's bytes as base64"))),
                    other => Err(bad(format!("element {i} is {other}, not a string"))),
                })
                .collect::<Result<Vec<_>, _>>()?;
            Values::Bytes(decoded)
        }
        ("FP32", Some(raw), None) => {
            if raw.len() % 4 != 0 {
                return Err(bad(format!(
                    "{} bytes of binary data is not a whole number of FP32 values",
                    raw.len()
                )));
            }
            Values::Fp32(
                raw.chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
            )
        }
        ("FP32", None, Some(data)) => {
            let mut elements = Vec::new();
            flatten(data, &mut elements);
            let floats = elements
                .into_iter()
                .enumerate()
                .map(|(i, v)| {
                    v.as_f64()
                        .map(|x| x as f32)
                        .ok_or_else(|| bad(format!("element {i} is {v}, not a number")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            Values::Fp32(floats)
        }
        (other, _, _) => {
            return Err(bad(format!(
                "datatype {other} is not taken here: `image` is BYTES (encoded images), \
                 `input` is FP32 (normalised pixels)"
            )))
        }
    };
    let given = match &values {
        Values::Bytes(v) => v.len(),
        Values::Fp32(v) => v.len(),
    };
    if given != count {
        return Err(bad(format!(
            "shape {:?} holds {count} values, the data {given}",
            input.shape
        )));
    }
    Ok(values)
}

/// BYTES in binary: each element a 4-byte little-endian length, then that many bytes.
fn split_bytes(mut raw: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let mut elements = Vec::new();
    while !raw.is_empty() {
        if raw.len() < 4 {
            return Err("BYTES binary data ends inside an element's 4-byte length".into());
        }
        let (length, rest) = raw.split_at(4);
        let n = u32::from_le_bytes([length[0], length[1], length[2], length[3]]) as usize;
        if n > rest.len() {
            return Err(format!(
                "BYTES element {} says {n} bytes, {} are left",
                elements.len(),
                rest.len()
            ));
        }
        let (element, rest) = rest.split_at(n);
        elements.push(element.to_vec());
        raw = rest;
    }
    Ok(elements)
}

/// JSON `data` may be flat or nested as the shape (row-major either way).
fn flatten(data: &Value, out: &mut Vec<Value>) {
    match data {
        Value::Array(items) => items.iter().for_each(|v| flatten(v, out)),
        other => out.push(other.clone()),
    }
}

/// BYTES elements in binary, each with its 4-byte length.
pub fn join_bytes(elements: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(elements.iter().map(|e| e.len() + 4).sum());
    for e in elements {
        out.extend_from_slice(&(e.len() as u32).to_le_bytes());
        out.extend_from_slice(e);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(datatype: &str, shape: Vec<i64>, data: Option<Value>) -> InputTensor {
        InputTensor {
            name: "x".into(),
            shape,
            datatype: datatype.into(),
            parameters: Map::new(),
            data,
        }
    }

    #[test]
    fn binary_parts_follow_the_json_in_the_inputs_order() {
        let json = br#"{"inputs":[{"name":"a","shape":[1],"datatype":"BYTES","parameters":{"binary_data_size":7}},{"name":"b","shape":[1],"datatype":"FP32","parameters":{"binary_data_size":4}}]}"#;
        let mut body = json.to_vec();
        body.extend_from_slice(&join_bytes(&[b"abc".to_vec()]));
        body.extend_from_slice(&1.5f32.to_le_bytes());
        let (request, parts) = parse(&body, Some(&json.len().to_string())).unwrap();
        assert_eq!(request.inputs.len(), 2);
        let Values::Bytes(a) = values(&request.inputs[0], parts[0].clone()).unwrap() else {
            panic!("BYTES")
        };
        assert_eq!(a, vec![b"abc".to_vec()]);
        let Values::Fp32(b) = values(&request.inputs[1], parts[1].clone()).unwrap() else {
            panic!("FP32")
        };
        assert_eq!(b, vec![1.5]);
    }

    #[test]
    fn sizes_that_do_not_add_up_are_refused() {
        let json = br#"{"inputs":[{"name":"a","shape":[1],"datatype":"BYTES","parameters":{"binary_data_size":9}}]}"#;
        let mut body = json.to_vec();
        body.extend_from_slice(&[0; 4]);
        assert!(parse(&body, Some(&json.len().to_string())).is_err());
        assert!(parse(json, Some("99999")).is_err());
        // Left-over bytes after the declared parts.
        let json = br#"{"inputs":[]}"#;
        let mut body = json.to_vec();
        body.push(0);
        assert!(parse(&body, Some(&json.len().to_string())).is_err());
    }

    #[test]
    fn json_data_is_checked_against_datatype_and_shape() {
        let ok = input("FP32", vec![1, 2], Some(serde_json::json!([[1.0, 2.0]])));
        assert!(matches!(values(&ok, None), Ok(Values::Fp32(v)) if v == vec![1.0, 2.0]));
        let short = input("FP32", vec![1, 3], Some(serde_json::json!([1.0, 2.0])));
        assert!(values(&short, None).is_err());
        let int = input("INT32", vec![1], Some(serde_json::json!([1])));
        assert!(values(&int, None).unwrap_err().message.contains("INT32"));
        let b64 = input("BYTES", vec![1], Some(serde_json::json!(["aGk="])));
        assert!(matches!(values(&b64, None), Ok(Values::Bytes(v)) if v == vec![b"hi".to_vec()]));
        let not_b64 = input("BYTES", vec![1], Some(serde_json::json!(["%%%"])));
        assert!(values(&not_b64, None).is_err());
        let truncated = split_bytes(&[5, 0, 0, 0, 1]);
        assert!(truncated.is_err());
    }
}
