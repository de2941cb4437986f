//! Work built on runs: sweeps ([`sweep`]) and what reads their results ([`report`]), figures
//! ([`plot`]), plain-text tables ([`table`]), the throughput benchmark ([`bench`]) and BFCL's
//! judgement of a model ([`bfcl`]).
pub mod bench;
pub mod bench_grpo;
pub mod bench_lm;
pub mod bench_transport;
pub mod bfcl;
pub mod plot;
pub mod report;
pub mod sweep;
pub mod table;

/// A progress bar over `len` units of work called `unit` (`runs`, `tasks`), with elapsed time,
/// an estimate of what is left and a message.
fn progress_bar(len: u64, unit: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{{elapsed_precise}} [{{bar:30}}] {{pos}}/{{len}} {unit} (eta {{eta}}) {{msg}}"
        ))
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar
}
