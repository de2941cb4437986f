//! `asymre bench --lm`: the pretrained LM (SmolLM2-135M-Instruct unless `--model` says otherwise)
//! against Hugging Face transformers on the same weights, in the same run: batched sampling
//! (batch 16, every row writing `new` tokens), a full fine-tuning learner step over those
//! sequences (the prompt shared by the rows, as the learner scores G samples of a prompt), a
//! BFCL workload (16 held-out tasks' prompts, each with its own tools and so no shared prefix,
//! every row writing `BFCL_NEW` tokens: episodes/s), the machine's matmul rate for scale, and
//! each side's peak memory.
use std::path::Path;
use std::time::Instant;

use serde_json::{json, Value};
use tch::nn::OptimizerConfig;
use tch::{Device, Kind};

use super::bench::{matmul_gflops, peak_rss_mib, run_reference};
use crate::config::DecodeWeights;
use crate::error::{Error, IoContext, Result};
use crate::policy::lm::{self, LmConfig};
use crate::policy::PrefixBatch;
use crate::rollout::generate::{decode, Sampling};

/// Rows decoded together and scored together.
pub const BATCH: usize = 16;
/// Tokens each row writes.
pub const NEW_TOKENS: usize = 48;
const PROMPT: &str = "Write a short story about a robot who learns to paint.";
/// Tokens each row of the BFCL workload writes (a call or two).
pub const BFCL_NEW: usize = 64;
/// The BFCL categories whose held-out tasks make the workload (four of each, in turn).
const BFCL_CATEGORIES: [&str; 4] = ["simple_python", "multiple", "parallel", "parallel_multiple"];

/// The prompts of the BFCL workload in the chat format of model `model` (its tokenizer and
/// template `text`): the first `BATCH` held-out tasks of [`BFCL_CATEGORIES`] taken in turn, each
/// with its own tools. An error (the reason) when BFCL's data is not installed or the model has
/// no ChatML format.
fn bfcl_prompts(
    model: &str,
    text: crate::text::ModelText,
) -> std::result::Result<Vec<Vec<u32>>, String> {
    use crate::env::tool_use::bfcl::{self, source::BfclSource};
    use crate::env::tool_use::protocol::chat::{ChatFormat, ChatProtocol};
    use crate::env::tool_use::protocol::Limits;
    use crate::env::{Protocol, Split, TaskSource};
    let dir = bfcl::data_dir().map_err(|e| e.to_string())?;
    let mut entries = Vec::new();
    for c in BFCL_CATEGORIES {
        entries.extend(bfcl::load(&dir, c).map_err(|e| e.to_string())?);
    }
    let source = BfclSource::new(entries, 0);
    let protocol = ChatProtocol {
        format: std::sync::Arc::new(ChatFormat::new(text, model).map_err(|e| e.to_string())?),
        limits: Limits::new(usize::MAX, 1),
    };
    (0..BATCH as u64)
        .map(|i| {
            let item = source.item(Split::Heldout, i);
            Protocol::<BfclSource>::start(&protocol, &source, item)
                .map(|ep| ep.tokens)
                .map_err(|e| e.to_string())
        })
        .collect()
}

/// What the LM section measures.
pub struct LmBench<'a> {
    pub model: &'a str,
    pub secs: f64,
    pub python: Option<&'a Path>,
    pub device: Device,
    pub json: Option<&'a Path>,
    /// The weights' kind: f32, or bf16 (everything in bf16, for CUDA).
    pub kind: Kind,
}

/// Floating-point operations of one forward pass: the blocks' products over `nodes` positions
/// and the output head over `heads` positions (attention scores left out: short sequences).
pub fn forward_flops(c: &LmConfig, nodes: f64, heads: f64) -> f64 {
    let (d, e, f) = (c.hidden as f64, c.head_dim as f64, c.ffn as f64);
    let (h, k) = (c.heads as f64, c.kv_heads as f64);
    let per_layer = d * h * e * 2.0 + d * k * e * 2.0 + 3.0 * d * f;
    2.0 * (c.layers as f64 * per_layer * nodes + d * c.vocab as f64 * heads)
}

fn progress(what: &str) {
    eprintln!("bench: {what} …");
}

pub fn run(opts: &LmBench) -> Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    tch::set_num_threads(cores as i32);
    progress("fp32 matmul through libtorch");
    let matmul = matmul_gflops(1024, (opts.secs / 3.0).max(1.0), opts.device);
    progress(&format!("loading {}", opts.model));
    let model = lm::load(opts.model, opts.device, opts.kind, None)?;
    let tok = &model.text.tokenizer;
    let chat = match &model.text.template {
        Some(t) => t.render(&[json!({"role": "user", "content": PROMPT})], None, true)?,
        None => PROMPT.to_string(),
    };
    let prompt = tok
        .encode_with(&chat, model.text.template.is_none())
        .map_err(Error::input)?;
    let prompts = vec![prompt.clone(); BATCH];

    progress(&format!(
        "decoding: batch {BATCH}, {NEW_TOKENS} new tokens per row, sampling"
    ));
    let how = |max_new| Sampling {
        max_new,
        temperature: 1.0,
        stop: &[],
    };
    let mut outputs = decode(&model.lm, &prompts, &how(4), 0, opts.device)?;
    let (mut tokens, mut spent, mut runs) = (0usize, 0.0, 0);
    while runs < 2 || spent < opts.secs {
        let t0 = Instant::now();
        outputs = decode(
            &model.lm,
            &prompts,
            &how(NEW_TOKENS),
            runs as u64 + 1,
            opts.device,
        )?;
        spent += t0.elapsed().as_secs_f64();
        tokens += outputs.iter().map(Vec::len).sum::<usize>();
        runs += 1;
    }
    let decode_tps = tokens as f64 / spent;

    progress(&format!(
        "learner step: {BATCH} sequences, full fine-tuning, Adam"
    ));
    let rows: Vec<Vec<u32>> = outputs
        .iter()
        .map(|o| prompt.iter().chain(o).copied().collect())
        .collect();
    let masks: Vec<Vec<bool>> = rows
        .iter()
        .map(|r| (0..r.len()).map(|j| j >= prompt.len()).collect())
        .collect();
    let batch = PrefixBatch::new(rows.iter().zip(&masks).map(|(r, m)| (&r[..], &m[..])));
    let mut opt = tch::nn::Adam::default().build(&model.vs, 1e-6)?;
    let mut step = || -> Result<f64> {
        let t0 = Instant::now();
        let scores = model.lm.score_prefixes(&batch, opts.device)?;
        let loss = -(scores.token_logp.f_sum(Kind::Float)?) / (BATCH as f64);
        opt.zero_grad();
        loss.backward();
        opt.step();
        let _ = loss.double_value(&[]);
        Ok(t0.elapsed().as_secs_f64())
    };
    step()?; // warm-up
    let (mut steps, mut spent) = (0usize, 0.0);
    while steps < 2 || spent < opts.secs {
        spent += step()?;
        steps += 1;
    }
    let step_s = spent / steps as f64;
    let policy_tokens: usize = masks.iter().map(|m| m.iter().filter(|&&b| b).count()).sum();
    let flops = 3.0
        * forward_flops(
            &model.cfg,
            batch.nodes() as f64,
            batch.head_nodes.len() as f64,
        );
    let bfcl = bfcl_prompts(opts.model, model.text);
    let bfcl_eps = match &bfcl {
        Ok(prompts) => {
            let lens: Vec<usize> = prompts.iter().map(Vec::len).collect();
            progress(&format!(
                "BFCL workload: {BATCH} held-out tasks' prompts ({}–{} tokens), {BFCL_NEW} new tokens per row",
                lens.iter().min().unwrap_or(&0),
                lens.iter().max().unwrap_or(&0)
            ));
            decode(&model.lm, prompts, &how(4), 0, opts.device)?;
            let (mut spent, mut runs) = (0.0, 0);
            while runs < 2 || spent < opts.secs {
                let t0 = Instant::now();
                decode(&model.lm, prompts, &how(BFCL_NEW), runs + 1, opts.device)?;
                spent += t0.elapsed().as_secs_f64();
                runs += 1;
            }
            Some((BATCH as u64 * runs) as f64 / spent)
        }
        Err(why) => {
            progress(&format!("BFCL workload skipped: {why}"));
            None
        }
    };
    let ours = json!({
        "bfcl_episodes_per_s": bfcl_eps,
        "matmul_gflops": matmul,
        "decode_tokens_per_s": decode_tps,
        "learner_step_s": step_s,
        "learner_tokens_per_s": policy_tokens as f64 / step_s,
        "learner_gflops": flops / step_s / 1e9,
        "learner_share_of_matmul": flops / step_s / 1e9 / matmul,
        "peak_rss_mib": peak_rss_mib(),
        "prompt_tokens": prompt.len(),
    });
    let base = match opts.python {
        Some(python) => {
            progress("transformers on the same file (scripts/reference/lm_baseline.py)");
            let bfcl = bfcl
                .as_ref()
                .ok()
                .map(|p| serde_json::to_string(p).unwrap_or_default());
            Some(baseline(
                python,
                model.files.path(),
                &prompt,
                bfcl.as_deref(),
                opts.secs,
            )?)
        }
        None => None,
    };
    let precision = if opts.kind == Kind::Float {
        "f32"
    } else {
        "bf16"
    };
    print_table(
        &ours,
        base.as_ref(),
        cores,
        opts.model,
        precision,
        opts.device,
    );
    if let Some(path) = opts.json {
        let all = json!({"asymre": ours, "transformers": base, "cores": cores, "model": opts.model,
            "precision": precision, "device": crate::device::device_name(opts.device)});
        std::fs::write(path, serde_json::to_string_pretty(&all).unwrap_or_default()).at(path)?;
    }
    Ok(())
}

/// `asymre bench --lm --decoding`: decoding alone in llama-batched-bench's terms, to set beside
/// llama.cpp on the same file: for each set of decoding weights (`policy.decode_weights`) and
/// batch size, `pp`-token prompts (a different one per row, so nothing is shared) and `tg`
/// sampled tokens per row; prompt tokens/s from a pass that writes one token, generation
/// tokens/s from the rest of a full pass. One JSON line per row (llama-batched-bench's keys: pp,
/// tg, pl, t_pp, speed_pp, t_tg, speed_tg; with `weights`, the packed kernels' `isa`, the
/// `weight_mib` a step reads and the seconds packing took, `pack_s`) on stdout.
pub fn decoding(
    model: &str,
    weights: &[DecodeWeights],
    (pp, tg): (usize, usize),
    batches: &[usize],
    secs: f64,
) -> Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    tch::set_num_threads(cores as i32);
    progress(&format!("loading {model}"));
    let mut m = lm::load(model, Device::Cpu, Kind::Float, None)?;
    let vocab = m.cfg.vocab as u64;
    let isa = crate::policy::lm::vector::Isa::best().name();
    for &how in weights {
        let t0 = Instant::now();
        m.lm.pack_for_decoding(how)?;
        let pack_s = t0.elapsed().as_secs_f64();
        let mib = m.lm.decode_bytes() as f64 / (1 << 20) as f64;
        for &pl in batches {
            // Row r's token j: spread over the vocabulary, different in every row from the first.
            let prompts: Vec<Vec<u32>> = (0..pl as u64)
                .map(|r| {
                    (0..pp as u64)
                        .map(|j| ((r * 7919 + j * 104_729 + 17) % vocab) as u32)
                        .collect()
                })
                .collect();
            let how_many = |max_new| Sampling {
                max_new,
                temperature: 1.0,
                stop: &[],
            };
            progress(&format!(
                "asymre decoding from {} weights: batch {pl}, {pp}-token prompts, {tg} new tokens",
                how.name()
            ));
            decode(&m.lm, &prompts, &how_many(2), 0, Device::Cpu)?; // warm-up
            let (mut t_pp, mut t_all, mut runs) = (0.0, 0.0, 0u64);
            while runs < 2 || t_all < secs {
                let t0 = Instant::now();
                decode(&m.lm, &prompts, &how_many(1), runs + 1, Device::Cpu)?;
                let t1 = Instant::now();
                let out = decode(&m.lm, &prompts, &how_many(tg), runs + 1, Device::Cpu)?;
                t_all += t1.elapsed().as_secs_f64();
                t_pp += t1.duration_since(t0).as_secs_f64();
                if out.iter().any(|o| o.len() != tg) {
                    return Err(Error::Corrupt("a row stopped before its tokens".into()));
                }
                runs += 1;
            }
            let (t_pp, t_all) = (t_pp / runs as f64, t_all / runs as f64);
            let t_tg = (t_all - t_pp).max(1e-9);
            println!(
                "{}",
                json!({"engine": "asymre", "weights": how.name(), "isa": isa,
                    "weight_mib": mib, "pack_s": pack_s, "pp": pp, "tg": tg, "pl": pl, "n_threads": cores,
                    "t_pp": t_pp, "speed_pp": (pl * pp) as f64 / t_pp,
                    "t_tg": t_tg, "speed_tg": (pl * (tg - 1)) as f64 / t_tg})
            );
        }
    }
    Ok(())
}

/// transformers on the same workloads; `bfcl`: the BFCL workload's prompts as JSON, written to
/// a file the script reads.
fn baseline(
    python: &Path,
    model: &Path,
    prompt: &[u32],
    bfcl: Option<&str>,
    secs: f64,
) -> Result<Value> {
    let prompt = serde_json::to_string(prompt).unwrap_or_default();
    let (batch, new, secs) = (BATCH.to_string(), NEW_TOKENS.to_string(), format!("{secs}"));
    let mut args: Vec<std::ffi::OsString> = vec![
        model.into(),
        prompt.into(),
        "--batch".into(),
        batch.into(),
        "--new".into(),
        new.into(),
        "--seconds".into(),
        secs.into(),
    ];
    let file =
        std::env::temp_dir().join(format!("asymre-bfcl-prompts-{}.json", std::process::id()));
    if let Some(prompts) = bfcl {
        std::fs::write(&file, prompts).at(&file)?;
        args.extend([
            "--bfcl-prompts".into(),
            file.clone().into(),
            "--bfcl-new".into(),
            BFCL_NEW.to_string().into(),
        ]);
    }
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    let out = run_reference(python, "lm_baseline.py", &args, "transformers baseline");
    let _ = std::fs::remove_file(&file);
    out
}

fn print_table(
    ours: &Value,
    base: Option<&Value>,
    cores: usize,
    model: &str,
    precision: &str,
    device: Device,
) {
    let get = |v: &Value, k: &str| v.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN);
    let o = |k: &str| get(ours, k);
    let b = |k: &str| base.map_or(f64::NAN, |v| get(v, k));
    let ratio = |x: f64, y: f64| {
        if y.is_finite() && y > 0.0 {
            format!("{:.2}×", x / y)
        } else {
            "—".into()
        }
    };
    println!(
        "LM benchmark: {model}, {precision} on {}, {cores} CPU threads, batch {BATCH}, {NEW_TOKENS} new tokens per row",
        crate::device::device_name(device)
    );
    println!(
        "{:<52} {:>12} {:>13} {:>8}  goal",
        "", "asymre", "transformers", "ratio"
    );
    let rows = [
        (
            "sampling, batch 16: generated tokens/s",
            "decode_tokens_per_s",
            "generate_tokens_per_s",
            "≥ 5×",
        ),
        (
            "learner step (fwd+bwd+Adam): policy tokens/s",
            "learner_tokens_per_s",
            "train_tokens_per_s",
            "",
        ),
    ];
    for (what, k, bk, goal) in rows {
        let (x, y) = (o(k), b(bk));
        println!("{what:<52} {x:>12.1} {y:>13.1} {:>8}  {goal}", ratio(x, y));
    }
    let (x, y) = (o("bfcl_episodes_per_s"), b("bfcl_episodes_per_s"));
    println!(
        "{:<52} {x:>12.2} {y:>13.2} {:>8}",
        format!("BFCL workload, batch 16 × {BFCL_NEW} tokens: episodes/s"),
        ratio(x, y)
    );
    println!(
        "{:<52} {:>12.1} {:>13} {:>8}  ≥ 50% of matmul ({:.1} GFLOP/s, {:.0}%)",
        "learner step: GFLOP/s",
        o("learner_gflops"),
        "",
        "",
        o("matmul_gflops"),
        100.0 * o("learner_share_of_matmul")
    );
    println!(
        "{:<52} {:>12.0} {:>13.0}",
        "peak resident memory, MiB",
        o("peak_rss_mib"),
        b("peak_rss_mib")
    );
}
