//! Reads PyTorch `torch.save` checkpoints (zip format, PyTorch >= 1.6) without Python.
//!
//! # Format
//! A zip archive (entries stored uncompressed) with one top folder `<archive>/` holding:
//! - `data.pkl`: a pickle (protocol 2..5) of the saved object. Tensors appear as
//!   `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)`
//!   (possibly wrapped in `torch._utils._rebuild_parameter`), where `storage` is a persistent
//!   id `('storage', torch.<Kind>Storage, key, location, numel)`;
//! - `data/<key>`: the raw little-endian bytes of each storage;
//! - `byteorder` (optional): `little` (big-endian archives are refused).
//!
//! This reader runs the subset of the pickle machine those files use (containers, strings,
//! numbers, globals, `REDUCE`, `BUILD`, `BINPERSID`, memo), builds tensors only for the two
//! rebuild functions above and treats every other global as an opaque value, so foreign
//! objects in the checkpoint (optimizer state, config namespaces) are skipped, not executed.
//! The state_dict is the top-level dict's `model` (official checkpoints), `state_dict`, or
//! the top-level dict itself. Float, Half and BFloat16 tensors are returned as f32; integer
//! tensors (`num_batches_tracked`, `attention_bias_idxs`) are left out.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use anyhow::{anyhow, bail, ensure, Context, Result};

use super::state_dict::Tensor;

/// Storage element types this reader converts to f32 (others are skipped).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    F32,
    F16,
    Bf16,
    F64,
    Other,
}

impl Kind {
    fn from_storage(name: &str) -> Kind {
        match name {
            "FloatStorage" => Kind::F32,
            "HalfStorage" => Kind::F16,
            "BFloat16Storage" => Kind::Bf16,
            "DoubleStorage" => Kind::F64,
            _ => Kind::Other,
        }
    }

    fn size(self) -> usize {
        match self {
            Kind::F32 => 4,
            Kind::F16 | Kind::Bf16 => 2,
            Kind::F64 => 8,
            Kind::Other => 0,
        }
    }
}

/// A pickle value.
#[derive(Clone, Debug)]
enum Value {
    None,
    /// A bool, float or bytes object: never needed to find tensors, so not kept.
    Scalar,
    Int(i64),
    Str(String),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Global(String, String),
    Storage {
        kind: Kind,
        key: String,
    },
    Tensor(TensorRef),
    Opaque,
}

/// A tensor view of a storage.
#[derive(Clone, Debug)]
struct TensorRef {
    kind: Kind,
    key: String,
    offset: usize,
    shape: Vec<usize>,
    stride: Vec<usize>,
}

/// Marker on the stack for `MARK`.
enum Slot {
    Mark,
    V(Value),
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Slot>,
    memo: HashMap<u32, Value>,
}

impl<'a> Machine<'a> {
    fn bytes(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .ok_or_else(|| anyhow!("length overflow"))?;
        let b = self
            .data
            .get(self.pos..end)
            .ok_or_else(|| anyhow!("pickle truncated at byte {}", self.pos))?;
        self.pos = end;
        Ok(b)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.bytes(1)?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        let b = self.bytes(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32> {
        let b = self.bytes(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64> {
        let b = self.bytes(8)?;
        Ok(u64::from_le_bytes(b.try_into()?))
    }
    fn line(&mut self) -> Result<String> {
        let start = self.pos;
        let rel = self.data[start..]
            .iter()
            .position(|b| *b == b'\n')
            .ok_or_else(|| anyhow!("unterminated pickle line"))?;
        self.pos = start + rel + 1;
        Ok(String::from_utf8_lossy(&self.data[start..start + rel]).into_owned())
    }
    fn push(&mut self, v: Value) {
        self.stack.push(Slot::V(v));
    }
    fn pop(&mut self) -> Result<Value> {
        match self.stack.pop() {
            Some(Slot::V(v)) => Ok(v),
            _ => bail!("pickle stack underflow"),
        }
    }
    fn top(&mut self) -> Result<&mut Value> {
        match self.stack.last_mut() {
            Some(Slot::V(v)) => Ok(v),
            _ => bail!("pickle stack underflow"),
        }
    }
    fn pop_to_mark(&mut self) -> Result<Vec<Value>> {
        let mut items = Vec::new();
        loop {
            match self.stack.pop() {
                Some(Slot::Mark) => break,
                Some(Slot::V(v)) => items.push(v),
                None => bail!("pickle MARK missing"),
            }
        }
        items.reverse();
        Ok(items)
    }
    fn memo_get(&self, i: u32) -> Result<Value> {
        self.memo
            .get(&i)
            .cloned()
            .ok_or_else(|| anyhow!("pickle memo {i} missing"))
    }
    fn memo_put(&mut self, i: u32) -> Result<()> {
        let v = match self.stack.last() {
            Some(Slot::V(v)) => v.clone(),
            _ => bail!("pickle memo of a mark"),
        };
        self.memo.insert(i, v);
        Ok(())
    }

    fn run(&mut self) -> Result<Value> {
        loop {
            let op = self.u8()?;
            match op {
                0x80 => {
                    self.u8()?; // PROTO
                }
                0x95 => {
                    self.u64()?; // FRAME
                }
                b'.' => return self.pop(),
                b'}' => self.push(Value::Dict(Vec::new())),
                b']' => self.push(Value::List(Vec::new())),
                b')' => self.push(Value::Tuple(Vec::new())),
                b'(' => self.stack.push(Slot::Mark),
                b't' => {
                    let items = self.pop_to_mark()?;
                    self.push(Value::Tuple(items));
                }
                b'l' => {
                    let items = self.pop_to_mark()?;
                    self.push(Value::List(items));
                }
                b'd' => {
                    let items = self.pop_to_mark()?;
                    let mut pairs = Vec::new();
                    let mut it = items.into_iter();
                    while let (Some(k), Some(v)) = (it.next(), it.next()) {
                        pairs.push((k, v));
                    }
                    self.push(Value::Dict(pairs));
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.push(Value::Tuple(items));
                }
                b'N' => self.push(Value::None),
                0x88 | 0x89 => self.push(Value::Scalar),
                b'K' => {
                    let v = self.u8()?;
                    self.push(Value::Int(v as i64));
                }
                b'M' => {
                    let v = self.u16()?;
                    self.push(Value::Int(v as i64));
                }
                b'J' => {
                    let v = self.u32()? as i32;
                    self.push(Value::Int(v as i64));
                }
                0x8a => {
                    let n = self.u8()? as usize;
                    let b = self.bytes(n)?;
                    ensure!(n <= 8, "pickle LONG1 of {n} bytes");
                    let mut v: i64 = 0;
                    for (i, byte) in b.iter().enumerate() {
                        v |= (*byte as i64) << (8 * i);
                    }
                    if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                        v -= 1i64 << (8 * n);
                    }
                    self.push(Value::Int(v));
                }
                b'G' => {
                    self.bytes(8)?;
                    self.push(Value::Scalar);
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let s = String::from_utf8_lossy(self.bytes(n)?).into_owned();
                    self.push(Value::Str(s));
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let s = String::from_utf8_lossy(self.bytes(n)?).into_owned();
                    self.push(Value::Str(s));
                }
                0x8d => {
                    let n = self.u64()? as usize;
                    let s = String::from_utf8_lossy(self.bytes(n)?).into_owned();
                    self.push(Value::Str(s));
                }
                b'C' => {
                    let n = self.u8()? as usize;
                    self.bytes(n)?;
                    self.push(Value::Scalar);
                }
                b'B' => {
                    let n = self.u32()? as usize;
                    self.bytes(n)?;
                    self.push(Value::Scalar);
                }
                b'q' => {
                    let i = self.u8()? as u32;
                    self.memo_put(i)?;
                }
                b'r' => {
                    let i = self.u32()?;
                    self.memo_put(i)?;
                }
                0x94 => {
                    let i = self.memo.len() as u32;
                    self.memo_put(i)?;
                }
                b'h' => {
                    let i = self.u8()? as u32;
                    let v = self.memo_get(i)?;
                    self.push(v);
                }
                b'j' => {
                    let i = self.u32()?;
                    let v = self.memo_get(i)?;
                    self.push(v);
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.push(Value::Global(module, name));
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Value::Str(m), Value::Str(n)) => self.push(Value::Global(m, n)),
                        _ => bail!("pickle STACK_GLOBAL of non-strings"),
                    }
                }
                b'Q' => {
                    let pid = self.pop()?;
                    self.push(persistent(pid)?);
                }
                b'R' => {
                    let args = self.pop()?;
                    let f = self.pop()?;
                    self.push(reduce(f, args)?);
                }
                0x81 => {
                    self.pop()?;
                    self.pop()?;
                    self.push(Value::Opaque); // NEWOBJ
                }
                b'b' => {
                    self.pop()?; // BUILD: state is ignored
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    // Items set on an opaque object are dropped.
                    if let Value::Dict(d) = self.top()? {
                        d.push((k, v));
                    }
                }
                b'u' => {
                    let items = self.pop_to_mark()?;
                    if let Value::Dict(d) = self.top()? {
                        let mut it = items.into_iter();
                        while let (Some(k), Some(v)) = (it.next(), it.next()) {
                            d.push((k, v));
                        }
                    }
                }
                b'a' => {
                    let v = self.pop()?;
                    if let Value::List(l) = self.top()? {
                        l.push(v);
                    }
                }
                b'e' => {
                    let items = self.pop_to_mark()?;
                    if let Value::List(l) = self.top()? {
                        l.extend(items);
                    }
                }
                b'0' => {
                    self.pop()?; // POP
                }
                other => bail!(
                    "unsupported pickle opcode 0x{other:02x} at byte {}",
                    self.pos - 1
                ),
            }
        }
    }
}

fn persistent(pid: Value) -> Result<Value> {
    let Value::Tuple(items) = pid else {
        bail!("persistent id is not a tuple");
    };
    match items.as_slice() {
        [Value::Str(tag), Value::Global(_, storage), key, ..] if tag == "storage" => {
            let key = match key {
                Value::Str(s) => s.clone(),
                Value::Int(i) => i.to_string(),
                _ => bail!("storage key is not a string"),
            };
            Ok(Value::Storage {
                kind: Kind::from_storage(storage),
                key,
            })
        }
        _ => bail!("unknown persistent id"),
    }
}

fn ints(v: &Value) -> Result<Vec<usize>> {
    match v {
        Value::Tuple(items) | Value::List(items) => items
            .iter()
            .map(|x| match x {
                Value::Int(i) if *i >= 0 => Ok(*i as usize),
                _ => bail!("tensor size/stride is not a non-negative int"),
            })
            .collect(),
        _ => bail!("tensor size/stride is not a tuple"),
    }
}

fn reduce(f: Value, args: Value) -> Result<Value> {
    let Value::Global(module, name) = &f else {
        return Ok(Value::Opaque);
    };
    let args = match args {
        Value::Tuple(a) => a,
        _ => return Ok(Value::Opaque),
    };
    Ok(match (module.as_str(), name.as_str()) {
        ("torch._utils", "_rebuild_tensor_v2") | ("torch._utils", "_rebuild_tensor") => {
            ensure!(
                args.len() >= 4,
                "_rebuild_tensor_v2 with {} args",
                args.len()
            );
            let Value::Storage { kind, key } = &args[0] else {
                bail!("_rebuild_tensor_v2 without a storage");
            };
            let offset = match args[1] {
                Value::Int(i) if i >= 0 => i as usize,
                _ => bail!("tensor offset is not an int"),
            };
            Value::Tensor(TensorRef {
                kind: *kind,
                key: key.clone(),
                offset,
                shape: ints(&args[2])?,
                stride: ints(&args[3])?,
            })
        }
        ("torch._utils", "_rebuild_parameter")
        | ("torch._utils", "_rebuild_parameter_with_state") => {
            args.into_iter().next().unwrap_or(Value::Opaque)
        }
        ("collections", "OrderedDict") => Value::Dict(Vec::new()),
        _ => Value::Opaque,
    })
}

/// Reads the tensors of a `torch.save` zip checkpoint (see the module doc), by their keys.
pub fn read(path: &Path) -> Result<HashMap<String, Tensor>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| {
        anyhow!(
            "{}: not a torch zip checkpoint ({e}); legacy (pre-1.6) pickles are not supported",
            path.display()
        )
    })?;
    let pkl_name = (0..zip.len())
        .filter_map(|i| zip.by_index(i).ok().map(|f| f.name().to_string()))
        .find(|n| n.ends_with("data.pkl"))
        .ok_or_else(|| anyhow!("{}: no data.pkl in the archive", path.display()))?;
    let prefix = pkl_name.trim_end_matches("data.pkl").to_string();
    if let Ok(mut f) = zip.by_name(&format!("{prefix}byteorder")) {
        let mut s = String::new();
        f.read_to_string(&mut s)?;
        ensure!(
            s.trim() == "little",
            "{}: big-endian checkpoints are not supported",
            path.display()
        );
    }
    let mut pkl = Vec::new();
    zip.by_name(&pkl_name)?.read_to_end(&mut pkl)?;
    let mut m = Machine {
        data: &pkl,
        pos: 0,
        stack: Vec::new(),
        memo: HashMap::new(),
    };
    let top = m
        .run()
        .with_context(|| format!("{}: data.pkl", path.display()))?;
    let dict = pick_state_dict(top)
        .ok_or_else(|| anyhow!("{}: no state_dict (dict of tensors) found", path.display()))?;
    let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
    let mut out = HashMap::new();
    for (k, v) in dict {
        let (Value::Str(name), Value::Tensor(t)) = (k, v) else {
            continue;
        };
        if t.kind == Kind::Other {
            continue;
        }
        if !storages.contains_key(&t.key) {
            let mut buf = Vec::new();
            zip.by_name(&format!("{prefix}data/{}", t.key))
                .with_context(|| format!("{}: storage {} of `{name}`", path.display(), t.key))?
                .read_to_end(&mut buf)?;
            storages.insert(t.key.clone(), buf);
        }
        let values = gather(&storages[&t.key], &t)
            .with_context(|| format!("{}: tensor `{name}`", path.display()))?;
        out.insert(
            name,
            Tensor {
                shape: t.shape,
                values,
            },
        );
    }
    Ok(out)
}

fn is_tensor_dict(v: &Value) -> bool {
    matches!(v, Value::Dict(d) if d.iter().any(|(_, x)| matches!(x, Value::Tensor(_))))
}

fn pick_state_dict(top: Value) -> Option<Vec<(Value, Value)>> {
    let Value::Dict(d) = top else {
        return None;
    };
    for key in ["model", "state_dict", "model_state"] {
        if let Some((_, v)) = d
            .iter()
            .find(|(k, v)| matches!(k, Value::Str(s) if s == key) && is_tensor_dict(v))
        {
            if let Value::Dict(inner) = v.clone() {
                return Some(inner);
            }
        }
    }
    is_tensor_dict(&Value::Dict(d.clone())).then_some(d)
}

/// Reads a strided tensor out of its storage bytes as f32.
fn gather(storage: &[u8], t: &TensorRef) -> Result<Vec<f32>> {
    ensure!(
        t.shape.len() == t.stride.len(),
        "size and stride ranks differ"
    );
    let es = t.kind.size();
    let n: usize = t.shape.iter().product();
    let mut out = Vec::with_capacity(n);
    let mut idx = vec![0usize; t.shape.len()];
    for _ in 0..n {
        let mut off = t.offset;
        for (i, s) in idx.iter().zip(&t.stride) {
            off += i * s;
        }
        let b = storage
            .get(off * es..(off + 1) * es)
            .ok_or_else(|| anyhow!("element {off} outside its storage"))?;
        out.push(match t.kind {
            Kind::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            Kind::F16 => half::f16::from_le_bytes([b[0], b[1]]).to_f32(),
            Kind::Bf16 => half::bf16::from_le_bytes([b[0], b[1]]).to_f32(),
            Kind::F64 => f64::from_le_bytes(b.try_into()?) as f32,
            Kind::Other => bail!("not a float storage"),
        });
        for d in (0..idx.len()).rev() {
            idx[d] += 1;
            if idx[d] < t.shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    Ok(out)
}
