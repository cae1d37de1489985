//! The Open Inference Protocol (KServe v2) REST bodies, and the checks of
//! an inference request against a deployment's signature.
//!
//! Also Triton's binary tensor data extension (`binary_tensor_data`), which
//! Triton's HTTP client uses by default: a request body may be the JSON
//! header (its length in the `Inference-Header-Content-Length` header)
//! followed by raw tensor bytes; an input with `parameters.binary_data_size`
//! takes its data from those bytes (little-endian, row-major), and an
//! output asked for with `parameters.binary_data = true` (or every output,
//! with the request's `binary_data_output = true`) is answered the same way.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The HTTP header holding the length of the JSON part of a body with
/// binary tensor data (requests and answers).
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// The name of a model's one input tensor.
pub const INPUT: &str = "input";
/// Output: the model's values per row (`FP32`, `[rows, outputs]`).
pub const LOGITS: &str = "logits";
/// Output: the index of each row's largest value (`INT64`, `[rows]`).
pub const LABEL: &str = "label";

/// `POST .../infer` body. Top-level keys it does not know are ignored:
/// clients add their own (KServe's Python client sends `model_name`), and
/// the protocol does not forbid them.
#[derive(Debug, Deserialize)]
pub struct InferRequest {
    /// Echoed in the response.
    #[serde(default)]
    pub id: Option<String>,
    /// Request parameters (accepted, unused).
    #[serde(default)]
    pub parameters: Option<serde_json::Map<String, Value>>,
    /// The input tensors.
    pub inputs: Vec<RequestInput>,
    /// The outputs wanted (all when absent).
    #[serde(default)]
    pub outputs: Option<Vec<RequestOutput>>,
}

/// One input tensor of a request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestInput {
    /// Its name.
    pub name: String,
    /// Its shape.
    pub shape: Vec<i64>,
    /// Its datatype (`FP32`, ...).
    pub datatype: String,
    /// Tensor parameters: `binary_data_size` (bytes of the binary part
    /// holding this tensor's data); others are accepted and unused.
    #[serde(default)]
    pub parameters: Option<serde_json::Map<String, Value>>,
    /// Values, row-major: flat or nested arrays (absent when the data is
    /// binary).
    #[serde(default)]
    pub data: Option<Value>,
}

/// One requested output.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestOutput {
    /// Its name.
    pub name: String,
    /// Output parameters: `binary_data` (answer it as binary data);
    /// others are accepted and unused.
    #[serde(default)]
    pub parameters: Option<serde_json::Map<String, Value>>,
}

/// `POST .../infer` answer.
#[derive(Debug, Serialize)]
pub struct InferResponse {
    /// The model's name.
    pub model_name: String,
    /// The version that answered.
    pub model_version: String,
    /// The request's `id`, if it had one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The outputs.
    pub outputs: Vec<ResponseOutput>,
}

/// One output tensor.
#[derive(Debug, Serialize)]
pub struct ResponseOutput {
    /// Its name.
    pub name: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its datatype.
    pub datatype: &'static str,
    /// `binary_data_size` when the values are in the binary part.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
    /// Its values, row-major (absent when they are binary).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

/// A tensor in model metadata.
#[derive(Debug, Serialize)]
pub struct MetadataTensor {
    /// Its name.
    pub name: &'static str,
    /// Its datatype.
    pub datatype: &'static str,
    /// Its shape; -1 is a variable dimension (the batch).
    pub shape: Vec<i64>,
}

/// `GET /v2/models/{name}[/versions/{v}]` answer.
#[derive(Debug, Serialize)]
pub struct ModelMetadata {
    /// The model's name.
    pub name: String,
    /// Its versions.
    pub versions: Vec<String>,
    /// Where it runs.
    pub platform: &'static str,
    /// Its inputs.
    pub inputs: Vec<MetadataTensor>,
    /// Its outputs.
    pub outputs: Vec<MetadataTensor>,
}

/// The inputs and outputs of a model with `features` values per row in
/// and `outputs` per row out.
pub fn signature(features: usize, outputs: usize) -> (Vec<MetadataTensor>, Vec<MetadataTensor>) {
    (
        vec![MetadataTensor {
            name: INPUT,
            datatype: "FP32",
            shape: vec![-1, features as i64],
        }],
        vec![
            MetadataTensor {
                name: LOGITS,
                datatype: "FP32",
                shape: vec![-1, outputs as i64],
            },
            MetadataTensor {
                name: LABEL,
                datatype: "INT64",
                shape: vec![-1],
            },
        ],
    )
}

/// A checked request: rows of features, the outputs to answer.
#[derive(Debug)]
pub struct Checked {
    /// Row-major values.
    pub values: Vec<f32>,
    /// Rows.
    pub rows: usize,
    /// Output names, in answer order.
    pub outputs: Vec<&'static str>,
    /// For each output: answered as binary data.
    pub binary: Vec<bool>,
}

/// A boolean parameter: `None` when absent, an error naming it when it is
/// not a boolean.
fn flag(
    params: Option<&serde_json::Map<String, Value>>,
    key: &str,
) -> Result<Option<bool>, String> {
    match params.and_then(|p| p.get(key)) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(format!(
            "parameter '{key}' must be true or false, got {other}"
        )),
    }
}

/// Checks `req` against a model taking `[rows, features]` `FP32`; every
/// error names the tensor and what does not fit. `binary` is the body's
/// binary part (empty without the extension).
pub fn check(req: InferRequest, features: usize, binary: &[u8]) -> Result<Checked, String> {
    let mut inputs = req.inputs.into_iter();
    let Some(input) = inputs.next() else {
        return Err(format!("no inputs: expected one input '{INPUT}'"));
    };
    if let Some(extra) = inputs.next() {
        return Err(format!(
            "unexpected input '{}': the model takes one input '{INPUT}'",
            extra.name
        ));
    }
    let (rows, expected) = check_input(&input.name, &input.datatype, &input.shape, features)?;
    let size = match input
        .parameters
        .as_ref()
        .and_then(|p| p.get("binary_data_size"))
    {
        None => None,
        Some(v) => Some(v.as_u64().ok_or_else(|| {
            format!("input '{INPUT}': binary_data_size must be a byte count, got {v}")
        })?),
    };
    let values = match (size, &input.data) {
        (Some(_), Some(_)) => {
            return Err(format!(
                "input '{INPUT}': both data and binary_data_size (one or the other)"
            ));
        }
        (None, None) => return Err(format!("input '{INPUT}': no data and no binary_data_size")),
        (None, Some(data)) => {
            if !binary.is_empty() {
                return Err(format!(
                    "{} bytes of binary data after the JSON header, but no input declares binary_data_size",
                    binary.len()
                ));
            }
            let mut values = Vec::with_capacity(expected.min(1 << 20));
            flatten(data, &input.shape, &mut values, expected)?;
            values
        }
        (Some(size), None) => {
            if size != binary.len() as u64 {
                return Err(format!(
                    "input '{INPUT}': binary_data_size {size}, but the body holds {} bytes of binary data after the JSON header",
                    binary.len()
                ));
            }
            if size % 4 != 0 {
                return Err(format!(
                    "input '{INPUT}': binary_data_size {size} is not a whole number of FP32 values"
                ));
            }
            binary
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()
        }
    };
    check_count(&input.shape, expected, values.len())?;
    let all_binary = flag(req.parameters.as_ref(), "binary_data_output")?.unwrap_or(false);
    let (outputs, binary) = match &req.outputs {
        // An empty list asks for every output too (as gRPC and Triton
        // read it).
        None => {
            let outputs = check_outputs(None::<std::iter::Empty<&str>>)?;
            let binary = vec![all_binary; outputs.len()];
            (outputs, binary)
        }
        Some(wanted) if wanted.is_empty() => {
            let outputs = check_outputs(None::<std::iter::Empty<&str>>)?;
            let binary = vec![all_binary; outputs.len()];
            (outputs, binary)
        }
        Some(wanted) => {
            let outputs = check_outputs(Some(wanted.iter().map(|o| o.name.as_str())))?;
            let binary = wanted
                .iter()
                .map(|o| {
                    flag(o.parameters.as_ref(), "binary_data")
                        .map(|b| b.unwrap_or(all_binary))
                        .map_err(|e| format!("output '{}': {e}", o.name))
                })
                .collect::<Result<_, _>>()?;
            (outputs, binary)
        }
    };
    Ok(Checked {
        values,
        rows,
        outputs,
        binary,
    })
}

/// Checks an input tensor's name, datatype and shape against a model
/// taking `[rows, features]` `FP32`; answers the rows and the element
/// count the data must have.
pub fn check_input(
    name: &str,
    datatype: &str,
    shape: &[i64],
    features: usize,
) -> Result<(usize, usize), String> {
    if name != INPUT {
        return Err(format!(
            "unknown input '{name}': the model's input is '{INPUT}'"
        ));
    }
    if datatype != "FP32" {
        return Err(format!(
            "input '{INPUT}': datatype {datatype} does not match the model's FP32"
        ));
    }
    let [rows, width] = shape[..] else {
        return Err(format!(
            "input '{INPUT}': shape {shape:?} does not match [-1, {features}]"
        ));
    };
    if rows < 1 || width != features as i64 {
        return Err(format!(
            "input '{INPUT}': shape {shape:?} does not match [-1, {features}] (at least one row)"
        ));
    }
    let rows = usize::try_from(rows)
        .map_err(|_| format!("input '{INPUT}': shape {shape:?} is too large"))?;
    let expected = rows
        .checked_mul(features)
        .ok_or_else(|| format!("input '{INPUT}': shape {shape:?} is too large"))?;
    Ok((rows, expected))
}

/// Checks that the data holds the `expected` elements of `shape`.
pub fn check_count(shape: &[i64], expected: usize, found: usize) -> Result<(), String> {
    if found != expected {
        return Err(format!(
            "input '{INPUT}': shape {shape:?} needs {expected} elements, data has {found}"
        ));
    }
    Ok(())
}

/// The outputs to answer, in order: all when `wanted` is `None`.
pub fn check_outputs<'a>(
    wanted: Option<impl Iterator<Item = &'a str>>,
) -> Result<Vec<&'static str>, String> {
    match wanted {
        None => Ok(vec![LOGITS, LABEL]),
        Some(wanted) => wanted
            .map(|name| match name {
                LOGITS => Ok(LOGITS),
                LABEL => Ok(LABEL),
                other => Err(format!(
                    "unknown output '{other}': the model's outputs are '{LOGITS}' and '{LABEL}'"
                )),
            })
            .collect(),
    }
}

/// The index of each row's largest value (`values` holds rows of
/// `width`).
pub fn labels(values: &[f32], width: usize) -> Vec<i64> {
    values
        .chunks(width.max(1))
        .map(|row| {
            row.iter()
                .enumerate()
                .fold((0usize, f32::NEG_INFINITY), |best, (i, &v)| {
                    if v > best.1 { (i, v) } else { best }
                })
                .0 as i64
        })
        .collect()
}

/// Appends the numbers of `data` in row-major order: a flat array of
/// numbers, or arrays nested as `shape` says (each level as long as its
/// dimension: a ragged or wrongly nested array would cut the values into
/// rows other than the client's, so it is refused). Stops counting past
/// `limit` + 1 values.
fn flatten(data: &Value, shape: &[i64], out: &mut Vec<f32>, limit: usize) -> Result<(), String> {
    match data {
        Value::Array(items) if !items.iter().any(Value::is_array) => {
            for item in items {
                push_number(item, out, limit)?;
                if out.len() > limit {
                    break;
                }
            }
            Ok(())
        }
        Value::Array(_) => nested(data, shape, &mut Vec::new(), out, limit),
        other => push_number(other, out, limit),
    }
}

/// [`flatten`] of nested arrays at the position `at` (indices so far).
fn nested(
    data: &Value,
    shape: &[i64],
    at: &mut Vec<usize>,
    out: &mut Vec<f32>,
    limit: usize,
) -> Result<(), String> {
    let Some(&dim) = shape.get(at.len()) else {
        return match data {
            Value::Array(_) => Err(format!(
                "input '{INPUT}': data{} is an array, but shape {shape:?} has only {} dimensions",
                index_text(at),
                shape.len()
            )),
            other => push_number(other, out, limit),
        };
    };
    let Value::Array(items) = data else {
        return Err(format!(
            "input '{INPUT}': data{} is {data}, but shape {shape:?} wants an array of {dim} there",
            index_text(at)
        ));
    };
    if items.len() as i64 != dim {
        return Err(format!(
            "input '{INPUT}': data{} holds {} items, but shape {shape:?} wants {dim} there",
            index_text(at),
            items.len()
        ));
    }
    for (i, item) in items.iter().enumerate() {
        at.push(i);
        let r = nested(item, shape, at, out, limit);
        at.pop();
        r?;
        if out.len() > limit {
            break;
        }
    }
    Ok(())
}

/// `[i][j]…` for error messages.
fn index_text(at: &[usize]) -> String {
    at.iter().map(|i| format!("[{i}]")).collect()
}

/// Appends one number (an error for anything else).
fn push_number(v: &Value, out: &mut Vec<f32>, limit: usize) -> Result<(), String> {
    let Value::Number(n) = v else {
        return Err(format!(
            "input '{INPUT}': data holds {v}, not an FP32 number"
        ));
    };
    let Some(x) = n.as_f64() else {
        return Err(format!("input '{INPUT}': {n} is not an FP32 value"));
    };
    if out.len() <= limit {
        out.push(x as f32);
    }
    Ok(())
}

/// The response tensors for `values` (`rows` rows of `width`), and the
/// binary part: the little-endian values of the outputs flagged in
/// `binary`, in output order (empty when none is).
pub fn answer(
    values: Vec<f32>,
    rows: usize,
    width: usize,
    outputs: &[&str],
    binary: &[bool],
) -> (Vec<ResponseOutput>, Vec<u8>) {
    let mut tail = Vec::new();
    let answered = outputs
        .iter()
        .enumerate()
        .map(|(i, &name)| {
            let raw = binary.get(i).copied().unwrap_or(false);
            let (name, shape, datatype, data) = if name == LABEL {
                let labels = labels(&values, width);
                let data = if raw {
                    labels.iter().for_each(|l| tail.extend_from_slice(&l.to_le_bytes()));
                    None
                } else {
                    Some(Value::from(labels))
                };
                (LABEL, vec![rows], "INT64", data)
            } else {
                let data = if raw {
                    values.iter().for_each(|v| tail.extend_from_slice(&v.to_le_bytes()));
                    None
                } else {
                    Some(Value::from(
                        values.iter().map(|&v| f64::from(v)).collect::<Vec<_>>(),
                    ))
                };
                (LOGITS, vec![rows, width], "FP32", data)
            };
            let parameters = raw.then(|| {
                let elements: usize = shape.iter().product();
                serde_json::json!({ "binary_data_size": elements * if datatype == "INT64" { 8 } else { 4 } })
            });
            ResponseOutput {
                name: name.into(),
                shape,
                datatype,
                parameters,
                data,
            }
        })
        .collect();
    (answered, tail)
}
