//! How the next token is chosen from a row of logits: the one sampler of every decoding loop.
use rand::Rng;

/// How the next token is chosen.
#[derive(Debug, Clone, Copy)]
pub enum Decoding {
    /// Sample from softmax(logits / temperature).
    Sample { temperature: f64 },
    /// The most likely token (evaluation).
    Greedy,
}

impl Decoding {
    /// Greedy at temperature 0, else sampling at `temperature`.
    pub fn at(temperature: f64) -> Self {
        if temperature <= 0.0 {
            Decoding::Greedy
        } else {
            Decoding::Sample { temperature }
        }
    }
}

/// Picks a token from one row of logits; returns it with its log-probability under the sampling
/// distribution (0 for greedy). The weights are computed in f64 from the row's maximum, so that
/// the same logits and stream give the same token on any machine.
pub fn choose(row: &[f32], decoding: Decoding, rng: &mut impl Rng) -> (u32, f64) {
    match decoding {
        Decoding::Greedy => {
            let best = row
                .iter()
                .enumerate()
                .fold(0, |best, (i, &x)| if x > row[best] { i } else { best });
            (best as u32, 0.0)
        }
        Decoding::Sample { temperature } => {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let mut total = 0.0;
            let weights: Vec<f64> = row
                .iter()
                .map(|&x| {
                    let w = ((x as f64 - max) / temperature).exp();
                    total += w;
                    w
                })
                .collect();
            let mut u = rng.gen::<f64>() * total;
            let mut pick = weights.len() - 1;
            for (i, w) in weights.iter().enumerate() {
                if u < *w {
                    pick = i;
                    break;
                }
                u -= w;
            }
            (pick as u32, (weights[pick] / total).ln())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn sampling_follows_the_softmax_and_reports_its_log_probability() {
        let row = [0.0f32, (3.0f32).ln(), f32::NEG_INFINITY];
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let mut counts = [0usize; 3];
        for _ in 0..20_000 {
            let (t, logp) = choose(&row, Decoding::Sample { temperature: 1.0 }, &mut rng);
            counts[t as usize] += 1;
            let want = if t == 0 { 0.25f64.ln() } else { 0.75f64.ln() };
            assert!((logp - want).abs() < 1e-6, "{logp} vs {want}");
        }
        assert_eq!(counts[2], 0);
        let share = counts[1] as f64 / 20_000.0;
        assert!((share - 0.75).abs() < 0.015, "{share}");
        assert_eq!(choose(&row, Decoding::Greedy, &mut rng).0, 1);
    }
}
