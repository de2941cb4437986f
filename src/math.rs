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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_on_hand_computed_cases() {
        let p = softmax(&[0.0, 0.0, (2.0f64).ln()]);
        assert!((p[2] - 0.5).abs() < 1e-12 && (p[0] - 0.25).abs() < 1e-12);
        let lp = log_softmax(&[0.0, 0.0, (2.0f64).ln()]);
        assert!((lp[2] - 0.5f64.ln()).abs() < 1e-12 && (lp[0] - 0.25f64.ln()).abs() < 1e-12);
        // An arm with probability below f64's range keeps a finite log.
        assert!((log_softmax(&[0.0, -1000.0])[1] + 1000.0).abs() < 1e-9);
        assert!((entropy(&[0.5, 0.5]) - 2f64.ln()).abs() < 1e-12);
        assert_eq!(entropy(&[1.0, 0.0]), 0.0);
        assert_eq!(support_size(&[0.9985, 0.0005, 0.001]), 1);
    }
}
