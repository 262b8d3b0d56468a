//! The `Tensor` type scripts use for statistics over scores: creation from (nested) arrays,
//! shape, broadcasting arithmetic, reductions, indexing, conversion back to arrays, printing.
//! Every operation goes through a fallible `f_*` call, so a libtorch error becomes a script error
//! at the calling position rather than a panic.
use super::api::{def, script_error, torch_error, ScriptResult};
use crate::device;
use rhai::{Array, Dynamic, Engine, INT};
use tch::{Kind, Tensor};

/// A libtorch tensor held by a script. Cloning shares storage (scripts never mutate in place).
pub struct ScriptTensor(pub Tensor);

impl Clone for ScriptTensor {
    fn clone(&self) -> Self {
        ScriptTensor(self.0.shallow_clone())
    }
}

impl From<Tensor> for ScriptTensor {
    fn from(t: Tensor) -> Self {
        ScriptTensor(t)
    }
}

type T = ScriptTensor;

fn wrap(r: Result<Tensor, tch::TchError>) -> ScriptResult<T> {
    r.map(ScriptTensor).map_err(torch_error)
}

/// Parses a dtype name as scripts write it.
pub fn parse_kind(name: &str) -> ScriptResult<Kind> {
    Ok(match name {
        "f32" | "float32" | "float" => Kind::Float,
        "f64" | "float64" | "double" => Kind::Double,
        "bf16" | "bfloat16" => Kind::BFloat16,
        "f16" | "float16" | "half" => Kind::Half,
        "i64" | "int64" | "long" => Kind::Int64,
        "i32" | "int32" | "int" => Kind::Int,
        "bool" => Kind::Bool,
        _ => return Err(script_error(format!("unknown dtype \"{name}\" (expected f32, f64, bf16, f16, i64, i32 or bool)"))),
    })
}

/// The name scripts see for a dtype.
pub fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Float => "f32",
        Kind::Double => "f64",
        Kind::BFloat16 => "bf16",
        Kind::Half => "f16",
        Kind::Int64 => "i64",
        Kind::Int => "i32",
        Kind::Bool => "bool",
        Kind::Uint8 => "u8",
        Kind::Int8 => "i8",
        Kind::Int16 => "i16",
        _ => "other",
    }
}

fn is_integral(kind: Kind) -> bool {
    matches!(kind, Kind::Int64 | Kind::Int | Kind::Int16 | Kind::Int8 | Kind::Uint8 | Kind::Bool)
}

/// Flattens a nested array of numbers, checking that it is rectangular.
fn flatten(value: &Dynamic, depth: usize, shape: &mut Vec<i64>, out: &mut Vec<f64>, all_int: &mut bool) -> ScriptResult<()> {
    if let Some(arr) = value.read_lock::<Array>() {
        if depth == shape.len() {
            if !out.is_empty() {
                return Err(script_error("tensor: ragged nested array (an element is an array where a number was seen before)"));
            }
            shape.push(arr.len() as i64);
        } else if shape[depth] != arr.len() as i64 {
            return Err(script_error(format!(
                "tensor: ragged nested array (length {} at depth {depth}, expected {})",
                arr.len(),
                shape[depth]
            )));
        }
        for item in arr.iter() {
            flatten(item, depth + 1, shape, out, all_int)?;
        }
        return Ok(());
    }
    if depth != shape.len() {
        return Err(script_error("tensor: ragged nested array (a number where an array was expected)"));
    }
    if let Some(i) = value.clone().try_cast::<INT>() {
        out.push(i as f64);
    } else if let Some(x) = value.clone().try_cast::<f64>() {
        *all_int = false;
        out.push(x);
    } else if let Some(b) = value.clone().try_cast::<bool>() {
        out.push(if b { 1.0 } else { 0.0 });
    } else {
        return Err(script_error(format!("tensor: expected numbers, found {}", value.type_name())));
    }
    Ok(())
}

/// Builds a tensor from a (nested) array; integers give i64 and any float gives f32 unless
/// `dtype` says otherwise (the same defaults as `torch.tensor`).
pub fn from_array(value: &Dynamic, dtype: Option<Kind>) -> ScriptResult<T> {
    let (mut shape, mut data, mut all_int) = (Vec::new(), Vec::new(), true);
    flatten(value, 0, &mut shape, &mut data, &mut all_int)?;
    let kind = dtype.unwrap_or(if all_int && !data.is_empty() { Kind::Int64 } else { Kind::Float });
    let t = Tensor::f_from_slice(&data)
        .and_then(|t| t.f_reshape(&shape))
        .and_then(|t| t.f_to_kind(kind))
        .and_then(|t| t.f_to_device(device::current()));
    wrap(t)
}

/// All elements as f64, in row-major order, together with the shape.
pub fn values(t: &Tensor) -> ScriptResult<(Vec<i64>, Vec<f64>)> {
    let flat = t
        .f_to_device(tch::Device::Cpu)
        .and_then(|t| t.f_to_kind(Kind::Double))
        .and_then(|t| t.f_contiguous())
        .and_then(|t| t.f_flatten(0, -1))
        .map_err(torch_error)?;
    let n = flat.numel();
    let mut out = vec![0f64; n];
    flat.f_copy_data(&mut out, n).map_err(torch_error)?;
    Ok((t.size(), out))
}

fn nest(shape: &[i64], data: &[f64], integral: bool) -> Dynamic {
    match shape.split_first() {
        None => {
            if integral {
                Dynamic::from_int(data[0] as INT)
            } else {
                Dynamic::from_float(data[0])
            }
        }
        Some((&n, rest)) => {
            let stride = rest.iter().product::<i64>().max(0) as usize;
            let arr: Array = (0..n as usize).map(|i| nest(rest, &data[i * stride..(i + 1) * stride], integral)).collect();
            Dynamic::from_array(arr)
        }
    }
}

/// The tensor as nested arrays (integers for integer dtypes, floats otherwise).
pub fn to_array(t: &T) -> ScriptResult<Dynamic> {
    let (shape, data) = values(&t.0)?;
    Ok(nest(&shape, &data, is_integral(t.0.kind())))
}

/// The one element of a tensor as a float.
pub fn item(t: &T) -> ScriptResult<f64> {
    if t.0.numel() != 1 {
        return Err(script_error(format!("item: tensor has {} elements, expected exactly 1 (shape {:?})", t.0.numel(), t.0.size())));
    }
    Ok(values(&t.0)?.1[0])
}

/// One number style for the whole tensor, as PyTorch picks it: integers, whole floats with one
/// decimal, four decimals, or scientific notation when magnitudes are extreme.
#[derive(Clone, Copy)]
enum Style {
    Int,
    Whole,
    Fixed,
    Sci,
}

fn style(data: &[f64], integral: bool) -> Style {
    if integral {
        return Style::Int;
    }
    let finite: Vec<f64> = data.iter().copied().filter(|x| x.is_finite()).collect();
    if finite.iter().all(|x| *x == x.trunc() && x.abs() < 1e8) {
        return Style::Whole;
    }
    let big = finite.iter().fold(0f64, |m, x| m.max(x.abs()));
    let small = finite.iter().filter(|x| **x != 0.0).fold(f64::INFINITY, |m, x| m.min(x.abs()));
    if big >= 1e8 || small < 1e-4 {
        Style::Sci
    } else {
        Style::Fixed
    }
}

fn fmt_num(x: f64, style: Style) -> String {
    match style {
        Style::Int => format!("{}", x as i64),
        _ if !x.is_finite() => format!("{x}"),
        Style::Whole => format!("{x:.1}"),
        Style::Fixed => format!("{x:.4}"),
        Style::Sci => format!("{x:.4e}"),
    }
}

fn fmt_nested(shape: &[i64], data: &[f64], style: Style, depth: usize, out: &mut String) {
    const EDGE: usize = 3;
    match shape.split_first() {
        None => out.push_str(&fmt_num(data[0], style)),
        Some((&n, rest)) => {
            let n = n as usize;
            let stride = rest.iter().product::<i64>().max(0) as usize;
            out.push('[');
            let show: Vec<Option<usize>> = if n > 2 * EDGE + 1 {
                (0..EDGE).map(Some).chain([None]).chain((n - EDGE..n).map(Some)).collect()
            } else {
                (0..n).map(Some).collect()
            };
            for (k, i) in show.iter().enumerate() {
                if k > 0 {
                    out.push(',');
                    if rest.is_empty() {
                        out.push(' ');
                    } else {
                        out.push('\n');
                        out.push_str(&" ".repeat(8 + depth));
                    }
                }
                match i {
                    Some(i) => fmt_nested(rest, &data[i * stride..(i + 1) * stride], style, depth + 1, out),
                    None => out.push_str("..."),
                }
            }
            out.push(']');
        }
    }
}

/// `tensor([1.0, 2.5])`, with the dtype when it is not the default and the device when not CPU.
pub fn display(t: &T) -> String {
    let (shape, data) = match values(&t.0) {
        Ok(v) => v,
        Err(e) => return format!("tensor(<unreadable: {e}>)"),
    };
    let kind = t.0.kind();
    let mut body = String::new();
    fmt_nested(&shape, &data, style(&data, is_integral(kind)), 0, &mut body);
    let mut extra = String::new();
    if !matches!(kind, Kind::Float | Kind::Int64) {
        extra.push_str(&format!(", dtype={}", kind_name(kind)));
    }
    if t.0.device() != tch::Device::Cpu {
        extra.push_str(&format!(", device={}", device::name(t.0.device())));
    }
    format!("tensor({body}{extra})")
}

fn shape_arg(shape: &Array) -> ScriptResult<Vec<i64>> {
    shape
        .iter()
        .map(|d| d.as_int().map_err(|t| script_error(format!("shape: expected integers, found {t}"))))
        .collect()
}

fn scalar(x: f64) -> Tensor {
    Tensor::from(x)
}

fn index(t: &T, i: INT) -> ScriptResult<Dynamic> {
    let size = t.0.size();
    let Some(&n) = size.first() else {
        return Err(script_error("cannot index a 0-dimensional tensor; use item()"));
    };
    let j = if i < 0 { i + n } else { i };
    if j < 0 || j >= n {
        return Err(script_error(format!("index {i} out of range for a dimension of size {n}")));
    }
    let row = t.0.f_select(0, j).map_err(torch_error)?;
    if row.dim() == 0 {
        let v = values(&row)?.1[0];
        return Ok(if is_integral(row.kind()) { Dynamic::from_int(v as INT) } else { Dynamic::from_float(v) });
    }
    Ok(Dynamic::from(ScriptTensor(row)))
}

fn full_reduce(t: &T, name: &str) -> ScriptResult<f64> {
    if t.0.numel() == 0 && name != "sum" {
        return Err(script_error(format!("{name}: the tensor is empty")));
    }
    let x = if is_integral(t.0.kind()) { t.0.f_to_kind(Kind::Double).map_err(torch_error)? } else { t.0.shallow_clone() };
    let r = match name {
        "sum" => x.f_sum(Kind::Double),
        "mean" => x.f_mean(Kind::Double),
        "std" => x.f_to_kind(Kind::Double).and_then(|x| x.f_std(true)),
        "variance" => x.f_to_kind(Kind::Double).and_then(|x| x.f_var(true)),
        "min" => x.f_min(),
        "max" => x.f_max(),
        _ => unreachable!("unknown reduction {name}"),
    };
    item(&wrap(r)?)
}

fn float_view(t: &T) -> ScriptResult<Tensor> {
    if is_integral(t.0.kind()) {
        t.0.f_to_kind(Kind::Float).map_err(torch_error)
    } else {
        Ok(t.0.shallow_clone())
    }
}

fn tensors(items: &Array) -> ScriptResult<Vec<Tensor>> {
    items
        .iter()
        .map(|d| d.clone().try_cast::<T>().map(|t| t.0).ok_or_else(|| script_error(format!("expected an array of tensors, found {}", d.type_name()))))
        .collect()
}

macro_rules! binary_ops {
    ($engine:expr, $op:literal, $method:ident, $doc:literal) => {{
        def($engine, $op, &["a: Tensor", "b: Tensor", "Tensor"], $doc, |a: &mut T, b: T| wrap(a.0.$method(&b.0)));
        def($engine, $op, &["a: Tensor", "b: float", "Tensor"], $doc, |a: &mut T, b: f64| wrap(a.0.$method(&scalar(b))));
        def($engine, $op, &["a: Tensor", "b: int", "Tensor"], $doc, |a: &mut T, b: INT| wrap(a.0.$method(&Tensor::from(b))));
        def($engine, $op, &["a: float", "b: Tensor", "Tensor"], $doc, |a: f64, b: T| wrap(scalar(a).$method(&b.0)));
        def($engine, $op, &["a: int", "b: Tensor", "Tensor"], $doc, |a: INT, b: T| wrap(Tensor::from(a).$method(&b.0)));
    }};
}

macro_rules! unary_ops {
    ($engine:expr, $( $name:literal => $method:ident, $doc:literal );* $(;)?) => {{
        $( def($engine, $name, &["t: Tensor", "Tensor"], $doc, |t: &mut T| wrap(float_view(t)?.$method())); )*
    }};
}

/// Registers the `Tensor` type and its functions.
pub fn register(engine: &mut Engine) {
    engine.register_type_with_name::<T>("Tensor");

    def(engine, "tensor", &["values: array", "Tensor"], "A tensor from a (nested) array: integers give i64, any float gives f32.", |a: Array| {
        from_array(&Dynamic::from_array(a), None)
    });
    def(engine, "tensor", &["values: array", "dtype: string", "Tensor"], "A tensor from a (nested) array with the given dtype (f32, f64, bf16, f16, i64, i32, bool).", |a: Array, dtype: &str| {
        from_array(&Dynamic::from_array(a), Some(parse_kind(dtype)?))
    });
    def(engine, "zeros", &["shape: array", "Tensor"], "An f32 tensor of zeros with the given shape.", |s: Array| {
        wrap(Tensor::f_zeros(shape_arg(&s)?, (Kind::Float, device::current())))
    });
    def(engine, "ones", &["shape: array", "Tensor"], "An f32 tensor of ones with the given shape.", |s: Array| {
        wrap(Tensor::f_ones(shape_arg(&s)?, (Kind::Float, device::current())))
    });
    def(engine, "arange", &["n: int", "Tensor"], "The i64 tensor [0, 1, ..., n-1].", |n: INT| {
        wrap(Tensor::f_arange(n, (Kind::Int64, device::current())))
    });
    def(engine, "randn", &["shape: array", "Tensor"], "Standard normal f32 samples (seeded by --seed).", |s: Array| {
        wrap(Tensor::f_randn(shape_arg(&s)?, (Kind::Float, device::current())))
    });
    def(engine, "rand", &["shape: array", "Tensor"], "Uniform [0, 1) f32 samples (seeded by --seed).", |s: Array| {
        wrap(Tensor::f_rand(shape_arg(&s)?, (Kind::Float, device::current())))
    });
    def(engine, "cat", &["tensors: array", "dim: int", "Tensor"], "Concatenates tensors along an existing dimension.", |a: Array, dim: INT| {
        wrap(Tensor::f_cat(&tensors(&a)?, dim))
    });
    def(engine, "stack", &["tensors: array", "dim: int", "Tensor"], "Stacks tensors along a new dimension.", |a: Array, dim: INT| {
        wrap(Tensor::f_stack(&tensors(&a)?, dim))
    });

    def(engine, "get$shape", &["t: Tensor", "array"], "The shape as an array of ints.", |t: &mut T| -> Array {
        t.0.size().into_iter().map(Dynamic::from_int).collect()
    });
    def(engine, "get$ndim", &["t: Tensor", "int"], "The number of dimensions.", |t: &mut T| t.0.dim() as INT);
    def(engine, "get$dtype", &["t: Tensor", "string"], "The element type: f32, f64, bf16, f16, i64, i32 or bool.", |t: &mut T| kind_name(t.0.kind()).to_string());
    def(engine, "get$device", &["t: Tensor", "string"], "The device the tensor lives on: cpu or cuda:N.", |t: &mut T| device::name(t.0.device()));
    def(engine, "len", &["t: Tensor", "int"], "The size of the first dimension (0 for a 0-dimensional tensor).", |t: &mut T| {
        t.0.size().first().copied().unwrap_or(0) as INT
    });
    def(engine, "numel", &["t: Tensor", "int"], "The number of elements.", |t: &mut T| t.0.numel() as INT);
    def(engine, "index$get$", &["t: Tensor", "i: int", "?"], "Row i (negative counts from the end): a tensor, or a number for a 1-d tensor.", |t: &mut T, i: INT| index(t, i));
    def(engine, "to_array", &["t: Tensor", "array"], "The values as nested arrays (ints for integer dtypes, floats otherwise).", |t: &mut T| to_array(t));
    def(engine, "item", &["t: Tensor", "float"], "The single element of a one-element tensor, as a float.", |t: &mut T| item(t));
    def(engine, "to", &["t: Tensor", "dtype: string", "Tensor"], "The tensor converted to a dtype.", |t: &mut T, d: &str| wrap(t.0.f_to_kind(parse_kind(d)?)));
    def(engine, "reshape", &["t: Tensor", "shape: array", "Tensor"], "The same values in a new shape (one entry may be -1).", |t: &mut T, s: Array| wrap(t.0.f_reshape(shape_arg(&s)?)));
    def(engine, "transpose", &["t: Tensor", "Tensor"], "The transpose of a 2-d tensor.", |t: &mut T| wrap(t.0.f_tr()));
    def(engine, "matmul", &["a: Tensor", "b: Tensor", "Tensor"], "Matrix product with broadcasting, as torch.matmul.", |a: &mut T, b: T| wrap(a.0.f_matmul(&b.0)));
    def(engine, "to_string", &["t: Tensor", "string"], "The tensor printed like PyTorch does.", |t: &mut T| display(t));
    def(engine, "to_debug", &["t: Tensor", "string"], "The tensor printed like PyTorch does.", |t: &mut T| display(t));

    binary_ops!(engine, "+", f_add, "Element-wise sum with broadcasting.");
    binary_ops!(engine, "-", f_sub, "Element-wise difference with broadcasting.");
    binary_ops!(engine, "*", f_mul, "Element-wise product with broadcasting.");
    binary_ops!(engine, "/", f_div, "Element-wise true division with broadcasting.");
    def(engine, "-", &["t: Tensor", "Tensor"], "Element-wise negation.", |t: &mut T| wrap(t.0.f_neg()));
    def(engine, "**", &["t: Tensor", "p: float", "Tensor"], "Element-wise power.", |t: &mut T, p: f64| wrap(t.0.f_pow_tensor_scalar(p)));

    unary_ops!(engine,
        "exp" => f_exp, "Element-wise exponential.";
        "log" => f_log, "Element-wise natural logarithm.";
        "sqrt" => f_sqrt, "Element-wise square root.";
        "abs" => f_abs, "Element-wise absolute value.";
        "sigmoid" => f_sigmoid, "Element-wise logistic sigmoid.";
    );
    def(engine, "clamp", &["t: Tensor", "min: float", "max: float", "Tensor"], "Values limited to [min, max].", |t: &mut T, lo: f64, hi: f64| wrap(t.0.f_clamp(lo, hi)));
    def(engine, "softmax", &["t: Tensor", "dim: int", "Tensor"], "Softmax along a dimension.", |t: &mut T, d: INT| wrap(float_view(t)?.f_softmax(d, None)));
    def(engine, "log_softmax", &["t: Tensor", "dim: int", "Tensor"], "Log-softmax along a dimension.", |t: &mut T, d: INT| wrap(float_view(t)?.f_log_softmax(d, None)));
    def(engine, "logsumexp", &["t: Tensor", "dim: int", "Tensor"], "log(sum(exp(t))) along a dimension, computed stably.", |t: &mut T, d: INT| wrap(float_view(t)?.f_logsumexp([d], false)));
    def(engine, "cumsum", &["t: Tensor", "dim: int", "Tensor"], "Cumulative sum along a dimension.", |t: &mut T, d: INT| wrap(t.0.f_cumsum(d, None)));

    def(engine, "sum", &["t: Tensor", "float"], "The sum of all elements, as a float.", |t: &mut T| full_reduce(t, "sum"));
    def(engine, "mean", &["t: Tensor", "float"], "The mean of all elements, as a float.", |t: &mut T| full_reduce(t, "mean"));
    def(engine, "std", &["t: Tensor", "float"], "The sample standard deviation (Bessel-corrected, as torch.std) of all elements.", |t: &mut T| full_reduce(t, "std"));
    def(engine, "variance", &["t: Tensor", "float"], "The sample variance (Bessel-corrected, as torch.var) of all elements.", |t: &mut T| full_reduce(t, "variance"));
    def(engine, "min", &["t: Tensor", "float"], "The smallest element, as a float.", |t: &mut T| full_reduce(t, "min"));
    def(engine, "max", &["t: Tensor", "float"], "The largest element, as a float.", |t: &mut T| full_reduce(t, "max"));
    def(engine, "argmax", &["t: Tensor", "int"], "The flat index of the largest element.", |t: &mut T| -> ScriptResult<INT> { Ok(item(&wrap(t.0.f_argmax(None, false))?)? as INT) });
    def(engine, "argmin", &["t: Tensor", "int"], "The flat index of the smallest element.", |t: &mut T| -> ScriptResult<INT> { Ok(item(&wrap(t.0.f_argmin(None, false))?)? as INT) });
    def(engine, "sum", &["t: Tensor", "dim: int", "Tensor"], "Sums along a dimension.", |t: &mut T, d: INT| wrap(t.0.f_sum_dim_intlist(&[d][..], false, None)));
    def(engine, "mean", &["t: Tensor", "dim: int", "Tensor"], "Means along a dimension.", |t: &mut T, d: INT| wrap(float_view(t)?.f_mean_dim(&[d][..], false, None)));
    def(engine, "std", &["t: Tensor", "dim: int", "Tensor"], "Sample standard deviations (Bessel-corrected) along a dimension.", |t: &mut T, d: INT| wrap(float_view(t)?.f_std_dim(&[d][..], true, false)));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine() -> Engine {
        let mut e = Engine::new();
        register(&mut e);
        e
    }

    fn eval<R: Clone + 'static>(script: &str) -> R {
        engine().eval::<R>(script).unwrap_or_else(|e| panic!("{script}: {e}"))
    }

    #[test]
    fn shape_and_dtype_follow_torch_tensor_defaults() {
        let shape: Array = eval("tensor([[1, 2, 3], [4, 5, 6]]).shape");
        assert_eq!(shape.iter().map(|d| d.as_int().unwrap()).collect::<Vec<_>>(), vec![2, 3]);
        assert_eq!(eval::<String>("tensor([1, 2]).dtype"), "i64");
        assert_eq!(eval::<String>("tensor([1, 2.5]).dtype"), "f32");
        assert_eq!(eval::<String>(r#"tensor([1, 2], "f64").dtype"#), "f64");
        assert_eq!(eval::<INT>("tensor([[1, 2], [3, 4], [5, 6]]).len()"), 3);
        assert_eq!(eval::<INT>("zeros([2, 3, 4]).numel()"), 24);
    }

    #[test]
    fn reductions_match_hand_computed_values() {
        // [2,4,4,4,5,5,7,9]: mean 5, sum of squared deviations 32, so the Bessel-corrected
        // variance is 32/7 and the standard deviation sqrt(32/7) = 2.1380899352993952.
        let data = "tensor([2, 4, 4, 4, 5, 5, 7, 9])";
        assert_eq!(eval::<f64>(&format!("{data}.mean()")), 5.0);
        assert_eq!(eval::<f64>(&format!("{data}.sum()")), 40.0);
        assert!((eval::<f64>(&format!("{data}.std()")) - (32.0f64 / 7.0).sqrt()).abs() < 1e-12);
        assert!((eval::<f64>(&format!("{data}.variance()")) - 32.0 / 7.0).abs() < 1e-12);
        assert_eq!(eval::<f64>(&format!("{data}.max()")), 9.0);
        assert_eq!(eval::<INT>(&format!("{data}.argmin()")), 0);
        // Row sums of [[1,2],[3,4]] are [3,7]; column means [2,3].
        let rows: Array = eval("tensor([[1, 2], [3, 4]]).sum(1).to_array()");
        assert_eq!(rows.iter().map(|d| d.as_int().unwrap()).collect::<Vec<_>>(), vec![3, 7]);
        let cols: Array = eval("tensor([[1, 2], [3, 4]]).mean(0).to_array()");
        assert_eq!(cols.iter().map(|d| d.as_float().unwrap()).collect::<Vec<_>>(), vec![2.0, 3.0]);
        // logsumexp([0, ln 3]) = ln(1 + 3) = ln 4.
        let lse = eval::<f64>("tensor([[0.0, 1.0986122886681098]], \"f64\").logsumexp(1).item()");
        assert!((lse - 4f64.ln()).abs() < 1e-12);
    }

    #[test]
    fn arithmetic_broadcasts_with_tensors_and_scalars() {
        let out: Array = eval("(tensor([[1], [2]]) + tensor([10, 20])).to_array()");
        let rows: Vec<Vec<INT>> = out.iter().map(|r| r.clone().into_array().unwrap().iter().map(|x| x.as_int().unwrap()).collect()).collect();
        assert_eq!(rows, vec![vec![11, 21], vec![12, 22]]);
        assert_eq!(eval::<f64>("(2.0 * tensor([1.0, 2.0, 3.0]) - 1).sum()"), 9.0);
        assert_eq!(eval::<f64>("(tensor([1.0, 4.0]) / tensor([2.0, 8.0])).sum()"), 1.0);
        assert_eq!(eval::<f64>("(-tensor([1.5])).item()"), -1.5);
        assert_eq!(eval::<f64>("(tensor([3.0]) ** 2.0).item()"), 9.0);
        // An int tensor divided by an int is true division, as in torch.
        assert_eq!(eval::<f64>("(tensor([1, 3]) / 2).sum()"), 2.0);
    }

    #[test]
    fn indexing_counts_from_the_end_and_checks_bounds() {
        assert_eq!(eval::<INT>("let t = tensor([5, 6, 7]); t[-1]"), 7);
        assert_eq!(eval::<f64>("let t = tensor([[1.0, 2.0], [3.0, 4.0]]); t[1].sum()"), 7.0);
        let err = engine().eval::<Dynamic>("let t = tensor([5, 6, 7]); t[3]").unwrap_err();
        assert!(err.to_string().contains("index 3 out of range for a dimension of size 3"), "{err}");
    }

    #[test]
    fn prints_like_pytorch() {
        assert_eq!(eval::<String>("tensor([1.0, 2.5]).to_string()"), "tensor([1.0000, 2.5000])");
        assert_eq!(eval::<String>("tensor([1, 2]).to_string()"), "tensor([1, 2])");
        assert_eq!(eval::<String>(r#"tensor([0.5], "f64").to_string()"#), "tensor([0.5000], dtype=f64)");
        assert_eq!(eval::<String>("arange(10).to_string()"), "tensor([0, 1, 2, ..., 7, 8, 9])");
    }

    #[test]
    fn bad_input_is_a_script_error_not_a_panic() {
        let e = engine();
        let ragged = e.eval::<Dynamic>("tensor([[1, 2], [3]])").unwrap_err();
        assert!(ragged.to_string().contains("ragged"), "{ragged}");
        let mismatch = e.eval::<Dynamic>("tensor([1.0, 2.0]) + tensor([1.0, 2.0, 3.0])").unwrap_err().to_string();
        assert!(mismatch.contains("libtorch: The size of tensor a (2) must match the size of tensor b (3)"), "{mismatch}");
        assert!(!mismatch.contains("frame #"), "{mismatch}");
        let words = e.eval::<Dynamic>(r#"tensor(["a"])"#).unwrap_err();
        assert!(words.to_string().contains("expected numbers, found string"), "{words}");
        let dtype = e.eval::<Dynamic>(r#"tensor([1], "f8")"#).unwrap_err();
        assert!(dtype.to_string().contains("unknown dtype \"f8\""), "{dtype}");
        let empty = e.eval::<Dynamic>("tensor([]).mean()").unwrap_err();
        assert!(empty.to_string().contains("empty"), "{empty}");
    }
}
