//! A learner batch as a prefix tree, so that each shared prefix is computed once.
//!
//! The G samples of a prompt share the prompt, a trained policy often writes the same call or the
//! same whole answer several times, and right-padding every row to the longest one wastes more.
//! Under a causal model the hidden state at a position depends only on the tokens up to it, so
//! rows that agree up to a position have the same hidden state there. [`PrefixBatch`] numbers the
//! distinct prefixes ("nodes") of the positions the model is fed: the per-token layers (embedding,
//! layer norms, linear layers, output head) run once per node, and only attention lays the nodes
//! out as padded rows (see `Transformer::score_prefixes`).
use std::collections::HashMap;

/// The positions of a batch of token rows, deduplicated by prefix. Plain host data; all indices
/// are `i64` so they become index tensors as they are.
#[derive(Debug, Clone, PartialEq)]
pub struct PrefixBatch {
    /// B: rows in the batch.
    pub rows: usize,
    /// W: positions fed per row, the longest row's length − 1 (each position predicts the next
    /// token; at least 1).
    pub width: usize,
    /// [N] token of each node.
    pub node_token: Vec<i64>,
    /// [N] position of each node in its rows (its depth in the tree).
    pub node_pos: Vec<i64>,
    /// [B × W] node fed at each slot (row-major); slots past a row's end hold node 0, which only
    /// the padding's own discarded outputs ever see (attention is causal and rows right-padded).
    pub slot_node: Vec<i64>,
    /// [N] the slot whose attention output becomes the node's: its first occurrence.
    pub node_slot: Vec<i64>,
    /// [M] nodes whose next-token distribution scores at least one policy-written token.
    pub head_nodes: Vec<i64>,
    /// [M] how many scored slots use each head node (weights for the mean entropy).
    pub head_uses: Vec<f32>,
    /// [B × W] index into `head_nodes` of each slot's node (0 where the slot scores nothing).
    pub slot_head: Vec<i64>,
    /// [B × W] the token each slot predicts (0 past a row's end).
    pub slot_target: Vec<i64>,
    /// [B × W] 1 where the predicted token was written by the policy.
    pub mask: Vec<f32>,
}

impl PrefixBatch {
    /// Builds the tree of `rows`: each row's tokens and, per token, whether the policy wrote it.
    /// Two positions share a node when their rows agree on every token and every policy flag up
    /// to and including that position.
    pub fn new<'a>(rows: impl Iterator<Item = (&'a [u32], &'a [bool])>) -> Self {
        let rows: Vec<_> = rows.collect();
        let width = rows
            .iter()
            .map(|(a, _)| a.len().saturating_sub(1))
            .max()
            .unwrap_or(0)
            .max(1);
        let slots = rows.len() * width;
        let mut batch = PrefixBatch {
            rows: rows.len(),
            width,
            node_token: Vec::new(),
            node_pos: Vec::new(),
            slot_node: vec![0; slots],
            node_slot: Vec::new(),
            head_nodes: Vec::new(),
            head_uses: Vec::new(),
            slot_head: vec![0; slots],
            slot_target: vec![0; slots],
            mask: vec![0.0; slots],
        };
        // (parent node or ROOT, token, written by the policy) → node.
        const ROOT: i64 = -1;
        let mut children: HashMap<(i64, u32, bool), i64> = HashMap::new();
        let mut head_of: HashMap<i64, i64> = HashMap::new();
        for (r, (tokens, by_policy)) in rows.iter().enumerate() {
            let mut parent = ROOT;
            for t in 0..tokens.len().saturating_sub(1) {
                let slot = r * width + t;
                let key = (
                    parent,
                    tokens[t],
                    by_policy.get(t).copied().unwrap_or(false),
                );
                let node = *children.entry(key).or_insert_with(|| {
                    batch.node_token.push(tokens[t] as i64);
                    batch.node_pos.push(t as i64);
                    batch.node_slot.push(slot as i64);
                    batch.node_token.len() as i64 - 1
                });
                batch.slot_node[slot] = node;
                batch.slot_target[slot] = tokens[t + 1] as i64;
                if by_policy.get(t + 1).copied().unwrap_or(false) {
                    let head = *head_of.entry(node).or_insert_with(|| {
                        batch.head_nodes.push(node);
                        batch.head_uses.push(0.0);
                        batch.head_nodes.len() as i64 - 1
                    });
                    batch.head_uses[head as usize] += 1.0;
                    batch.slot_head[slot] = head;
                    batch.mask[slot] = 1.0;
                }
                parent = node;
            }
        }
        // Keep every index tensor non-empty: a batch with nothing to feed or score still runs
        // (and scores zero) instead of indexing an empty tensor.
        if batch.node_token.is_empty() {
            batch.node_token.push(0);
            batch.node_pos.push(0);
            batch.node_slot.push(0);
        }
        if batch.head_nodes.is_empty() {
            batch.head_nodes.push(0);
            batch.head_uses.push(0.0);
        }
        batch
    }

    /// N: distinct nodes the per-token layers compute.
    pub fn nodes(&self) -> usize {
        self.node_token.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn build(rows: &[(Vec<u32>, Vec<bool>)]) -> PrefixBatch {
        PrefixBatch::new(rows.iter().map(|(a, m)| (&a[..], &m[..])))
    }

    /// Two samples of one prompt that part after the prompt, and a shorter unrelated row: the
    /// prompt's three positions are shared, everything else is not.
    #[test]
    fn shares_the_prompt_of_a_group_and_nothing_else() {
        let f = false;
        let rows = vec![
            (vec![1, 7, 8, 4, 5, 2], vec![f, f, f, true, true, true]),
            (vec![1, 7, 8, 6, 2], vec![f, f, f, true, true]),
            (vec![1, 9, 2], vec![f, f, true]),
        ];
        let b = build(&rows);
        assert_eq!((b.rows, b.width), (3, 5));
        // Fed positions: 5 + 4 + 2 = 11; shared: <1 7 8> once for the first two rows, and the
        // leading 1 of the third row too.
        assert_eq!(b.nodes(), 11 - 3 - 1);
        assert_eq!(b.node_token, vec![1, 7, 8, 4, 5, 6, 9]);
        assert_eq!(b.node_pos, vec![0, 1, 2, 3, 4, 3, 1]);
        assert_eq!(&b.slot_node[5..9], &[0, 1, 2, 5]);
        assert_eq!(&b.slot_node[10..12], &[0, 6]);
        // Row 1's shared prompt takes its output from row 0's slots.
        assert_eq!(b.node_slot, vec![0, 1, 2, 3, 4, 8, 11]);
        // Node 2 (the prompt's end) predicts a policy token in rows 0 and 1: one head, used twice.
        assert_eq!(b.head_nodes, vec![2, 3, 4, 5, 6]);
        assert_eq!(b.head_uses, vec![2.0, 1.0, 1.0, 1.0, 1.0]);
        assert_eq!(&b.mask[..5], &[0.0, 0.0, 1.0, 1.0, 1.0]);
        assert_eq!(&b.slot_target[5..9], &[7, 8, 6, 2]);
        assert_eq!(&b.slot_head[5..9], &[0, 0, 0, 3]);
    }

    /// The same tokens written by the environment and by the policy are different nodes: the
    /// mask is part of what is shared.
    #[test]
    fn a_token_the_policy_wrote_is_not_shared_with_the_same_token_from_the_environment() {
        let rows = vec![
            (vec![1, 5, 2], vec![false, true, true]),
            (vec![1, 5, 3], vec![false, false, true]),
        ];
        assert_eq!(build(&rows).nodes(), 3);
    }

    #[test]
    fn an_empty_or_one_token_batch_still_has_an_index_to_every_tensor() {
        let b = build(&[(vec![1], vec![false])]);
        assert_eq!(
            (b.rows, b.width, b.nodes(), b.head_nodes.len()),
            (1, 1, 1, 1)
        );
        assert_eq!(b.mask, vec![0.0]);
    }

    fn rows_strategy() -> impl Strategy<Value = Vec<(Vec<u32>, Vec<bool>)>> {
        // A small alphabet and short rows, so that rows share prefixes often.
        prop::collection::vec(
            prop::collection::vec((0u32..3, any::<bool>()), 1..8)
                .prop_map(|r| r.into_iter().unzip()),
            1..12,
        )
    }

    proptest! {
        /// Reading each row back through its slots gives its tokens, positions, targets and
        /// mask; a node is the same prefix wherever it is used, and no two nodes are.
        #[test]
        fn prop_every_row_reads_back_through_its_nodes(rows in rows_strategy()) {
            let b = build(&rows);
            let mut prefix_of: HashMap<i64, Vec<(u32, bool)>> = HashMap::new();
            for (r, (tokens, by_policy)) in rows.iter().enumerate() {
                for t in 0..tokens.len() - 1 {
                    let slot = r * b.width + t;
                    let node = b.slot_node[slot];
                    prop_assert_eq!(b.node_token[node as usize], tokens[t] as i64);
                    prop_assert_eq!(b.node_pos[node as usize], t as i64);
                    prop_assert_eq!(b.slot_target[slot], tokens[t + 1] as i64);
                    prop_assert_eq!(b.mask[slot], if by_policy[t + 1] { 1.0 } else { 0.0 });
                    if by_policy[t + 1] {
                        prop_assert_eq!(b.head_nodes[b.slot_head[slot] as usize], node);
                    }
                    let prefix: Vec<(u32, bool)> =
                        tokens[..=t].iter().copied().zip(by_policy[..=t].iter().copied()).collect();
                    let seen = prefix_of.entry(node).or_insert_with(|| prefix.clone());
                    prop_assert_eq!(&*seen, &prefix);
                }
            }
            // Only a batch with nothing to feed keeps a placeholder node.
            prop_assert_eq!(b.nodes(), prefix_of.len().max(1));
            let distinct: std::collections::HashSet<_> = prefix_of.values().collect();
            prop_assert_eq!(distinct.len(), prefix_of.len());
            // Each node's representative slot holds that node.
            for (n, &slot) in b.node_slot.iter().enumerate() {
                if !prefix_of.is_empty() {
                    prop_assert_eq!(b.slot_node[slot as usize], n as i64);
                }
            }
            let uses: f32 = b.head_uses.iter().sum();
            prop_assert_eq!(uses, b.mask.iter().sum::<f32>());
        }
    }
}
