//! Small numerics on probability vectors, in f64: softmax and its log, entropy, support size.
//! The bandit, the exact flow, the learner's host step and the summaries share them.

/// Numerically stable softmax.
pub fn softmax(logits: &[f64]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let exps: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
    let total: f64 = exps.iter().sum();
    exps.into_iter().map(|e| e / total).collect()
}

/// log softmax(logits), through the log-sum-exp, so that tiny probabilities keep finite logs.
pub fn log_softmax(logits: &[f64]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let log_z = max + logits.iter().map(|l| (l - max).exp()).sum::<f64>().ln();
    logits.iter().map(|l| l - log_z).collect()
}

/// Shannon entropy in nats.
pub fn entropy(probs: &[f64]) -> f64 {
    -probs
        .iter()
        .filter(|&&p| p > 0.0)
        .map(|p| p * p.ln())
        .sum::<f64>()
}

/// Probability above which an arm counts as in the policy's support.
pub const SUPPORT_THRESHOLD: f64 = 1e-3;

/// Number of arms with probability above [`SUPPORT_THRESHOLD`].
pub fn support_size(probs: &[f64]) -> usize {
    probs.iter().filter(|&&p| p > SUPPORT_THRESHOLD).count()
}
