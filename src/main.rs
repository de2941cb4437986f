//! The `asymre` binary: parse the command line, call the library, map errors to exit codes
//! (2 for bad input, 1 for failures, 130/143 for SIGINT/SIGTERM after a checkpoint).
use std::process::ExitCode;

use asymre::app::cli::Cli;
use clap::Parser;

fn main() -> ExitCode {
    keep_openmp_threads_awake();
    keep_large_blocks_in_the_heap();
    let cli = Cli::parse();
    match asymre::app::commands::run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

/// Commands that run libtorch's kernels for long enough to care how its threads wait.
const HEAVY: [&str; 8] = [
    "train", "resume", "actor", "eval", "generate", "sweep", "bench", "bfcl",
];

/// libtorch's OpenMP runtime (libgomp) puts a worker thread to sleep when it has waited about
/// 3 ms for work, and a sleeping worker must be woken through the kernel for the next product.
/// On a virtual machine an idle CPU halts, and beside another process (even at nice 19) the
/// woken worker waits for the scheduler: measured on 2 cores, a serial tool-use step went from
/// 17.6 s to 45–94 s beside a busy loop, and the first step took 56 s instead of 23 s. Waiting
/// actively (spinning up to ~100 ms before sleeping) keeps the workers on their cores. libgomp
/// reads its policy once, when it is loaded, so the process starts itself again with
/// `OMP_WAIT_POLICY=ACTIVE GOMP_SPINCOUNT=10000000`, unless either is already set or
/// `ASYMRE_OMP_DEFAULTS` is (libgomp's own defaults, for comparison).
#[cfg(target_os = "linux")]
fn keep_openmp_threads_awake() {
    use std::os::unix::process::CommandExt;
    let set = |k: &str| std::env::var_os(k).is_some();
    if set("OMP_WAIT_POLICY") || set("GOMP_SPINCOUNT") || set("ASYMRE_OMP_DEFAULTS") {
        return;
    }
    let heavy = std::env::args_os()
        .nth(1)
        .is_some_and(|c| HEAVY.iter().any(|h| c == *h));
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    if heavy {
        // exec returns only when it fails: then go on with libgomp's defaults.
        let _ = std::process::Command::new(exe)
            .args(std::env::args_os().skip(1))
            .env("OMP_WAIT_POLICY", "ACTIVE")
            .env("GOMP_SPINCOUNT", "10000000")
            .exec();
    }
}

#[cfg(not(target_os = "linux"))]
fn keep_openmp_threads_awake() {}

/// libtorch allocates and frees every activation of a learner step with malloc, blocks of a few
/// megabytes. By default glibc gives such blocks fresh pages (mmap, or a heap top it trimmed
/// after the last free), so every step pays the page faults again: a tenth of a tool-use learner
/// step in a profile. Serving blocks up to 32 MiB from the heap and trimming it only when 256 MiB
/// at its top are free keeps those pages mapped: tool-use training ran 4–8% faster (f32 and bf16,
/// three alternating pairs each).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_large_blocks_in_the_heap() {
    // SAFETY: mallopt only changes allocator parameters and takes glibc's own locks; it runs
    // first thing in main. A refused value (return 0) leaves glibc's default, which is only slower.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_large_blocks_in_the_heap() {}
