//! Graph rewrites that fold pointwise work into convolution epilogues.
//!
//! Every fused op saves a full read and write of a feature map, which is most of the time of a
//! pointwise kernel. Rewrites are exact (the same float ops in the same order as the unfused
//! graph evaluates them), so the fused graph can be checked against the unfused one.

use super::{Activation, BinaryKind, Epilogue, Graph, Node, Op, Rhs, ValueId};

/// Fuse activations, SPAN's gate and residual adds into the convolutions that feed them.
pub fn fuse(graph: Graph) -> Graph {
    let Graph {
        name,
        values,
        nodes,
        input,
        output,
    } = graph;
    let mut nodes: Vec<Option<Node>> = nodes.into_iter().map(Some).collect();
    let producer_index = |nodes: &[Option<Node>], v: ValueId| {
        nodes
            .iter()
            .position(|n| n.as_ref().is_some_and(|n| n.output == v))
    };

    for i in 0..nodes.len() {
        loop {
            let uses = users(nodes.iter().map(Option::as_ref), output);
            let Some(Node {
                op: Op::Conv(conv),
                output: t,
                ..
            }) = &nodes[i]
            else {
                break;
            };
            let t = *t;
            if conv.epilogue != Epilogue::None {
                break;
            }
            let users_t = uses.get(&t).cloned().unwrap_or_default();

            // SPAN gate: y = (t + r) * (sigmoid(t) - 0.5)
            if conv.act == Activation::None && users_t.len() == 2 {
                if let Some((remove, r, y)) = match_span_gate(&nodes, &uses, t, &users_t) {
                    if producer_index(&nodes, r).is_none_or(|p| p < i) {
                        let y_out = y;
                        for j in remove {
                            nodes[j] = None;
                        }
                        if let Some(Node {
                            op: Op::Conv(c),
                            output,
                            ..
                        }) = &mut nodes[i]
                        {
                            c.epilogue = Epilogue::SpanGate(r);
                            *output = y_out;
                        }
                        continue;
                    }
                }
            }
            if users_t.len() != 1 {
                break;
            }
            let j = users_t[0];
            // the graph's output itself: nothing to fuse into
            if j == usize::MAX {
                break;
            }
            let user = nodes[j].as_ref().expect("live user");
            match &user.op {
                Op::Act(a) if conv.act == Activation::None => {
                    let (a, out) = (a.clone(), user.output);
                    nodes[j] = None;
                    if let Some(Node {
                        op: Op::Conv(c),
                        output,
                        ..
                    }) = &mut nodes[i]
                    {
                        c.act = a;
                        *output = out;
                    }
                }
                Op::Binary {
                    kind: BinaryKind::Add,
                    rhs: Rhs::Tensor,
                } => {
                    let r = if user.inputs[0] == t {
                        user.inputs[1]
                    } else {
                        user.inputs[0]
                    };
                    if r == t || producer_index(&nodes, r).is_some_and(|p| p > i) {
                        break;
                    }
                    let out = user.output;
                    nodes[j] = None;
                    if let Some(Node {
                        op: Op::Conv(c),
                        output,
                        ..
                    }) = &mut nodes[i]
                    {
                        c.epilogue = Epilogue::Add(r);
                        *output = out;
                    }
                }
                _ => break,
            }
        }
    }
    Graph {
        name,
        values,
        nodes: nodes.into_iter().flatten().collect(),
        input,
        output,
    }
}

/// For each value, the indices of the live nodes that read it, once per read (the graph output
/// counts as a use by `usize::MAX`).
/// `nodes` yields `None` for removed nodes, so indices stay those of the node list.
pub(crate) fn users<'a>(nodes: impl Iterator<Item = Option<&'a Node>>, output: ValueId) -> Uses {
    let mut m = Uses::new();
    for (j, n) in nodes.enumerate() {
        let Some(n) = n else { continue };
        for v in n.reads() {
            m.entry(v).or_default().push(j);
        }
    }
    m.entry(output).or_default().push(usize::MAX);
    m
}

pub(crate) type Uses = std::collections::HashMap<ValueId, Vec<usize>>;

/// Match `sigmoid(t) - 0.5` and `t + r` feeding one `mul`. Returns the nodes to remove, `r`, `y`.
fn match_span_gate(
    nodes: &[Option<Node>],
    uses: &Uses,
    t: ValueId,
    users_t: &[usize],
) -> Option<(Vec<usize>, ValueId, ValueId)> {
    let node = |j: usize| nodes.get(j).and_then(|n| n.as_ref());
    let single_user = |v: ValueId| match uses.get(&v).map(Vec::as_slice) {
        Some([j]) if *j != usize::MAX => Some(*j),
        _ => None,
    };
    let (mut sig, mut add) = (None, None);
    for &j in users_t {
        match &node(j)?.op {
            Op::Act(Activation::Sigmoid) => sig = Some(j),
            Op::Binary {
                kind: BinaryKind::Add,
                rhs: Rhs::Tensor,
            } => add = Some(j),
            _ => return None,
        }
    }
    let (sig, add) = (sig?, add?);
    let sub = single_user(node(sig)?.output)?;
    match &node(sub)?.op {
        Op::Binary {
            kind: BinaryKind::Sub,
            rhs: Rhs::Scalar(h),
        } if *h == 0.5 => {}
        _ => return None,
    }
    let add_node = node(add)?;
    let r = if add_node.inputs[0] == t {
        add_node.inputs[1]
    } else {
        add_node.inputs[0]
    };
    if r == t {
        return None;
    }
    let mul = single_user(add_node.output)?;
    if single_user(node(sub)?.output)? != mul {
        return None;
    }
    let mul_node = node(mul)?;
    match &mul_node.op {
        Op::Binary {
            kind: BinaryKind::Mul,
            rhs: Rhs::Tensor,
        } => {}
        _ => return None,
    }
    Some((vec![sig, sub, add, mul], r, mul_node.output))
}

/// Rewrite each pointwise convolution over a concatenation (SPAN's `conv_cat`) as a chain of
/// convolutions, one per concatenated input, each adding the previous partial sum through its
/// residual epilogue: `W [a; b] + bias = W_a a + (W_b b + bias)`. The integer modes need it:
/// the concatenated tensors span very different ranges (SPAN's first feature map reaches
/// +-40, the blocks' outputs +-3), and one quantizer over all of them costs 0.6 dB at w8a8;
/// split, each input gets its own. Only convolutions without activation or epilogue of their
/// own, whose concatenation has no other reader, are split. The sums associate differently
/// from the single convolution, so results agree to float rounding, not bit for bit.
pub fn split_concat_convs(graph: Graph) -> Graph {
    let mut g = graph;
    loop {
        let uses = users(g.nodes.iter().map(Some), g.output);
        let found = g.nodes.iter().enumerate().find_map(|(i, n)| {
            let Op::Conv(c) = &n.op else { return None };
            if c.k != 1 || c.act != Activation::None || c.epilogue != Epilogue::None {
                return None;
            }
            let p = g.nodes.iter().position(|m| m.output == n.inputs[0])?;
            let only_reader = uses.get(&n.inputs[0]).is_some_and(|u| u.len() == 1);
            (matches!(g.nodes[p].op, Op::Concat) && only_reader).then_some((i, p))
        });
        let Some((i, p)) = found else { return g };
        let node = g.nodes[i].clone();
        let Op::Conv(c) = &node.op else {
            unreachable!()
        };
        let parts = g.nodes[p].inputs.clone();
        let scale = g.values[node.output].scale;
        let mut chain = Vec::new();
        let (mut c0, mut prev) = (0usize, None);
        for (s, &v) in parts.iter().enumerate() {
            let ci = g.values[v].channels;
            let last = s + 1 == parts.len();
            let output = if last {
                node.output
            } else {
                g.values.push(super::Value {
                    name: format!("{}#{s}", g.values[node.output].name),
                    channels: c.out_ch,
                    scale,
                });
                g.values.len() - 1
            };
            let weights = (0..c.out_ch)
                .flat_map(|o| c.weights[o * c.in_ch + c0..o * c.in_ch + c0 + ci].to_vec())
                .collect();
            chain.push(Node {
                name: format!("{}#{s}", node.name),
                op: Op::Conv(super::Conv {
                    in_ch: ci,
                    out_ch: c.out_ch,
                    k: 1,
                    weights,
                    bias: if last {
                        c.bias.clone()
                    } else {
                        vec![0.0; c.out_ch]
                    },
                    act: Activation::None,
                    epilogue: prev.map_or(Epilogue::None, Epilogue::Add),
                }),
                inputs: vec![v],
                output,
            });
            prev = Some(output);
            c0 += ci;
        }
        g.nodes.splice(i..=i, chain);
        g.nodes.remove(p);
    }
}
