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
            let uses = users(&nodes, output);
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

/// For each value, the indices of the live nodes that read it (the graph output counts as a use).
fn users(
    nodes: &[Option<Node>],
    output: ValueId,
) -> std::collections::HashMap<ValueId, Vec<usize>> {
    let mut m: std::collections::HashMap<ValueId, Vec<usize>> = std::collections::HashMap::new();
    for (j, n) in nodes.iter().enumerate() {
        let Some(n) = n else { continue };
        for v in n.reads() {
            m.entry(v).or_default().push(j);
        }
    }
    m.entry(output).or_default().push(usize::MAX);
    m
}

type Uses = std::collections::HashMap<ValueId, Vec<usize>>;

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
