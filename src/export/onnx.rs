//! The ONNX export: one graph from the input `input` (float `[N, features]`, raw features) to
//! the output `output` (float `[N, outputs]`): exactly what `soma predict` prints as numbers
//! (class probabilities for a classifier, values in the targets' units for a regression).
//!
//! The graph, in opset 13 (IR version 7), node by node:
//! - when the model has an imputer, the missing features filled first as
//!   `Where(IsNaN(x), fill, x)` (`fill` an initializer of one value per feature, broadcast
//!   over the rows; IsNaN and Where are both in ONNX since opset 9), on the raw features;
//! - the input scaling `(x - offset) * scale` as `Sub` and `Mul` (absent when folded into the
//!   first layer, or when the model has none);
//! - per layer, `Gemm` with `transB = 1` (the weight stays `[outputs, inputs]`, as stored)
//!   and the bias as `C` (none for a layer without one), then the activation: `Relu`,
//!   `LeakyRelu` (`alpha` = the slope), `Sigmoid`, `Tanh`, nothing for identity; GELU's tanh
//!   form from `Mul`, `Add` and `Tanh` (opset 13 has no `Gelu`), in the order soma computes it;
//!   step as `Cast(GreaterOrEqual(z, 0))` and sign as `2 step - 1` (ONNX's `Sign` gives 0 at 0);
//! - the head: `Softmax` over axis 1, `Sigmoid`, or the target scaling undone as
//!   `y / scale + offset` (`Div`, `Add`).
//!
//! The model's metadata holds `soma.output` (the head), `soma.classes` (when recorded) and
//! `soma.names` (JSON, as in the checkpoint, when the data named anything).
//!
//! The protobuf messages are written by hand over [`super::proto`] (field numbers from
//! `onnx.proto`); weights go in `raw_data`, little-endian.

use std::collections::HashSet;

use super::proto::Message;
use super::{Head, Inference};
use crate::error::{Error, Result};
use crate::network::Activation;

/// The opset the graph is written in, and the IR version that goes with it.
pub const OPSET: i64 = 13;
pub const IR_VERSION: i64 = 7;

/// The graph's input and output names.
pub const INPUT: &str = "input";
pub const OUTPUT: &str = "output";

// onnx.proto field numbers.
mod field {
    pub mod model {
        pub const IR_VERSION: u32 = 1;
        pub const PRODUCER_NAME: u32 = 2;
        pub const PRODUCER_VERSION: u32 = 3;
        pub const DOC_STRING: u32 = 6;
        pub const GRAPH: u32 = 7;
        pub const OPSET_IMPORT: u32 = 8;
        pub const METADATA_PROPS: u32 = 14;
    }
    pub mod opset {
        pub const VERSION: u32 = 2;
    }
    pub mod entry {
        pub const KEY: u32 = 1;
        pub const VALUE: u32 = 2;
    }
    pub mod graph {
        pub const NODE: u32 = 1;
        pub const NAME: u32 = 2;
        pub const INITIALIZER: u32 = 5;
        pub const INPUT: u32 = 11;
        pub const OUTPUT: u32 = 12;
    }
    pub mod node {
        pub const INPUT: u32 = 1;
        pub const OUTPUT: u32 = 2;
        pub const NAME: u32 = 3;
        pub const OP_TYPE: u32 = 4;
        pub const ATTRIBUTE: u32 = 5;
    }
    pub mod attribute {
        pub const NAME: u32 = 1;
        pub const F: u32 = 2;
        pub const I: u32 = 3;
        pub const TYPE: u32 = 20;
        /// AttributeProto.AttributeType
        pub const FLOAT: i64 = 1;
        pub const INT: i64 = 2;
    }
    pub mod tensor {
        pub const DIMS: u32 = 1;
        pub const DATA_TYPE: u32 = 2;
        pub const NAME: u32 = 8;
        pub const RAW_DATA: u32 = 9;
        /// TensorProto.DataType
        pub const FLOAT: i64 = 1;
    }
    pub mod value_info {
        pub const NAME: u32 = 1;
        pub const TYPE: u32 = 2;
    }
    pub mod type_proto {
        pub const TENSOR_TYPE: u32 = 1;
        pub const ELEM_TYPE: u32 = 1;
        pub const SHAPE: u32 = 2;
        pub const DIM: u32 = 1;
        pub const DIM_VALUE: u32 = 1;
        pub const DIM_PARAM: u32 = 2;
    }
}

/// A node attribute.
enum Attr {
    Float(&'static str, f32),
    Int(&'static str, i64),
}

impl Attr {
    fn encode(&self) -> Message {
        use field::attribute as a;
        let mut m = Message::new();
        match *self {
            Attr::Float(name, v) => m
                .string(a::NAME, name)
                .float(a::F, v)
                .int(a::TYPE, a::FLOAT),
            Attr::Int(name, v) => m.string(a::NAME, name).int(a::I, v).int(a::TYPE, a::INT),
        };
        m
    }
}

struct Node {
    name: String,
    op: &'static str,
    inputs: Vec<String>,
    output: String,
    attrs: Vec<Attr>,
}

/// The graph being built: nodes in order, initializers, and the name of the latest value.
struct Graph {
    nodes: Vec<Node>,
    initializers: Vec<Message>,
    constants: HashSet<String>,
    current: String,
}

fn tensor(name: &str, dims: &[usize], values: &[f32]) -> Message {
    use field::tensor as t;
    let dims: Vec<i64> = dims.iter().map(|&d| d as i64).collect();
    let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut m = Message::new();
    if !dims.is_empty() {
        m.packed_ints(t::DIMS, &dims);
    }
    m.int(t::DATA_TYPE, t::FLOAT)
        .string(t::NAME, name)
        .bytes(t::RAW_DATA, &raw);
    m
}

/// A float tensor's type and shape; a dimension is a size or a symbolic name.
fn value_info(name: &str, dims: &[std::result::Result<usize, &str>]) -> Message {
    use field::type_proto as tp;
    let mut shape = Message::new();
    for d in dims {
        let mut dim = Message::new();
        match d {
            Ok(n) => dim.int(tp::DIM_VALUE, *n as i64),
            Err(param) => dim.string(tp::DIM_PARAM, param),
        };
        shape.message(tp::DIM, &dim);
    }
    let mut tensor_type = Message::new();
    tensor_type
        .int(tp::ELEM_TYPE, field::tensor::FLOAT)
        .message(tp::SHAPE, &shape);
    let mut ty = Message::new();
    ty.message(tp::TENSOR_TYPE, &tensor_type);
    let mut m = Message::new();
    m.string(field::value_info::NAME, name)
        .message(field::value_info::TYPE, &ty);
    m
}

impl Graph {
    fn new() -> Graph {
        Graph {
            nodes: Vec::new(),
            initializers: Vec::new(),
            constants: HashSet::new(),
            current: INPUT.to_string(),
        }
    }

    fn initializer(&mut self, name: &str, dims: &[usize], values: &[f32]) -> String {
        self.initializers.push(tensor(name, dims, values));
        name.to_string()
    }

    /// A scalar initializer, added once however often it is used.
    fn scalar(&mut self, name: &str, v: f32) -> String {
        if self.constants.insert(name.to_string()) {
            self.initializers.push(tensor(name, &[], &[v]));
        }
        name.to_string()
    }

    /// Appends `op(inputs)` named `name`; its output is `name` too. Returns it.
    fn node(
        &mut self,
        name: String,
        op: &'static str,
        inputs: &[&str],
        attrs: Vec<Attr>,
    ) -> String {
        self.nodes.push(Node {
            name: name.clone(),
            op,
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            output: name.clone(),
            attrs,
        });
        name
    }

    /// `op(current, others...)`, which becomes the current value.
    fn then(&mut self, name: String, op: &'static str, others: &[&str], attrs: Vec<Attr>) {
        let current = self.current.clone();
        let mut inputs = vec![current.as_str()];
        inputs.extend_from_slice(others);
        self.current = self.node(name, op, &inputs, attrs);
    }

    fn activation(&mut self, prefix: &str, act: Activation) {
        match act {
            Activation::Identity => {}
            Activation::Relu => self.then(format!("{prefix}.relu"), "Relu", &[], vec![]),
            Activation::LeakyRelu { slope } => self.then(
                format!("{prefix}.leaky_relu"),
                "LeakyRelu",
                &[],
                vec![Attr::Float("alpha", slope)],
            ),
            Activation::Sigmoid => self.then(format!("{prefix}.sigmoid"), "Sigmoid", &[], vec![]),
            Activation::Tanh => self.then(format!("{prefix}.tanh"), "Tanh", &[], vec![]),
            Activation::Gelu => {
                // 0.5 z (1 + tanh(beta (z + kappa z^3))), in the CPU twin's order.
                let z = self.current.clone();
                let half = self.scalar("gelu.half", 0.5);
                let one = self.scalar("one", 1.0);
                let beta = self.scalar("gelu.beta", 0.797_884_6);
                let kappa = self.scalar("gelu.kappa", 0.044715);
                let p = |s: &str| format!("{prefix}.gelu.{s}");
                let z2 = self.node(p("z2"), "Mul", &[&z, &z], vec![]);
                let z3 = self.node(p("z3"), "Mul", &[&z2, &z], vec![]);
                let cubic = self.node(p("cubic"), "Mul", &[&kappa, &z3], vec![]);
                let sum = self.node(p("sum"), "Add", &[&z, &cubic], vec![]);
                let inner = self.node(p("inner"), "Mul", &[&beta, &sum], vec![]);
                let t = self.node(p("tanh"), "Tanh", &[&inner], vec![]);
                let one_t = self.node(p("one_plus"), "Add", &[&one, &t], vec![]);
                let hz = self.node(p("half_z"), "Mul", &[&half, &z], vec![]);
                self.current = self.node(p("out"), "Mul", &[&hz, &one_t], vec![]);
            }
            Activation::Step | Activation::Sign => {
                let zero = self.scalar("zero", 0.0);
                let ge = format!("{prefix}.ge");
                self.then(ge, "GreaterOrEqual", &[&zero], vec![]);
                self.then(
                    format!("{prefix}.step"),
                    "Cast",
                    &[],
                    vec![Attr::Int("to", field::tensor::FLOAT)],
                );
                if act == Activation::Sign {
                    let two = self.scalar("two", 2.0);
                    let one = self.scalar("one", 1.0);
                    self.then(format!("{prefix}.twice"), "Mul", &[&two], vec![]);
                    self.then(format!("{prefix}.sign"), "Sub", &[&one], vec![]);
                }
            }
        }
    }
}

/// The graph of `model`.
fn build(model: &Inference) -> Graph {
    let mut g = Graph::new();
    if let Some(i) = &model.imputer {
        let fill = g.initializer("impute.values", &[i.values.len()], &i.values);
        let x = g.current.clone();
        let missing = g.node("impute.isnan".into(), "IsNaN", &[&x], vec![]);
        g.current = g.node(
            "impute.where".into(),
            "Where",
            &[&missing, &fill, &x],
            vec![],
        );
    }
    if let Some(s) = &model.scaler {
        let width = s.width();
        let offset = g.initializer("input_scaling.offset", &[width], &s.offset);
        let scale = g.initializer("input_scaling.scale", &[width], &s.scale);
        g.then("input_scaling.sub".into(), "Sub", &[&offset], vec![]);
        g.then("input_scaling.mul".into(), "Mul", &[&scale], vec![]);
    }
    for (i, (l, p)) in model
        .network
        .layers
        .iter()
        .zip(&model.params.layers)
        .enumerate()
    {
        let prefix = format!("layers.{i}");
        let w = g.initializer(
            &format!("{prefix}.weight"),
            &[l.outputs, l.inputs],
            &p.weight,
        );
        let attrs = vec![Attr::Int("transB", 1)];
        match &p.bias {
            Some(b) => {
                let b = g.initializer(&format!("{prefix}.bias"), &[l.outputs], b);
                g.then(format!("{prefix}.gemm"), "Gemm", &[&w, &b], attrs);
            }
            None => g.then(format!("{prefix}.gemm"), "Gemm", &[&w], attrs),
        }
        g.activation(&prefix, l.activation);
    }
    match &model.head {
        Head::Softmax => g.then(
            "head.softmax".into(),
            "Softmax",
            &[],
            vec![Attr::Int("axis", 1)],
        ),
        Head::Sigmoid => g.then("head.sigmoid".into(), "Sigmoid", &[], vec![]),
        Head::Values { target: None } => {}
        Head::Values { target: Some(t) } => {
            let width = t.width();
            let scale = g.initializer("target_scaling.scale", &[width], &t.scale);
            let offset = g.initializer("target_scaling.offset", &[width], &t.offset);
            g.then("target_scaling.div".into(), "Div", &[&scale], vec![]);
            g.then("target_scaling.add".into(), "Add", &[&offset], vec![]);
        }
    }
    // The last node's value is the graph's output (a network always has a Gemm).
    if let Some(last) = g.nodes.last_mut() {
        last.output = OUTPUT.to_string();
    }
    g
}

/// The model file's bytes.
pub fn encode(model: &Inference) -> Result<Vec<u8>> {
    let net = &model.network;
    if net.layers.is_empty() {
        return Err(Error::Config("a network needs at least one layer".into()));
    }
    let g = build(model);
    let mut graph = Message::new();
    for n in &g.nodes {
        use field::node as f;
        let mut m = Message::new();
        for i in &n.inputs {
            m.string(f::INPUT, i);
        }
        m.string(f::OUTPUT, &n.output)
            .string(f::NAME, &n.name)
            .string(f::OP_TYPE, n.op);
        for a in &n.attrs {
            m.message(f::ATTRIBUTE, &a.encode());
        }
        graph.message(field::graph::NODE, &m);
    }
    graph.string(field::graph::NAME, "soma");
    for t in &g.initializers {
        graph.message(field::graph::INITIALIZER, t);
    }
    graph.message(
        field::graph::INPUT,
        &value_info(INPUT, &[Err("N"), Ok(net.input_width())]),
    );
    graph.message(
        field::graph::OUTPUT,
        &value_info(OUTPUT, &[Err("N"), Ok(net.output_width())]),
    );

    use field::model as f;
    let mut opset = Message::new();
    opset.int(field::opset::VERSION, OPSET);
    let mut model_proto = Message::new();
    model_proto
        .int(f::IR_VERSION, IR_VERSION)
        .message(f::OPSET_IMPORT, &opset)
        .string(f::PRODUCER_NAME, "soma")
        .string(f::PRODUCER_VERSION, env!("CARGO_PKG_VERSION"))
        .string(
            f::DOC_STRING,
            "input: raw features [N, features]; output: what soma predict gives",
        )
        .message(f::GRAPH, &graph);
    let mut props = vec![("soma.output", model.head.name().to_string())];
    if let Some(c) = model.classes {
        props.push(("soma.classes", c.to_string()));
    }
    if !model.names.is_empty() {
        let names = serde_json::to_string(&model.names)
            .map_err(|e| Error::Config(format!("cannot encode the names as JSON: {e}")))?;
        props.push(("soma.names", names));
    }
    for (k, v) in props {
        let mut e = Message::new();
        e.string(field::entry::KEY, k)
            .string(field::entry::VALUE, &v);
        model_proto.message(f::METADATA_PROPS, &e);
    }
    Ok(model_proto.into_bytes())
}

#[cfg(test)]
mod tests {
    //! A small reader and interpreter of the graphs this module writes: the file is decoded
    //! field by field and run on the CPU, op by op, so the encoding is checked for meaning,
    //! not only for bytes.

    use std::collections::HashMap;

    use super::*;
    use crate::export::proto::{read_fields, Field};
    use crate::export::tests::sample;
    use crate::export::Scaling;
    use crate::network::{LayerParams, Network, Parameters};
    use crate::ops::activation::cpu::sigmoid;
    use crate::ops::loss::Loss;

    fn text(b: &[u8]) -> String {
        String::from_utf8(b.to_vec()).unwrap()
    }

    fn len_fields(bytes: &[u8], number: u32) -> Vec<&[u8]> {
        read_fields(bytes)
            .expect("well-formed message")
            .into_iter()
            .filter_map(|f| match f {
                Field::Len(n, v) if n == number => Some(v),
                Field::Len(..) | Field::Varint(..) | Field::Fixed32(..) => None,
            })
            .collect()
    }

    fn varint_field(bytes: &[u8], number: u32) -> Option<u64> {
        read_fields(bytes)
            .unwrap()
            .into_iter()
            .find_map(|f| match f {
                Field::Varint(n, v) if n == number => Some(v),
                Field::Len(..) | Field::Varint(..) | Field::Fixed32(..) => None,
            })
    }

    fn string_field(bytes: &[u8], number: u32) -> String {
        text(len_fields(bytes, number)[0])
    }

    /// A value: shape and data (booleans as 0 and 1).
    #[derive(Clone, Debug)]
    struct T(Vec<usize>, Vec<f32>);

    /// `a op b`, where b is a scalar or one value per column of a's last dimension (the two
    /// broadcasts the graphs use), or the same shape.
    fn broadcast(a: &T, b: &T, op: impl Fn(f32, f32) -> f32) -> T {
        let (a, b, swap) = if a.1.len() >= b.1.len() {
            (a, b, false)
        } else {
            (b, a, true)
        };
        let n = b.1.len();
        assert!(n == 1 || a.1.len() % n == 0, "shapes {:?} {:?}", a.0, b.0);
        let data =
            a.1.iter()
                .enumerate()
                .map(|(i, &x)| {
                    let y = b.1[i % n];
                    if swap {
                        op(y, x)
                    } else {
                        op(x, y)
                    }
                })
                .collect();
        T(a.0.clone(), data)
    }

    /// A node as read back: (op, inputs, output, attributes as (name, float, int)).
    type DecodedNode = (String, Vec<String>, String, Vec<(String, f32, i64)>);

    struct Decoded {
        initializers: HashMap<String, T>,
        nodes: Vec<DecodedNode>,
        input_dims: Vec<String>,
        output_dims: Vec<String>,
        opset: u64,
        ir_version: u64,
        /// metadata_props, in order.
        metadata: Vec<(String, String)>,
    }

    fn dims_of(value_info: &[u8]) -> Vec<String> {
        let ty = len_fields(value_info, 2)[0];
        let tensor_type = len_fields(ty, 1)[0];
        assert_eq!(varint_field(tensor_type, 1), Some(1), "elem_type FLOAT");
        let shape = len_fields(tensor_type, 2)[0];
        len_fields(shape, 1)
            .into_iter()
            .map(|d| match read_fields(d).unwrap()[0] {
                Field::Varint(1, v) => v.to_string(),
                Field::Len(2, p) => text(p),
                ref other => panic!("dimension {other:?}"),
            })
            .collect()
    }

    fn decode(bytes: &[u8]) -> Decoded {
        let ir_version = varint_field(bytes, 1).unwrap();
        let opset = varint_field(len_fields(bytes, 8)[0], 2).unwrap();
        let graph = len_fields(bytes, 7)[0];
        let mut initializers = HashMap::new();
        for t in len_fields(graph, 5) {
            assert_eq!(varint_field(t, 2), Some(1), "data_type FLOAT");
            let dims: Vec<usize> = match len_fields(t, 1).first() {
                None => vec![],
                Some(packed) => {
                    let mut dims = Vec::new();
                    let mut rest = *packed;
                    while !rest.is_empty() {
                        let (v, n) = crate::export::proto::read_varint(rest).unwrap();
                        dims.push(v as usize);
                        rest = &rest[n..];
                    }
                    dims
                }
            };
            let raw = len_fields(t, 9)[0];
            let values: Vec<f32> = raw
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            assert_eq!(values.len(), dims.iter().product::<usize>());
            initializers.insert(string_field(t, 8), T(dims, values));
        }
        let nodes = len_fields(graph, 1)
            .into_iter()
            .map(|n| {
                let inputs = len_fields(n, 1).into_iter().map(text).collect();
                let attrs = len_fields(n, 5)
                    .into_iter()
                    .map(|a| {
                        let fields = read_fields(a).unwrap();
                        let f = fields.iter().find_map(|f| match f {
                            Field::Fixed32(2, b) => Some(f32::from_le_bytes(*b)),
                            Field::Fixed32(..) | Field::Varint(..) | Field::Len(..) => None,
                        });
                        let i = varint_field(a, 3);
                        let ty = varint_field(a, 20).unwrap();
                        assert_eq!(ty, if f.is_some() { 1 } else { 2 }, "attribute type");
                        (
                            string_field(a, 1),
                            f.unwrap_or(f32::NAN),
                            i.map_or(i64::MIN, |v| v as i64),
                        )
                    })
                    .collect();
                (string_field(n, 4), inputs, string_field(n, 2), attrs)
            })
            .collect();
        let metadata = len_fields(bytes, 14)
            .into_iter()
            .map(|e| (string_field(e, 1), string_field(e, 2)))
            .collect();
        Decoded {
            initializers,
            nodes,
            input_dims: dims_of(len_fields(graph, 11)[0]),
            output_dims: dims_of(len_fields(graph, 12)[0]),
            opset,
            ir_version,
            metadata,
        }
    }

    /// Runs the decoded graph on `rows` rows of `x`.
    fn run(d: &Decoded, x: &[f32], rows: usize) -> Vec<f32> {
        let mut values = d.initializers.clone();
        let width = x.len() / rows;
        values.insert(INPUT.into(), T(vec![rows, width], x.to_vec()));
        for (op, inputs, output, attrs) in &d.nodes {
            let arg = |i: usize| values[&inputs[i]].clone();
            let attr = |name: &str| attrs.iter().find(|a| a.0 == name).cloned();
            let map = |f: &dyn Fn(f32) -> f32| {
                let a = arg(0);
                T(a.0, a.1.iter().map(|&v| f(v)).collect())
            };
            let out = match op.as_str() {
                "Sub" => broadcast(&arg(0), &arg(1), |a, b| a - b),
                "Mul" => broadcast(&arg(0), &arg(1), |a, b| a * b),
                "Add" => broadcast(&arg(0), &arg(1), |a, b| a + b),
                "Div" => broadcast(&arg(0), &arg(1), |a, b| a / b),
                "GreaterOrEqual" => broadcast(&arg(0), &arg(1), |a, b| f32::from(a >= b)),
                "IsNaN" => map(&|v| f32::from(v.is_nan())),
                "Where" => {
                    // Where(condition, x, y): x where the condition holds, else y; the
                    // condition is [N, F] and the fill values [F] in these graphs.
                    let (c, x, y) = (arg(0), arg(1), arg(2));
                    let shape = [&c, &x, &y]
                        .into_iter()
                        .max_by_key(|t| t.1.len())
                        .unwrap()
                        .0
                        .clone();
                    let n: usize = shape.iter().product();
                    for t in [&c, &x, &y] {
                        assert!(
                            t.1.len() == 1
                                || (n.is_multiple_of(t.1.len()) && t.0.last() == shape.last()),
                            "Where shapes {:?} {:?} {:?}",
                            c.0,
                            x.0,
                            y.0
                        );
                    }
                    let at = |t: &T, i: usize| t.1[i % t.1.len()];
                    let data = (0..n)
                        .map(|i| {
                            if at(&c, i) != 0.0 {
                                at(&x, i)
                            } else {
                                at(&y, i)
                            }
                        })
                        .collect();
                    T(shape, data)
                }
                "Cast" => {
                    assert_eq!(attr("to").unwrap().2, 1, "Cast to FLOAT");
                    arg(0)
                }
                "Relu" => map(&|v| v.max(0.0)),
                "LeakyRelu" => {
                    let alpha = attr("alpha").unwrap().1;
                    map(&|v| if v > 0.0 { v } else { v * alpha })
                }
                "Sigmoid" => map(&|z| sigmoid(z, crate::math::Math::Native)),
                "Tanh" => map(&f32::tanh),
                "Softmax" => {
                    assert_eq!(attr("axis").unwrap().2, 1);
                    let a = arg(0);
                    let cols = a.0[1];
                    let mut data = Vec::new();
                    for row in a.1.chunks(cols) {
                        let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                        let s: f32 = row.iter().map(|v| (v - m).exp()).sum();
                        data.extend(row.iter().map(|v| (v - m).exp() / s));
                    }
                    T(a.0, data)
                }
                "Gemm" => {
                    assert_eq!(attr("transB").unwrap().2, 1);
                    let (a, w) = (arg(0), arg(1));
                    let (n, k, m) = (a.0[0], a.0[1], w.0[0]);
                    assert_eq!(w.0[1], k, "Gemm inner dimensions");
                    let c = (inputs.len() > 2).then(|| arg(2));
                    let mut data = Vec::with_capacity(n * m);
                    for r in 0..n {
                        for o in 0..m {
                            let z = (0..k).fold(0.0f32, |s, i| s + a.1[r * k + i] * w.1[o * k + i]);
                            data.push(c.as_ref().map_or(z, |c| z + c.1[o]));
                        }
                    }
                    T(vec![n, m], data)
                }
                other => panic!("an op the export does not write: {other}"),
            };
            values.insert(output.clone(), out);
        }
        values.remove(OUTPUT).expect("no node writes 'output'").1
    }

    /// The graph's header: opset, IR version, input and output shapes, one output node.
    #[test]
    fn model_header() {
        let (ck, _) = sample(Loss::SoftmaxCrossEntropy, 4, 1);
        let model = Inference::from_checkpoint(&ck, Scaling::Separate).unwrap();
        let d = decode(&encode(&model).unwrap());
        assert_eq!((d.opset, d.ir_version), (13, 7));
        assert_eq!(d.input_dims, ["N", "7"]);
        assert_eq!(d.output_dims, ["N", "4"]);
        let ops: Vec<&str> = d.nodes.iter().map(|n| n.0.as_str()).collect();
        assert_eq!(&ops[..3], ["Sub", "Mul", "Gemm"]);
        assert_eq!(ops.last(), Some(&"Softmax"));
        assert_eq!(d.nodes.iter().filter(|n| n.2 == OUTPUT).count(), 1);
        assert!(!ops.contains(&"IsNaN"), "no imputer, no fill: {ops:?}");
        let keys: Vec<&str> = d.metadata.iter().map(|m| m.0.as_str()).collect();
        assert_eq!(
            keys,
            ["soma.output", "soma.classes"],
            "no names, no soma.names"
        );
        // The first layer has no bias: its Gemm has two inputs.
        assert_eq!(d.nodes[2].1.len(), 2);
        assert_eq!(d.initializers["layers.0.weight"].0, [9, 7]);
        let folded = Inference::from_checkpoint(&ck, Scaling::Folded).unwrap();
        let d = decode(&encode(&folded).unwrap());
        assert_eq!(d.nodes[0].0, "Gemm");
        assert_eq!(d.nodes[0].1.len(), 3, "the folded first layer has a bias");
    }

    /// The decoded graph, run op by op, gives the model's outputs (within 1e-5: tanh is
    /// `f32::tanh` here and the overflow-free form in soma) for every head, folded or not.
    #[test]
    fn graph_computes_the_model() {
        for (loss, outputs) in [
            (Loss::SoftmaxCrossEntropy, 4),
            (Loss::BinaryCrossEntropy, 1),
            (Loss::BinaryCrossEntropy, 3),
            (Loss::Mse, 2),
        ] {
            let (ck, x) = sample(loss, outputs, 30);
            for scaling in [Scaling::Separate, Scaling::Folded] {
                let model = Inference::from_checkpoint(&ck, scaling).unwrap();
                let d = decode(&encode(&model).unwrap());
                let got = run(&d, &x, 30);
                let want = model.forward(&x, 30).unwrap();
                assert_eq!(got.len(), want.len());
                let tol = |w: f32| 1e-5 * w.abs().max(1.0);
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (g - w).abs() <= tol(*w),
                        "{loss:?} {scaling:?} output {i}: graph {g}, model {w}"
                    );
                }
            }
        }
    }

    /// With an imputer the graph opens with `Where(IsNaN(input), impute.values, input)`,
    /// before the scaling (folded or not), and on rows with NaN gives the model's outputs:
    /// those of the rows with the fill values written in. The names ride in the metadata as
    /// the checkpoint's JSON, after the keys there were before.
    #[test]
    fn graph_fills_missing_values_as_the_model_does() {
        for (loss, outputs) in [
            (Loss::SoftmaxCrossEntropy, 3),
            (Loss::BinaryCrossEntropy, 1),
            (Loss::Mse, 2),
        ] {
            let (ck, gaps, filled) = crate::export::tests::sample_with_gaps(loss, outputs, 30);
            for scaling in [Scaling::Separate, Scaling::Folded] {
                let model = Inference::from_checkpoint(&ck, scaling).unwrap();
                let d = decode(&encode(&model).unwrap());
                let ops: Vec<&str> = d.nodes.iter().map(|n| n.0.as_str()).collect();
                let next = match scaling {
                    Scaling::Separate => "Sub",
                    Scaling::Folded => "Gemm",
                };
                assert_eq!(&ops[..3], ["IsNaN", "Where", next], "{loss:?} {scaling:?}");
                assert_eq!(d.nodes[0].1, [INPUT]);
                assert_eq!(d.nodes[1].1, ["impute.isnan", "impute.values", INPUT]);
                assert_eq!(d.nodes[2].1[0], "impute.where");
                let fill = &d.initializers["impute.values"];
                assert_eq!(fill.0, [7]);
                assert_eq!(Some(&fill.1), ck.imputer.as_ref().map(|i| &i.values));

                let got = run(&d, &gaps, 30);
                let want = model.forward(&gaps, 30).unwrap();
                assert_eq!(want, model.forward(&filled, 30).unwrap());
                assert!(got.iter().all(|v| v.is_finite()), "{loss:?} {scaling:?}");
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (g - w).abs() <= 1e-5 * w.abs().max(1.0),
                        "{loss:?} {scaling:?} output {i}: graph {g}, model {w}"
                    );
                }

                let meta: HashMap<&str, &str> = d
                    .metadata
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                assert_eq!(d.metadata[0].0, "soma.output");
                assert_eq!(d.metadata.last().unwrap().0, "soma.names");
                let names: crate::data::Names = serde_json::from_str(meta["soma.names"]).unwrap();
                assert_eq!(names, ck.names);
            }
            // Without the imputer every row comes out otherwise: the fill is the graph's doing.
            let mut plain = ck.clone();
            plain.imputer = None;
            let model = Inference::from_checkpoint(&plain, Scaling::Separate).unwrap();
            let got = run(&decode(&encode(&model).unwrap()), &gaps, 30);
            let want = model.forward(&filled, 30).unwrap();
            assert!(
                got.chunks(outputs)
                    .zip(want.chunks(outputs))
                    .all(|(g, w)| g != w),
                "{loss:?}"
            );
        }
    }

    /// Step and sign at and around 0: soma's step(0) = 1 and sign(0) = 1, where ONNX's own
    /// `Sign` would give 0.
    #[test]
    fn step_and_sign_at_zero() {
        for act in [Activation::Step, Activation::Sign] {
            let network = Network {
                layers: vec![crate::network::Layer {
                    inputs: 1,
                    outputs: 1,
                    activation: act,
                    bias: true,
                }],
            };
            let ck = crate::checkpoint::Checkpoint {
                network,
                params: Parameters {
                    layers: vec![LayerParams {
                        weight: vec![1.0],
                        bias: Some(vec![0.0]),
                    }],
                },
                loss: Loss::Mse,
                scaler: None,
                classes: None,
                target_scaler: None,
                resume: None,
                imputer: Default::default(),
                names: Default::default(),
            };
            let model = Inference::from_checkpoint(&ck, Scaling::Separate).unwrap();
            let x = [-2.0, -1e-30, -0.0, 0.0, 1e-30, 3.0];
            let got = run(&decode(&encode(&model).unwrap()), &x, x.len());
            let want = model.forward(&x, x.len()).unwrap();
            assert_eq!(got, want, "{act}");
            let below = if act == Activation::Step { 0.0 } else { -1.0 };
            let expected = vec![below, below, 1.0, 1.0, 1.0, 1.0];
            assert_eq!(got, expected, "{act}");
        }
    }
}
