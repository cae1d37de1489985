//! The Open Inference Protocol (KServe v2) REST bodies, and the checks of
//! an inference request against a deployment's signature.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The name of a model's one input tensor.
pub const INPUT: &str = "input";
/// Output: the model's values per row (`FP32`, `[rows, outputs]`).
pub const LOGITS: &str = "logits";
/// Output: the index of each row's largest value (`INT64`, `[rows]`).
pub const LABEL: &str = "label";

/// `POST .../infer` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
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
    /// Tensor parameters (accepted, unused).
    #[serde(default)]
    pub parameters: Option<serde_json::Map<String, Value>>,
    /// Values, row-major: flat or nested arrays.
    pub data: Value,
}

/// One requested output.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestOutput {
    /// Its name.
    pub name: String,
    /// Output parameters (accepted, unused).
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
    /// Its values, row-major.
    pub data: Value,
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
}

/// Checks `req` against a model taking `[rows, features]` `FP32`; every
/// error names the tensor and what does not fit.
pub fn check(req: InferRequest, features: usize) -> Result<Checked, String> {
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
    let mut values = Vec::with_capacity(expected.min(1 << 20));
    flatten(&input.data, &mut values, expected)?;
    check_count(&input.shape, expected, values.len())?;
    let outputs = check_outputs(
        req.outputs
            .as_ref()
            .map(|wanted| wanted.iter().map(|o| o.name.as_str())),
    )?;
    Ok(Checked {
        values,
        rows,
        outputs,
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

/// Appends the numbers of `data` (a number or nested arrays of them) in
/// row-major order; stops counting past `limit` + 1 values.
fn flatten(data: &Value, out: &mut Vec<f32>, limit: usize) -> Result<(), String> {
    match data {
        Value::Number(n) => {
            let Some(v) = n.as_f64() else {
                return Err(format!("input '{INPUT}': {n} is not an FP32 value"));
            };
            if out.len() <= limit {
                out.push(v as f32);
            }
            Ok(())
        }
        Value::Array(items) => {
            for item in items {
                flatten(item, out, limit)?;
                if out.len() > limit {
                    break;
                }
            }
            Ok(())
        }
        other => Err(format!(
            "input '{INPUT}': data holds {other}, not an FP32 number"
        )),
    }
}

/// The response tensors for `values` (`rows` rows of `width`).
pub fn answer(
    values: Vec<f32>,
    rows: usize,
    width: usize,
    outputs: &[&str],
) -> Vec<ResponseOutput> {
    outputs
        .iter()
        .map(|&name| {
            if name == LABEL {
                let labels = labels(&values, width);
                ResponseOutput {
                    name: LABEL.into(),
                    shape: vec![rows],
                    datatype: "INT64",
                    data: Value::from(labels),
                }
            } else {
                ResponseOutput {
                    name: LOGITS.into(),
                    shape: vec![rows, width],
                    datatype: "FP32",
                    data: Value::from(values.iter().map(|&v| f64::from(v)).collect::<Vec<_>>()),
                }
            }
        })
        .collect()
}
