//! The reference-first scheduler: which patches run together, in what order, and where each
//! reference's features wait for its queries.
//!
//! References run first, in groups, at (W b_high, A b_high); each one's features at the RefER
//! tap are copied into a slot of a store on the GPU. Queries then run in groups against those
//! slots at (W b_medium, A b_low). When the store for every reference would not fit the memory
//! budget, the work is cut into waves: some references, then every query of those references,
//! then the next references. So an image of any size runs in bounded memory, every patch runs
//! exactly once, and no query runs before its reference.

use super::select::Selection;
use crate::error::{Error, Result};

/// The memory model the schedule must respect (bytes).
pub struct Budget<'a> {
    /// Device memory the plans and the reference store may take together.
    pub max_bytes: u64,
    /// One reference's stored features.
    pub slot_bytes: u64,
    /// Tensors of the reference plan for a group of `n` patches.
    pub reference_plan: &'a dyn Fn(usize) -> u64,
    /// Tensors of the query plan for a group of `n` patches.
    pub query_plan: &'a dyn Fn(usize) -> u64,
    /// Largest group (patches per dispatch) worth having.
    pub max_group: usize,
}

/// One patch in a group: the patch, and the store slot it writes (reference) or reads (query).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Item {
    pub patch: usize,
    pub slot: usize,
}

/// References and then their queries, sharing one store of `slots` slots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wave {
    pub references: Vec<Vec<Item>>,
    pub queries: Vec<Vec<Item>>,
    pub slots: usize,
}

/// The whole run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    pub waves: Vec<Wave>,
    /// Patches per group.
    pub group: usize,
    /// Device memory at the peak: both plans and the largest store.
    pub peak_bytes: u64,
}

impl Schedule {
    /// Patches in the order they run, with whether each is a reference.
    pub fn order(&self) -> Vec<(usize, bool)> {
        let mut out = Vec::new();
        for w in &self.waves {
            out.extend(w.references.iter().flatten().map(|it| (it.patch, true)));
            out.extend(w.queries.iter().flatten().map(|it| (it.patch, false)));
        }
        out
    }
}

/// Plan the run of `sel` within `budget`.
pub fn schedule(sel: &Selection, budget: &Budget) -> Result<Schedule> {
    let n = sel.reference.len();
    let plans = |g: usize| (budget.reference_plan)(g) + (budget.query_plan)(g);
    let fits = |g: usize| plans(g) + budget.slot_bytes * g as u64 <= budget.max_bytes;
    if !fits(1) {
        return Err(Error::Invalid(format!(
            "one patch needs {} MiB (plans and one stored reference), over the memory budget of {} MiB: use a smaller patch or a larger --max-memory",
            (plans(1) + budget.slot_bytes).div_ceil(1 << 20),
            budget.max_bytes >> 20
        )));
    }
    let mut group = 1;
    while group < budget.max_group.min(n.max(1)) && fits(group + 1) {
        group += 1;
    }
    let capacity = ((budget.max_bytes - plans(group)) / budget.slot_bytes.max(1)) as usize;
    let refs = sel.references();
    let mut waves = Vec::new();
    let mut peak = 0;
    for wave_refs in refs.chunks(capacity.max(1)) {
        let items: Vec<Item> = wave_refs
            .iter()
            .enumerate()
            .map(|(slot, &patch)| Item { patch, slot })
            .collect();
        let queries: Vec<Item> = (0..n)
            .filter(|&i| !sel.is_reference(i))
            .filter_map(|i| {
                let slot = wave_refs.iter().position(|&r| r == sel.reference[i])?;
                Some(Item { patch: i, slot })
            })
            .collect();
        peak = peak.max(plans(group) + budget.slot_bytes * items.len() as u64);
        waves.push(Wave {
            references: items.chunks(group).map(<[Item]>::to_vec).collect(),
            queries: queries.chunks(group).map(<[Item]>::to_vec).collect(),
            slots: wave_refs.len(),
        });
    }
    Ok(Schedule {
        waves,
        group,
        peak_bytes: peak,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(sel: &Selection, s: &Schedule, budget: &Budget) {
        let order = s.order();
        let mut seen = vec![false; sel.reference.len()];
        for (k, &(p, is_ref)) in order.iter().enumerate() {
            assert!(!seen[p], "patch {p} runs twice");
            seen[p] = true;
            assert_eq!(is_ref, sel.is_reference(p));
            if !is_ref {
                let r = sel.reference[p];
                let at = order.iter().position(|&(q, _)| q == r).unwrap();
                assert!(at < k, "query {p} runs before its reference {r}");
            }
        }
        assert!(seen.iter().all(|&x| x), "a patch never runs");
        assert!(s.peak_bytes <= budget.max_bytes);
        for w in &s.waves {
            for g in w.references.iter().chain(&w.queries) {
                assert!(!g.is_empty() && g.len() <= s.group);
                assert!(g.iter().all(|it| it.slot < w.slots));
            }
            // a query reads the slot its reference wrote
            for q in w.queries.iter().flatten() {
                let r = w.references.iter().flatten().find(|it| it.slot == q.slot);
                assert_eq!(r.map(|it| it.patch), Some(sel.reference[q.patch]));
            }
        }
    }

    fn selection(n: usize, every: usize) -> Selection {
        Selection {
            reference: (0..n).map(|i| i - i % every).collect(),
        }
    }

    #[test]
    fn plans_respect_order_and_budget() {
        let plan = |g: usize| 1000 * g as u64;
        for (n, every, max) in [
            (1, 1, 10_000),
            (7, 3, 5_000),
            (500, 7, 9_000),
            (64, 1, 100_000),
        ] {
            let sel = selection(n, every);
            let budget = Budget {
                max_bytes: max,
                slot_bytes: 300,
                reference_plan: &plan,
                query_plan: &plan,
                max_group: 16,
            };
            let s = schedule(&sel, &budget).unwrap();
            check(&sel, &s, &budget);
            assert_eq!(s, schedule(&sel, &budget).unwrap(), "deterministic");
        }
    }

    #[test]
    fn a_tight_budget_makes_waves_and_a_tiny_one_is_an_error() {
        let plan = |g: usize| 1000 * g as u64;
        let sel = selection(100, 2);
        let budget = Budget {
            max_bytes: 3_000,
            slot_bytes: 200,
            reference_plan: &plan,
            query_plan: &plan,
            max_group: 16,
        };
        let s = schedule(&sel, &budget).unwrap();
        assert!(s.waves.len() > 1);
        check(&sel, &s, &budget);
        let tiny = Budget {
            max_bytes: 1_000,
            ..budget
        };
        let e = schedule(&sel, &tiny).unwrap_err().to_string();
        assert!(e.contains("memory budget"), "{e}");
    }
}
