//! The pretrained-LM path against the real references: tiny random Llama, Qwen2 and Qwen3 models
//! written by transformers (as Hugging Face directories and as GGUF files through gguf-py), and
//! the real SmolLM2-135M-Instruct GGUF that set-up installs. The reference numbers come from
//! `tests/reference/lm_reference.py`, run with the project's `.venv` Python.
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use asymre::config::{DecodeWeights, LoraConfig};
use asymre::policy::lm;
use asymre::policy::{DecodeCache, PrefixBatch, SequencePolicy};
use serde_json::Value;
use tch::{Device, Kind, Tensor};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn python() -> PathBuf {
    let p = root().join(".venv/bin/python");
    assert!(
        p.exists(),
        "{} is missing: run scripts/setup.sh (make test does)",
        p.display()
    );
    p
}

fn run_reference(args: &[&str]) {
    let out = Command::new(python())
        .arg(root().join("tests/reference/lm_reference.py"))
        .args(args)
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "lm_reference.py {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

static FIXTURES: Mutex<()> = Mutex::new(());

/// The tiny `arch` model directory with its `reference.json`, written once per script version.
fn fixture(arch: &str) -> (PathBuf, Value) {
    let _guard = FIXTURES.lock().unwrap_or_else(|e| e.into_inner());
    let script = root().join("tests/reference/lm_reference.py");
    let dir = root().join("target/lm-fixtures").join(arch);
    let reference = dir.join("reference.json");
    let fresh = |p: &Path| {
        let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        matches!((m(p), m(&script)), (Some(a), Some(b)) if a >= b)
    };
    if !fresh(&reference) {
        let _ = std::fs::remove_dir_all(&dir);
        run_reference(&["fixture", arch, dir.to_str().unwrap()]);
    }
    let text = std::fs::read_to_string(&reference).unwrap();
    (dir, serde_json::from_str(&text).unwrap())
}

fn floats(v: &Value) -> Vec<f64> {
    match v {
        Value::Array(a) => a.iter().flat_map(floats).collect(),
        Value::Number(n) => vec![n.as_f64().unwrap()],
        _ => panic!("not numbers: {v}"),
    }
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

fn tensor_floats(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(&t.to_kind(Kind::Double).reshape([-1])).unwrap()
}

fn logits_of(model: &lm::Lm, tokens: &[u32]) -> Tensor {
    let t: Vec<i64> = tokens.iter().map(|&x| x as i64).collect();
    tch::no_grad(|| model.forward(&Tensor::from_slice(&t).view([1, -1])))
}

/// Greedy continuations agree, except that at a near tie (the two tokens' logits within `tol`
/// on the common prefix, where summation order on another CPU may decide) the rest is not
/// compared.
fn assert_greedy_matches(model: &lm::Lm, prompt: &[u32], got: &[u32], want: &[u32], tol: f64) {
    assert_eq!(got.len(), want.len(), "continuation lengths");
    for k in 0..want.len() {
        if got[k] == want[k] {
            continue;
        }
        let prefix: Vec<u32> = prompt.iter().chain(&want[..k]).copied().collect();
        let l = logits_of(model, &prefix);
        let at = prefix.len() as i64 - 1;
        let gap = (l.double_value(&[0, at, got[k] as i64])
            - l.double_value(&[0, at, want[k] as i64]))
        .abs();
        assert!(
            gap <= tol,
            "greedy token {k}: {} against the reference's {} (logit gap {gap})",
            got[k],
            want[k]
        );
        return;
    }
}

/// `tokenizer` gives the reference's ids for each of its strings (and decodes them back).
fn assert_encodes_like(tokenizer: &asymre::text::hf::HfTokenizer, r: &Value, decode_too: bool) {
    let strings = r["strings"].as_array().unwrap();
    for (s, want) in strings.iter().zip(r["string_ids"].as_array().unwrap()) {
        let s = s.as_str().unwrap();
        assert_eq!(tokenizer.encode_with(s, false).unwrap(), ids(want), "{s:?}");
        if decode_too {
            assert_eq!(
                tokenizer.decode_with(&ids(want), false),
                s,
                "decoding {s:?}"
            );
        }
    }
}

/// Greedy decoding of one prompt through the KV cache.
fn greedy_decode(model: &lm::Lm, prompt: &[u32], max_new: usize, stop: &[u32]) -> Vec<u32> {
    let how = asymre::rollout::generate::Sampling {
        max_new,
        temperature: 0.0,
        stop,
    };
    let mut out =
        asymre::rollout::generate::decode(model, &[prompt.to_vec()], &how, 0, Device::Cpu).unwrap();
    out.pop().unwrap()
}

fn load(path: &Path, lora: Option<&LoraConfig>) -> lm::source::LoadedModel {
    lm::load(path.to_str().unwrap(), Device::Cpu, Kind::Float, lora).unwrap()
}

fn check_arch(arch: &str) {
    let (dir, r) = fixture(arch);
    let tokens = ids(&r["ids"]);
    let want = floats(&r["logits"]);
    // The Hugging Face directory and the F32 GGUF file (Llama's Q/K rows permuted by the
    // converter, Llama 3's RoPE scaling as rope_freqs) give transformers' logits.
    let shards = std::fs::read_dir(dir.join("sharded"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".safetensors")
        })
        .count();
    assert!(
        shards > 1,
        "the fixture's sharded copy has {shards} shard(s)"
    );
    assert!(
        !dir.join("sharded/config.json").exists() || {
            let c = std::fs::read_to_string(dir.join("sharded/config.json")).unwrap();
            c.contains("rope_theta") && !c.contains("rope_parameters")
        }
    );
    for path in [dir.clone(), dir.join("sharded"), dir.join("tiny-F32.gguf")] {
        let m = load(&path, None);
        let got = tensor_floats(&logits_of(&m.lm, &tokens));
        let d = max_diff(&got, &want);
        assert!(d <= 1e-4, "{arch} {}: max |Δlogit| = {d}", path.display());
    }
    // Greedy decoding through the cache continues like transformers' generate.
    let m = load(&dir, None);
    let got = greedy_decode(&m.lm, &tokens, 8, &[]);
    assert_greedy_matches(&m.lm, &tokens, &got, &ids(&r["greedy"]), 1e-4);
    // Dequantisation equals gguf-py's, value for value.
    for q in ["Q8_0", "Q4_0", "Q4_1", "F16", "BF16"] {
        let g = asymre::formats::gguf::Gguf::open(&dir.join(format!("tiny-{q}.gguf"))).unwrap();
        let (_, data) = g.tensor_f32("blk.1.ffn_down.weight").unwrap();
        let got: Vec<f64> = data.iter().map(|&x| x as f64).collect();
        let d = max_diff(&got, &floats(&r["dequant"][q]));
        assert!(d == 0.0, "{arch} {q}: dequantised values differ by {d}");
    }
    // A quantised file loads and runs; its logits stay near the f32 model's.
    let q8 = load(&dir.join("tiny-Q8_0.gguf"), None);
    let d = max_diff(&tensor_floats(&logits_of(&q8.lm, &tokens)), &want);
    assert!(d < 0.5, "{arch} Q8_0: max |Δlogit| = {d}");
}

#[test]
fn tiny_llama_matches_transformers() {
    check_arch("llama");
}

#[test]
fn tiny_qwen2_matches_transformers() {
    check_arch("qwen2");
}

#[test]
fn tiny_qwen3_matches_transformers() {
    check_arch("qwen3");
}

#[test]
fn tokenizer_and_chat_template_match_the_python_libraries() {
    let (dir, r) = fixture("qwen2");
    let m = lm::source::read_text(&lm::resolve(dir.to_str().unwrap()).unwrap())
        .unwrap()
        .1;
    assert_encodes_like(&m.tokenizer, &r, true);
    let template = m.template.as_ref().expect("a chat template");
    let messages = r["messages"].as_array().unwrap();
    let tools = r["tools"].as_array().unwrap();
    assert_eq!(
        template.render(messages, Some(tools), true).unwrap(),
        r["chat"].as_str().unwrap()
    );
    assert_eq!(
        template.render(&messages[..2], None, false).unwrap(),
        r["chat_plain"].as_str().unwrap()
    );
    // The same template from the GGUF file's metadata, and the tokenizer rebuilt from it.
    let g =
        lm::source::read_text(&lm::resolve(dir.join("tiny-F16.gguf").to_str().unwrap()).unwrap())
            .unwrap()
            .1;
    assert_eq!(
        g.template
            .unwrap()
            .render(messages, Some(tools), true)
            .unwrap(),
        r["chat"].as_str().unwrap()
    );
    assert_encodes_like(&g.tokenizer, &r, false);
}

/// Cached decoding through `lm` (left-padded and shared-prefix prefills, steps with padding,
/// forked rows) gives the full pass's logits within `tol`; its caches hold `cache` values.
fn check_cached_steps(lm: &lm::Lm, tol: f64, cache: Kind, what: &str) {
    let kind = cache;
    let rows: Vec<Vec<u32>> = vec![
        vec![5, 6, 7, 8, 9, 10, 11],
        vec![5, 6, 7, 20, 21],
        vec![30, 31, 32, 33, 34, 35, 36, 37, 38],
    ];
    // Left-padded prefill of the first 3 tokens, then one token per step.
    let p = 3usize;
    let prompts: Vec<i64> = rows
        .iter()
        .flat_map(|r| r[..p].iter().map(|&t| t as i64))
        .collect();
    let prompts = Tensor::from_slice(&prompts).view([3, p as i64]);
    let valid = Tensor::ones([3, p as i64], (Kind::Bool, Device::Cpu));
    tch::no_grad(|| {
        let (mut cache, mut logits) = lm.prefill(&prompts, &valid, 16);
        assert_eq!(cache.kind(), kind, "{what}: the cache's kind");
        let longest = rows.iter().map(Vec::len).max().unwrap();
        for pos in p..=longest {
            for (i, row) in rows.iter().enumerate() {
                if pos <= row.len() {
                    let full = logits_of(lm, &row[..pos]);
                    let last = full.get(0).get(pos as i64 - 1);
                    let d = max_diff(&tensor_floats(&logits.get(i as i64)), &tensor_floats(&last));
                    assert!(
                        d <= tol,
                        "{what}: row {i} position {pos}: cached vs full {d}"
                    );
                }
            }
            if pos == longest {
                break;
            }
            let toks: Vec<i64> = rows
                .iter()
                .map(|r| *r.get(pos).unwrap_or(&0) as i64)
                .collect();
            let real: Vec<bool> = rows.iter().map(|r| pos < r.len()).collect();
            logits = lm.step(
                &Tensor::from_slice(&toks),
                &Tensor::from_slice(&[pos as i64; 3]),
                &Tensor::from_slice(&real),
                &mut cache,
            );
        }
        // Forking rows: keep row 1 twice, then both copies continue alike.
        cache.keep_rows(&Tensor::from_slice(&[1i64, 1]));
        assert_eq!(cache.len(), longest);
        let at = rows[1].len() as i64;
        let forked = lm.step(
            &Tensor::from_slice(&[50i64, 50]),
            &Tensor::from_slice(&[at, at]),
            &Tensor::from_slice(&[true, true]),
            &mut cache,
        );
        let mut row = rows[1].clone();
        row.push(50);
        let want = tensor_floats(&logits_of(lm, &row).get(0).get(at));
        for copy in 0..2 {
            let d = max_diff(&tensor_floats(&forked.get(copy)), &want);
            assert!(d <= tol, "{what}: forked copy {copy}: {d}");
        }
    });
    // A prefill whose first columns all rows share ([shared | pad … rest]) computes them once;
    // the logits after it and after a step equal the full pass's.
    let prompts: Vec<Vec<u32>> = vec![
        vec![5, 6, 7, 8, 9, 10, 11],
        vec![5, 6, 7, 8, 20],
        vec![5, 6, 7, 8, 30, 31],
    ];
    let (shared, width) = (4usize, 7usize);
    let mut flat = vec![0i64; 3 * width];
    let mut valid = vec![false; 3 * width];
    for (i, r) in prompts.iter().enumerate() {
        let off = width - r.len();
        for (j, &t) in r.iter().enumerate() {
            let col = if j < shared { j } else { off + j };
            flat[i * width + col] = t as i64;
            valid[i * width + col] = true;
        }
    }
    let shape = [3, width as i64];
    tch::no_grad(|| {
        let (mut cache, logits) = lm.prefill_shared(
            &Tensor::from_slice(&flat).view(shape),
            &Tensor::from_slice(&valid).view(shape),
            shared,
            12,
        );
        assert_eq!(cache.kind(), kind, "{what}: the shared prefill's cache");
        let next = [40u32, 41, 42];
        for (i, r) in prompts.iter().enumerate() {
            let full = logits_of(lm, r);
            let last = full.get(0).get(r.len() as i64 - 1);
            let d = max_diff(&tensor_floats(&logits.get(i as i64)), &tensor_floats(&last));
            assert!(d <= tol, "{what}: shared prefill, row {i}: {d}");
        }
        let positions: Vec<i64> = prompts.iter().map(|r| r.len() as i64).collect();
        let logits = lm.step(
            &Tensor::from_slice(&next.map(|t| t as i64)),
            &Tensor::from_slice(&positions),
            &Tensor::from_slice(&[true; 3]),
            &mut cache,
        );
        for (i, r) in prompts.iter().enumerate() {
            let mut row = r.clone();
            row.push(next[i]);
            let full = logits_of(lm, &row);
            let last = full.get(0).get(row.len() as i64 - 1);
            let d = max_diff(&tensor_floats(&logits.get(i as i64)), &tensor_floats(&last));
            assert!(
                d <= tol,
                "{what}: step after a shared prefill, row {i}: {d}"
            );
        }
    });
}

#[test]
fn cached_decoding_and_prefix_scoring_equal_the_full_pass() {
    let (dir, _) = fixture("qwen3");
    let m = load(&dir, None);
    check_cached_steps(&m.lm, 1e-4, Kind::Float, "f32");
    let rows: Vec<Vec<u32>> = vec![
        vec![5, 6, 7, 8, 9, 10, 11],
        vec![5, 6, 7, 20, 21],
        vec![30, 31, 32, 33, 34, 35, 36, 37, 38],
    ];
    // Prefix scoring: log π of the policy-written tokens equals the full pass's, for rows with
    // no common start and for rows whose trunk (here [5, 6, 7, 8]) attends once.
    let trunked: Vec<Vec<u32>> = vec![
        vec![5, 6, 7, 8, 9, 10, 11],
        vec![5, 6, 7, 8, 20, 21],
        vec![5, 6, 7, 8, 9, 12, 13, 14],
    ];
    for rows in [&rows, &trunked] {
        let masks: Vec<Vec<bool>> = rows
            .iter()
            .map(|r| (0..r.len()).map(|j| j >= 3).collect())
            .collect();
        let batch = PrefixBatch::new(rows.iter().zip(&masks).map(|(r, m)| (&r[..], &m[..])));
        let scores = tch::no_grad(|| m.lm.score_prefixes(&batch, Device::Cpu)).unwrap();
        for (i, row) in rows.iter().enumerate() {
            let logp = logits_of(&m.lm, row).log_softmax(-1, Kind::Double);
            for (j, &tok) in row.iter().enumerate().skip(3) {
                let want = logp.double_value(&[0, j as i64 - 1, tok as i64]);
                let got = scores.token_logp.double_value(&[i as i64, j as i64 - 1]);
                assert!(
                    (want - got).abs() <= 1e-4,
                    "row {i} token {j}: {got} vs {want}"
                );
            }
        }
    }
}

#[test]
fn lora_starts_at_the_base_model_and_export_round_trips() {
    let (dir, r) = fixture("llama");
    let tokens = ids(&r["ids"]);
    let lora = LoraConfig {
        rank: 4,
        alpha: 8.0,
        ..Default::default()
    };
    let m = load(&dir, Some(&lora));
    let base = floats(&r["logits"]);
    let d = max_diff(&tensor_floats(&logits_of(&m.lm, &tokens)), &base);
    assert!(d <= 1e-4, "zero-initialised B changed the logits by {d}");
    // Only the adapters train.
    let trainable = m.vs.trainable_variables().len();
    assert_eq!(trainable, 2 * 7 * 2, "A and B for 7 modules in 2 layers");
    // Move every B off zero, export (adapters merged), and load the export back, here and in
    // transformers: the same logits as the adapted model.
    tch::no_grad(|| {
        for (name, mut v) in m.vs.variables() {
            if name.ends_with("lora_B") {
                v.copy_(&(v.randn_like() * 0.05));
            }
        }
    });
    let adapted = tensor_floats(&logits_of(&m.lm, &tokens));
    assert!(
        max_diff(&adapted, &base) > 1e-3,
        "the adapters should now matter"
    );
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("export");
    lm::export::write_hf_dir(&m.lm, &m.text, &out).unwrap();
    let back = load(&out, None);
    let d = max_diff(&tensor_floats(&logits_of(&back.lm, &tokens)), &adapted);
    assert!(d <= 1e-4, "export read back: {d}");
    let ids_json = serde_json::to_string(&tokens).unwrap();
    let py = Command::new(python())
        .arg(root().join("tests/reference/lm_reference.py"))
        .args(["logits", out.to_str().unwrap(), &ids_json])
        .output()
        .unwrap();
    assert!(
        py.status.success(),
        "{}",
        String::from_utf8_lossy(&py.stderr)
    );
    let v: Value = serde_json::from_slice(&py.stdout).unwrap();
    let d = max_diff(&floats(&v["logits"]), &adapted);
    assert!(d <= 1e-4, "transformers on the export: {d}");
}

fn smollm2_file() -> PathBuf {
    lm::resolve("smollm2-135m")
        .expect("set-up installs SmolLM2")
        .path()
        .to_path_buf()
}

#[test]
fn smollm2_gguf_matches_transformers() {
    let file = smollm2_file();
    let reference = root().join("target/lm-fixtures/smollm2.json");
    {
        let _guard = FIXTURES.lock().unwrap_or_else(|e| e.into_inner());
        let script = root().join("tests/reference/lm_reference.py");
        let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        if !matches!((m(&reference), m(&script)), (Some(a), Some(b)) if a >= b) {
            std::fs::create_dir_all(reference.parent().unwrap()).unwrap();
            run_reference(&[
                "smollm2",
                file.to_str().unwrap(),
                reference.to_str().unwrap(),
            ]);
        }
    }
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&reference).unwrap()).unwrap();
    let m = lm::load(file.to_str().unwrap(), Device::Cpu, Kind::Float, None).unwrap();
    assert_eq!(m.cfg.layers, 30);
    assert_eq!((m.cfg.heads, m.cfg.kv_heads, m.cfg.head_dim), (9, 3, 64));
    assert!(m.cfg.tied);
    // The tokenizer rebuilt from the file: digits one by one (the smollm pre-tokenizer).
    assert_eq!(
        m.text.tokenizer.encode_with("x  1", false).unwrap(),
        vec![104, 256, 33]
    );
    assert_encodes_like(&m.text.tokenizer, &r, true);
    let template = m.text.template.as_ref().unwrap();
    let chat = template
        .render(r["messages"].as_array().unwrap(), None, true)
        .unwrap();
    assert_eq!(chat, r["chat"].as_str().unwrap());
    let prompt = m.text.tokenizer.encode_with(&chat, false).unwrap();
    assert_eq!(prompt, ids(&r["prompt"]));
    let logits = logits_of(&m.lm, &prompt);
    let last = tensor_floats(&logits.get(0).get(prompt.len() as i64 - 1));
    let d = max_diff(&last, &floats(&r["last_logits"]));
    assert!(d <= 1e-3, "last-position logits differ by {d}");
    let got = greedy_decode(&m.lm, &prompt, 12, &[]);
    assert_greedy_matches(&m.lm, &prompt, &got, &ids(&r["greedy"]), 1e-3);
}

fn asymre(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_asymre"))
        .args(args)
        .output()
        .unwrap()
}

/// The JSON the command prints, after checking that it succeeded.
fn asymre_json(args: &[&str]) -> Value {
    let out = asymre(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// One line on stderr, exit 2.
fn assert_input_error(out: &std::process::Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(err.contains(needle), "{needle:?} not in {err}");
}

#[test]
fn generate_and_export_on_the_command_line() {
    let (dir, r) = fixture("qwen2");
    let d = dir.to_str().unwrap();
    // --max-new 0 only tokenises; --json prints the three fields.
    let v = asymre_json(&[
        "generate",
        "--model",
        d,
        "--prompt",
        "What is 123 * 45?",
        "--max-new",
        "0",
        "--json",
    ]);
    assert_eq!(ids(&v["prompt_tokens"]), ids(&r["string_ids"][1]));
    assert_eq!(v["output_tokens"], serde_json::json!([]));
    // Greedy generation from the GGUF file gives what the library's greedy decoding gives.
    let chat_generate = |model: &Path| {
        let m = model.to_str().unwrap();
        asymre_json(&[
            "generate",
            "--model",
            m,
            "--prompt",
            "What is 123 * 45?",
            "--chat",
            "--system",
            "Be brief.",
            "--max-new",
            "6",
            "--json",
        ])
    };
    let v = chat_generate(&dir.join("tiny-F32.gguf"));
    let m = load(&dir, None);
    let chat = m
        .text
        .template
        .as_ref()
        .unwrap()
        .render(
            &[
                serde_json::json!({"role": "system", "content": "Be brief."}),
                serde_json::json!({"role": "user", "content": "What is 123 * 45?"}),
            ],
            None,
            true,
        )
        .unwrap();
    let prompt = m.text.tokenizer.encode_with(&chat, false).unwrap();
    assert_eq!(ids(&v["prompt_tokens"]), prompt);
    let want = greedy_decode(&m.lm, &prompt, 6, &m.text.tokenizer.stop);
    assert_eq!(ids(&v["output_tokens"]), want);
    // Sampling is seeded.
    let sample = |seed: &str| {
        let args = [
            "--prompt",
            "e17 is",
            "--max-new",
            "8",
            "--temperature",
            "1",
            "--seed",
            seed,
        ];
        let mut all = vec!["generate", "--model", d, "--json"];
        all.extend(args);
        asymre_json(&all)["output_tokens"].clone()
    };
    assert_eq!(sample("3"), sample("3"));

    // Export from GGUF, then generate from the export: the same tokens.
    let tmp = tempfile::tempdir().unwrap();
    let exported = tmp.path().join("hf");
    let out = asymre(&[
        "export",
        "--model",
        dir.join("tiny-F32.gguf").to_str().unwrap(),
        "--out",
        exported.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let w = chat_generate(&exported);
    assert_eq!(w["output_tokens"], v["output_tokens"]);
    // Exporting into a non-empty directory is refused, and what is there stays.
    let out = asymre(&["export", "--model", d, "--out", exported.to_str().unwrap()]);
    assert_input_error(&out, "not empty");
    assert!(exported.join("model.safetensors").exists());

    // Bad input: one line, exit 2.
    let bad = tmp.path().join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    for f in ["tokenizer.json", "model.safetensors"] {
        std::fs::copy(dir.join(f), bad.join(f)).unwrap();
    }
    let mut cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    cfg["model_type"] = "gpt_neox".into();
    std::fs::write(bad.join("config.json"), cfg.to_string()).unwrap();
    let b = bad.to_str().unwrap();
    assert_input_error(
        &asymre(&["generate", "--model", b, "--prompt", "hi"]),
        "\"gpt_neox\" is not supported (supported: llama, qwen2, qwen3)",
    );
    assert_input_error(
        &asymre(&["generate", "--model", "no-such-model", "--prompt", "hi"]),
        "not a known name",
    );
    let junk = tmp.path().join("junk.gguf");
    std::fs::write(&junk, b"GGUF\x03\x00\x00\x00 truncated").unwrap();
    assert_input_error(
        &asymre(&[
            "generate",
            "--model",
            junk.to_str().unwrap(),
            "--prompt",
            "hi",
        ]),
        "not a readable GGUF file",
    );
    let out = asymre(&[
        "generate",
        "--model",
        d,
        "--prompt",
        "hi",
        "--temperature=-1",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("must be a finite number >= 0"));

    // A chat template that would render 10 GB, in a model directory's tokenizer_config.json:
    // one line and exit 2 (it was killed for memory before templates ran on a budget), and a
    // template that raises: its message.
    let hostile = tmp.path().join("hostile");
    std::fs::create_dir_all(&hostile).unwrap();
    for f in ["config.json", "tokenizer.json", "model.safetensors"] {
        std::fs::copy(dir.join(f), hostile.join(f)).unwrap();
    }
    let h = hostile.to_str().unwrap();
    for (template, want) in [
        (
            r#"{% for i in range(100000) %}{{ "x" * 100000 }}{% endfor %}"#,
            "chat template: stopped after",
        ),
        (
            r#"{{ raise_exception("this model only chats in French") }}"#,
            "chat template: this model only chats in French",
        ),
    ] {
        let tc = serde_json::json!({"chat_template": template, "eos_token": "<|im_end|>"});
        std::fs::write(hostile.join("tokenizer_config.json"), tc.to_string()).unwrap();
        let out = asymre(&["generate", "--model", h, "--prompt", "hi", "--chat"]);
        assert_input_error(&out, want);
    }
}

#[test]
fn a_learner_step_on_the_lm_trains_only_the_adapters_and_its_snapshot_reaches_an_actor() {
    use asymre::ids::{PromptId, SourceId};
    use asymre::policy::PolicyModel;
    use asymre::rl::learner::Learner;
    use asymre::trajectory::{ActorBatch, Trajectory};

    let (dir, _) = fixture("llama");
    let lora = LoraConfig {
        rank: 4,
        alpha: 8.0,
        ..Default::default()
    };
    let m = load(&dir, Some(&lora));
    let mut cfg = asymre::config::Config::default();
    cfg.learner.batch_size = 4;
    cfg.learner.lr = 1e-2;
    let mut learner = Learner::with_policy(&cfg, m.vs, PolicyModel::Lm(Box::new(m.lm)));
    // Four samples of one prompt (the prompt's tokens forced, four written by the policy).
    let prompt = PromptId {
        source: SourceId::new(0, 0, 0),
        message: 0,
        slot: 0,
    };
    let trajectories = (0..4u32)
        .map(|i| {
            let actions: Vec<u32> = vec![5, 6, 7, 8, 20 + i, 30, 40 + i, 2];
            let reward = if i % 2 == 0 { 1.0 } else { -1.0 };
            Trajectory::synthetic(prompt, actions, 4, -5.0, reward)
        })
        .collect();
    learner.ingest(ActorBatch {
        actor: 0,
        trajectories,
    });
    assert!(learner.ready());
    learner.train_step().unwrap();

    // What the learner trains, snapshots and checkpoints: the 28 adapters, nothing else.
    let snapshot = learner.snapshot().unwrap();
    assert_eq!(snapshot.tensors.len(), 2 * 7 * 2);
    assert!(snapshot
        .tensors
        .iter()
        .all(|t| t.name.ends_with(".lora_A") || t.name.ends_with(".lora_B")));
    assert!(
        snapshot
            .tensors
            .iter()
            .any(|t| t.name.ends_with(".lora_B") && t.data.iter().any(|&x| x != 0.0)),
        "a step moves B off zero"
    );
    // The frozen base did not move.
    let fresh = load(&dir, Some(&lora));
    let name = "model.layers.1.mlp.down_proj.weight";
    let (now, then) = (
        learner.vs().variables()[name].copy(),
        fresh.vs.variables()[name].copy(),
    );
    assert_eq!(max_diff(&tensor_floats(&now), &tensor_floats(&then)), 0.0);
    // An actor with its own copy of the base takes the snapshot and then computes the learner's
    // logits.
    let tokens = [5u32, 6, 7, 8, 20, 30];
    let learner_lm = <lm::Lm as asymre::policy::ToolPolicy>::of(learner.policy()).unwrap();
    let want = tensor_floats(&logits_of(learner_lm, &tokens));
    assert!(max_diff(&tensor_floats(&logits_of(&fresh.lm, &tokens)), &want) > 1e-6);
    snapshot.load_into(&fresh.vs).unwrap();
    assert!(max_diff(&tensor_floats(&logits_of(&fresh.lm, &tokens)), &want) <= 1e-6);
}

/// A tool-use run of SmolLM2 with LoRA, on the command line, at toy length: it trains, its
/// checkpoints hold only the adapters and name the base model, `eval --dump` writes chat
/// transcripts that `score` reads back to the same figures, and `export RUN_DIR` writes a
/// directory that `--model DIR` loads.
#[test]
fn an_lm_run_trains_evaluates_scores_and_exports() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let cfg = root().join("configs/lm_calc.toml");
    let out = asymre(&[
        "train",
        "--config",
        cfg.to_str().unwrap(),
        "--serial",
        "--out",
        run.to_str().unwrap(),
        "--set",
        "warmstart.steps=1",
        "--set",
        "warmstart.demos=4",
        "--set",
        "warmstart.batch_size=2",
        "--set",
        "env.rounds=1",
        "--set",
        "env.steps_per_round=2",
        "--set",
        "actor.batch_size=4",
        "--set",
        "actor.group_size=2",
        "--set",
        "learner.batch_size=4",
        "--set",
        "replay.capacity=16",
        "--set",
        "logging.eval_episodes=2",
        "--set",
        "logging.eval_every=0",
        "--set",
        "checkpoint.every=1",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("before the warm start"), "{err}");
    let rows: Vec<Value> = std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let trained: Vec<&Value> = rows.iter().filter(|r| r.get("loss").is_some()).collect();
    assert_eq!(trained.len(), 2, "{rows:?}");
    for r in &trained {
        assert!(r["loss"].as_f64().unwrap().is_finite());
        assert!(r["length"].as_f64().unwrap() > 0.0);
    }
    // The run names its base; a checkpoint holds the 2 × 7 × 30 adapter matrices only.
    let meta: Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("run.json")).unwrap()).unwrap();
    assert_eq!(meta["base_model"]["model"], "smollm2-135m");
    assert!(meta["base_model"]["bytes"].as_u64().unwrap() > 50_000_000);
    let ckpt = std::fs::read_dir(run.join("checkpoints"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .max()
        .unwrap();
    let bytes = std::fs::read(ckpt.join("weights.safetensors")).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    let names: Vec<&String> = header
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| *k != "__metadata__")
        .collect();
    assert_eq!(names.len(), 2 * 7 * 30);
    assert!(names.iter().all(|n| n.contains(".lora_")), "{names:?}");
    assert!(bytes.len() < 40_000_000, "{} bytes", bytes.len());

    // eval --dump writes OpenAI messages logs; score reads them back to the same completion.
    let dump = tmp.path().join("dump.jsonl");
    let out = asymre(&[
        "eval",
        run.to_str().unwrap(),
        "--episodes",
        "3",
        "--dump",
        dump.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let evaluated = String::from_utf8_lossy(&out.stdout).to_string();
    let lines: Vec<Value> = std::fs::read_to_string(&dump)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    for l in &lines {
        let m = l["messages"].as_array().unwrap();
        assert_eq!(m[0]["role"], "system");
        assert_eq!(m[1]["role"], "user");
        assert_eq!(m.last().unwrap()["role"], "assistant");
    }
    let out = asymre(&[
        "score",
        "--task",
        "calc",
        "--config",
        run.join("config.toml").to_str().unwrap(),
        dump.to_str().unwrap(),
    ]);
    let printed =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{printed}");
    let scored = printed
        .lines()
        .find(|l| l.starts_with("scored 3 of 3 lines (0 bad)"))
        .unwrap_or_else(|| panic!("{printed}"));
    let completion = |text: &str| -> String {
        let at = text.find("completion ").expect("a completion figure");
        text[at..].split(',').next().unwrap().to_string()
    };
    assert_eq!(
        completion(scored),
        completion(&evaluated),
        "{scored}\n{evaluated}"
    );

    // export RUN_DIR: a Hugging Face directory that loads back.
    let exported = tmp.path().join("hf");
    let out = asymre(&[
        "export",
        run.to_str().unwrap(),
        "--out",
        exported.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = asymre_json(&[
        "generate",
        "--model",
        exported.to_str().unwrap(),
        "--prompt",
        "What is 2 + 2?",
        "--chat",
        "--max-new",
        "4",
        "--json",
    ]);
    assert!(!v["output_tokens"].as_array().unwrap().is_empty());
    // A run of the small transformer has nothing to export.
    let out = asymre(&[
        "export",
        tmp.path().to_str().unwrap(),
        "--out",
        tmp.path().join("x").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
}

/// A serial tool-use run of an LM (the tiny Llama, with LoRA, chat episodes) SIGKILLed twice
/// right after checkpoints and resumed ends with the metrics of the uninterrupted run: the warm
/// start's record, the adapters and their Adam moments, the behaviour copy, the replay of chat
/// trajectories and the actors' streams all come back from a checkpoint.
#[test]
fn a_killed_serial_lm_run_resumes_to_the_uninterrupted_metrics() {
    let (dir, _) = fixture("llama");
    let tmp = tempfile::tempdir().unwrap();
    let model = format!("policy.model={}", dir.display());
    let cfg = root().join("configs/lm_calc.toml");
    let sets: Vec<&str> = vec![
        "--serial",
        "--set",
        &model,
        "--set",
        "env.max_tokens=3000",
        "--set",
        "env.max_new_tokens=24",
        "--set",
        "warmstart.demos=8",
        "--set",
        "warmstart.steps=2",
        "--set",
        "warmstart.batch_size=4",
        "--set",
        "env.rounds=2",
        "--set",
        "env.steps_per_round=6",
        "--set",
        "actor.batch_size=4",
        "--set",
        "actor.group_size=2",
        "--set",
        "learner.batch_size=4",
        "--set",
        "learner.lr=0.001",
        "--set",
        "replay.capacity=16",
        "--set",
        "logging.eval_episodes=4",
        "--set",
        "logging.eval_every=4",
        "--set",
        "checkpoint.every=3",
    ];
    let train = |out: &Path| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_asymre"));
        cmd.args(["train", "--config", cfg.to_str().unwrap(), "--out"])
            .arg(out)
            .args(&sets);
        cmd
    };
    let reference = tmp.path().join("reference");
    let o = train(&reference).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let want = common::metrics(&reference);
    assert_eq!(want.last().unwrap()["step"].as_u64(), Some(12));
    // The adapters moved: the losses are not all zero and the entropy changed.
    assert!(want
        .iter()
        .any(|r| r.get("loss").and_then(Value::as_f64).unwrap_or(0.0) != 0.0));

    let run = tmp.path().join("killed");
    let last_step = common::kill_twice_then_finish(train(&run), &run, Duration::from_secs(300));
    assert!(last_step > 0 && last_step < 12, "{last_step}");
    assert_eq!(common::metrics(&run), want, "resumed metrics differ");
}

/// Users' own tasks and tools: `examples/shop` (a JSON-lines dataset, a Python tool program
/// served by `scripts/pytools.py`, the built-in `mul`) trains on the tiny Llama. The warm start's
/// demonstrations run the gold calls through the tools, so a run that starts at all has had the
/// external program answer. A dataset with bad lines is refused before anything is written,
/// each bad line named.
#[test]
fn a_dataset_with_an_external_tool_trains_and_bad_lines_are_refused() {
    let (dir, _) = fixture("llama");
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let model = format!("policy.model={}", dir.display());
    let mut args = vec![
        "train",
        "--config",
        "examples/shop/config.toml",
        "--serial",
        "--set",
        &model,
        "--set",
        "env.max_tokens=4000",
        "--set",
        "env.max_new_tokens=300",
        "--set",
        "warmstart.demos=8",
        "--set",
        "warmstart.steps=2",
        "--set",
        "warmstart.batch_size=4",
        "--set",
        "env.rounds=1",
        "--set",
        "env.steps_per_round=2",
        "--set",
        "actor.batch_size=4",
        "--set",
        "actor.group_size=2",
        "--set",
        "learner.batch_size=4",
        "--set",
        "replay.capacity=16",
        "--set",
        "logging.eval_episodes=4",
        "--set",
        "logging.eval_every=0",
    ];
    let run_s = run.to_str().unwrap().to_string();
    let mut ok = args.clone();
    ok.extend(["--out", run_s.as_str()]);
    let out = Command::new(env!("CARGO_BIN_EXE_asymre"))
        .current_dir(root())
        .args(&ok)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("warm start: 2 steps"), "{err}");
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["task"], "dataset", "{summary}");
    assert!(run.join("tools.log").exists());

    // Two bad lines: both named, exit 2, no run directory.
    let bad = tmp.path().join("bad.jsonl");
    let good = std::fs::read_to_string(root().join("examples/shop/tasks.jsonl")).unwrap();
    let mut lines: Vec<&str> = good.lines().take(3).collect();
    lines.push(r#"{"id": "x", "split": "train", "prompt": "p", "tools": ["nope"], "answer": 1}"#);
    lines.push("{oops");
    std::fs::write(&bad, lines.join("\n")).unwrap();
    let path = format!("env.path={}", bad.display());
    let refused = tmp.path().join("refused");
    let refused_s = refused.to_str().unwrap().to_string();
    args.extend(["--set", path.as_str(), "--out", refused_s.as_str()]);
    let out = Command::new(env!("CARGO_BIN_EXE_asymre"))
        .current_dir(root())
        .args(&args)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("bad.jsonl:4: unknown tool \"nope\""), "{err}");
    assert!(err.contains("bad.jsonl:5: not JSON"), "{err}");
    assert!(!refused.exists());
}

/// A stateful environment of a user's own (`examples/todo`: a Python class served one instance
/// per episode, multi-turn tasks graded by the state rule) trains serially on the tiny Llama:
/// a second run repeats the first bit for bit, and a run SIGKILLed twice right after
/// checkpoints and resumed ends with the same metrics.
#[test]
fn a_serial_stateful_multi_turn_run_repeats_and_a_killed_one_resumes() {
    let (dir, _) = fixture("llama");
    let tmp = tempfile::tempdir().unwrap();
    let model = format!("policy.model={}", dir.display());
    let sets: Vec<&str> = vec![
        "--serial",
        "--set",
        &model,
        "--set",
        "env.max_tokens=3000",
        "--set",
        "env.max_new_tokens=160",
        "--set",
        "warmstart.demos=8",
        "--set",
        "warmstart.steps=2",
        "--set",
        "warmstart.batch_size=4",
        "--set",
        "env.rounds=2",
        "--set",
        "env.steps_per_round=3",
        "--set",
        "actor.batch_size=4",
        "--set",
        "actor.group_size=2",
        "--set",
        "learner.batch_size=4",
        "--set",
        "learner.lr=0.001",
        "--set",
        "replay.capacity=16",
        "--set",
        "logging.eval_episodes=4",
        "--set",
        "logging.eval_every=3",
        "--set",
        "checkpoint.every=2",
    ];
    let train = |out: &Path| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_asymre"));
        cmd.current_dir(root())
            .args(["train", "--config", "examples/todo/config.toml", "--out"])
            .arg(out)
            .args(&sets);
        cmd
    };
    let first = tmp.path().join("first");
    let o = train(&first).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("warm start: 2 steps"), "{err}");
    let want = common::metrics(&first);
    assert_eq!(want.last().unwrap()["step"].as_u64(), Some(6));
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(first.join("summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary["task"], "stateful", "{summary}");

    let second = tmp.path().join("second");
    let o = train(&second).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(common::metrics(&second), want, "a second run differs");

    let run = tmp.path().join("killed");
    let last_step = common::kill_twice_then_finish(train(&run), &run, Duration::from_secs(300));
    assert!(last_step > 0 && last_step < 6, "{last_step}");
    assert_eq!(common::metrics(&run), want, "resumed metrics differ");
}

/// Logits [T, V] of `tokens` with the model decoding from `how`: a pass of up to 64 positions
/// runs through the packed products.
fn packed_logits(model: &mut lm::Lm, how: DecodeWeights, tokens: &[u32]) -> Vec<f64> {
    model.pack_for_decoding(how).unwrap();
    let got = tensor_floats(&logits_of(model, tokens));
    model.pack_for_decoding(DecodeWeights::F32).unwrap();
    got
}

/// Decoding from packed weights (bf16, Q8_0, the file's own blocks) on the tiny models: logits
/// within a stated tolerance of the f32 pass; the file's Q8_0 blocks re-packed as "q8_0" equal
/// them exactly; and LoRA adapters and fine-tuned weights reach the packed copies.
#[test]
fn decoding_from_packed_weights_tracks_the_f32_model() {
    for arch in ["llama", "qwen2"] {
        let (dir, r) = fixture(arch);
        let tokens = ids(&r["ids"]);
        let mut m = load(&dir.join("tiny-F32.gguf"), None);
        let want = tensor_floats(&logits_of(&m.lm, &tokens));
        let spread = want.iter().fold(0f64, |a, x| a.max(x.abs()));
        for (how, tol) in [(DecodeWeights::Bf16, 0.02), (DecodeWeights::Q8_0, 0.05)] {
            let d = max_diff(&packed_logits(&mut m.lm, how, &tokens), &want);
            assert!(
                d <= tol * spread,
                "{arch} {}: max |Δlogit| {d} (logits up to {spread})",
                how.name()
            );
        }
        // A quantised file: "file" keeps its blocks, so only the inputs' rounding separates it
        // from the f32 pass over the same (dequantised) weights; "q8_0" of a Q8_0 file re-packs
        // the file's own values.
        for q in ["Q8_0", "Q4_0", "Q4_1"] {
            let mut f = load(&dir.join(format!("tiny-{q}.gguf")), None);
            let base = tensor_floats(&logits_of(&f.lm, &tokens));
            let file = packed_logits(&mut f.lm, DecodeWeights::File, &tokens);
            let d = max_diff(&file, &base);
            assert!(d <= 0.02 * spread, "{arch} {q} file: max |Δlogit| {d}");
            if q == "Q8_0" {
                let again = packed_logits(&mut f.lm, DecodeWeights::Q8_0, &tokens);
                assert_eq!(again, file, "{arch}: q8_0 of a Q8_0 file is the file");
            }
        }
        // Full fine-tuning: decoding reads the packed copy until the actor is told that new
        // weights were copied in; then it reads them.
        m.lm.pack_for_decoding(DecodeWeights::Q8_0).unwrap();
        let before = tensor_floats(&logits_of(&m.lm, &tokens));
        let name = "model.layers.0.mlp.down_proj.weight";
        tch::no_grad(|| {
            let mut w = m.vs.variables()[name].shallow_clone();
            let _ = w.f_mul_scalar_(0.0).unwrap();
        });
        let stale = tensor_floats(&logits_of(&m.lm, &tokens));
        m.lm.weights_changed().unwrap();
        let fresh = tensor_floats(&logits_of(&m.lm, &tokens));
        m.lm.pack_for_decoding(DecodeWeights::F32).unwrap();
        let f32_now = tensor_floats(&logits_of(&m.lm, &tokens));
        assert_eq!(stale, before, "{arch}: decoding reads the packed copy");
        assert!(
            max_diff(&fresh, &before) > 0.05 * spread,
            "{arch}: the change reaches it"
        );
        assert!(max_diff(&fresh, &f32_now) <= 0.05 * spread);
        // LoRA: the base stays packed and the adapters apply beside it.
        let lora = LoraConfig {
            rank: 4,
            alpha: 8.0,
            ..Default::default()
        };
        let mut a = load(&dir.join("tiny-F32.gguf"), Some(&lora));
        tch::no_grad(|| {
            for (n, mut v) in a.vs.variables() {
                if n.ends_with(".lora_B") {
                    let _ = v.f_uniform_(-0.5, 0.5).unwrap();
                }
            }
        });
        let adapted = tensor_floats(&logits_of(&a.lm, &tokens));
        assert!(
            max_diff(&adapted, &want) > 0.2 * spread,
            "{arch}: the adapters matter"
        );
        let packed = packed_logits(&mut a.lm, DecodeWeights::Q8_0, &tokens);
        assert!(
            max_diff(&packed, &adapted) <= 0.05 * spread,
            "{arch}: LoRA on Q8_0"
        );
    }
}

/// Decoding steps from packed weights take the fused step (plain Rust over every layer, keys
/// and values cached in f16): on the tiny Llama, Qwen2 (biases) and Qwen3 (query/key norms)
/// with LoRA adapters, its logits equal the full pass over the same packed weights within the
/// cache's f16 rounding, through padded, shared-prefix and forked decoding.
#[test]
fn fused_decoding_steps_from_packed_weights_equal_the_full_pass() {
    for arch in ["qwen3", "llama", "qwen2"] {
        let (dir, _) = fixture(arch);
        let path = if arch == "qwen3" {
            dir.clone()
        } else {
            dir.join("tiny-F32.gguf")
        };
        let lora = LoraConfig {
            rank: 4,
            alpha: 8.0,
            ..Default::default()
        };
        let mut m = load(&path, Some(&lora));
        tch::no_grad(|| {
            for (n, mut v) in m.vs.variables() {
                if n.ends_with(".lora_B") {
                    let _ = v.f_uniform_(-0.2, 0.2).unwrap();
                }
            }
        });
        assert!(!m.lm.fused_steps(), "f32 decoding keeps libtorch's step");
        let want65 = tensor_floats(&logits_of(&m.lm, &[5, 6, 7, 8]).get(0).get(3));
        for how in [DecodeWeights::Q8_0, DecodeWeights::Bf16] {
            m.lm.pack_for_decoding(how).unwrap();
            assert!(m.lm.fused_steps());
            let spread = tensor_floats(&logits_of(&m.lm, &[5, 6, 7, 8, 9]))
                .iter()
                .fold(0f64, |a, x| a.max(x.abs()));
            let what = format!("{arch} {}", how.name());
            let before = lm::fused_steps_taken();
            check_cached_steps(&m.lm, 2e-3 * spread, Kind::Half, &what);
            // Its 6 steps, the forked rows' and the one after the shared prefill (on this
            // thread).
            assert!(
                lm::fused_steps_taken() == before + 8,
                "{what}: the fused step ran"
            );
        }
        // More rows than the packed products take: the libtorch step, f32 weights, over the
        // f16 cache.
        let rows = 65i64;
        let prompt = Tensor::from_slice(&[5i64, 6, 7]).repeat([rows, 1]);
        let valid = Tensor::ones([rows, 3], (Kind::Bool, Device::Cpu));
        let spread = want65.iter().fold(0f64, |a, x| a.max(x.abs()));
        tch::no_grad(|| {
            let before = lm::fused_steps_taken();
            let (mut cache, _) = m.lm.prefill(&prompt, &valid, 8);
            assert_eq!(cache.kind(), Kind::Half);
            let logits = m.lm.step(
                &Tensor::from_slice(&[8i64]).repeat([rows]),
                &Tensor::from_slice(&[3i64]).repeat([rows]),
                &Tensor::ones([rows], (Kind::Bool, Device::Cpu)),
                &mut cache,
            );
            assert_eq!(lm::fused_steps_taken(), before, "{arch}: 65 rows");
            for r in [0, 64] {
                let d = max_diff(&tensor_floats(&logits.get(r)), &want65);
                assert!(d <= 2e-3 * spread, "{arch}: 65 rows, row {r}: {d}");
            }
        });
    }
}

/// SmolLM2-135M-Instruct decoding from bf16, Q8_0 and its file's Q4_1 blocks against f32: the
/// first token's logits within tolerance, and greedy continuations compared prompt by prompt
/// (the share that agree over 16 tokens is printed).
#[test]
fn smollm2_decodes_from_packed_weights_like_f32() {
    let mut m = load(&smollm2_file(), None);
    let chat = |q: &str| {
        let t = m.text.template.as_ref().unwrap();
        let text = t
            .render(
                &[serde_json::json!({"role": "user", "content": q})],
                None,
                true,
            )
            .unwrap();
        m.text.tokenizer.encode_with(&text, false).unwrap()
    };
    let questions = [
        "What is the capital of France?",
        "Write a haiku about the sea.",
        "How many legs does a spider have?",
        "Name three primary colours.",
        "What is 12 times 7?",
        "Give me a synonym for happy.",
        "Who wrote Romeo and Juliet?",
        "Explain what a CPU does in one sentence.",
    ];
    let prompts: Vec<Vec<u32>> = questions.iter().map(|q| chat(q)).collect();
    let greedy = |lm: &lm::Lm| {
        let how = asymre::rollout::generate::Sampling {
            max_new: 16,
            temperature: 0.0,
            stop: &[],
        };
        asymre::rollout::generate::decode(lm, &prompts, &how, 0, Device::Cpu).unwrap()
    };
    let last = |lm: &lm::Lm| {
        let p = &prompts[0];
        let all = tensor_floats(&logits_of(lm, p));
        let v = all.len() / p.len();
        all[all.len() - v..].to_vec()
    };
    let (want, want_next) = (greedy(&m.lm), last(&m.lm));
    // (weights, max |Δlogit| of the first token, prompts of 8 whose 16 greedy tokens agree).
    // Measured here (decoding steps with the f16 cache): bf16 0.117 and 7 of 8; Q8_0 0.964 and
    // 4; the file's Q4_1 blocks, which are the f32 model's own weights, 0.006 and 8. The bounds
    // leave room for another CPU's kernels and summation order.
    for (how, tol, agree) in [
        (DecodeWeights::Bf16, 0.5, 6),
        (DecodeWeights::Q8_0, 1.5, 3),
        (DecodeWeights::File, 0.05, 7),
    ] {
        m.lm.pack_for_decoding(how).unwrap();
        let (got, next) = (greedy(&m.lm), last(&m.lm));
        m.lm.pack_for_decoding(DecodeWeights::F32).unwrap();
        let same = got.iter().zip(&want).filter(|(a, b)| a == b).count();
        let d = max_diff(&next, &want_next);
        eprintln!(
            "smollm2 {}: {same}/{} greedy continuations equal f32's, first-token max |Δlogit| {d:.3}",
            how.name(),
            prompts.len()
        );
        assert!(d <= tol, "{}: max |Δlogit| {d}", how.name());
        assert!(same >= agree, "{}: {same} of {}", how.name(), prompts.len());
    }
}

/// `bench --lm --decoding` on the tiny model: a row per weights and batch size, naming the
/// kernels it ran; `ASYMRE_KERNELS=portable` takes the portable ones on any CPU, and an
/// unknown weights name is refused.
#[test]
fn decoding_bench_rows_name_their_weights_and_kernels() {
    let (dir, _) = fixture("llama");
    let model = dir.join("tiny-Q4_1.gguf");
    for kernels in [None, Some("portable")] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_asymre"));
        cmd.args([
            "bench",
            "--lm",
            "--decoding",
            "--model",
            model.to_str().unwrap(),
        ])
        .args(["--decode-weights", "f32,q8_0,file", "--seconds", "0.05"]);
        if let Some(k) = kernels {
            cmd.env("ASYMRE_KERNELS", k);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let rows: Vec<Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let names: Vec<(&str, u64)> = rows
            .iter()
            .map(|r| (r["weights"].as_str().unwrap(), r["pl"].as_u64().unwrap()))
            .collect();
        assert_eq!(
            names,
            [
                ("f32", 1),
                ("f32", 16),
                ("q8_0", 1),
                ("q8_0", 16),
                ("file", 1),
                ("file", 16)
            ]
        );
        let mib = |w: &str| rows.iter().find(|r| r["weights"] == w).unwrap()["weight_mib"].as_f64();
        // Q4_1 blocks read less than Q8_0's, which read less than f32.
        assert!(mib("file") < mib("q8_0") && mib("q8_0") < mib("f32"));
        if kernels.is_some() {
            assert!(rows.iter().all(|r| r["isa"] == "portable"));
        }
        assert!(rows.iter().all(|r| r["speed_tg"].as_f64().unwrap() > 0.0));
    }
    let out = asymre(&[
        "bench",
        "--lm",
        "--decoding",
        "--decode-weights",
        "q4",
        "--model",
        "x",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("one of f32, bf16, q8_0, file"));
}
