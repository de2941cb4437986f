//! Other processes on this machine: how many cores they held over the last learner step, from
//! `/proc` (the machine's busy time less this process's own), and which process was busiest.
//! A serial run uses it to warn once when its threads share cores with another program, or,
//! with `learner.adapt_threads`, to run on the cores left free.
use std::time::{Duration, Instant};

/// The machine's busy time and this process's own, in clock ticks, at one moment.
#[derive(Clone, Copy)]
struct Sample {
    at: Instant,
    busy: u64,
    ours: u64,
}

/// The machine's busy ticks from `/proc/stat`'s first line (`cpu user nice system idle iowait
/// irq softirq steal …`): everything but idle and iowait, steal included (a core the
/// hypervisor gave to another machine is lost as well).
pub fn busy_ticks(stat: &str) -> Option<u64> {
    let line = stat.lines().next()?;
    let mut fields = line.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let v: Vec<u64> = fields
        .take(8)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    if v.len() < 8 {
        return None;
    }
    Some(v[0] + v[1] + v[2] + v[5] + v[6] + v[7])
}

/// A process's user and system ticks and its nice value from its `/proc/PID/stat` line (the
/// command name, in parentheses, may hold spaces). Returns (name, ticks, nice).
pub fn process_ticks(stat: &str) -> Option<(String, u64, i64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?.to_string();
    let rest: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    // After the name: state (field 3) … utime (14), stime (15) … nice (19).
    let field = |n: usize| rest.get(n - 3);
    let utime: u64 = field(14)?.parse().ok()?;
    let stime: u64 = field(15)?.parse().ok()?;
    let nice: i64 = field(19)?.parse().ok()?;
    Some((name, utime + stime, nice))
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a constant of the system.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        hz as f64
    } else {
        100.0
    }
}

fn sample() -> Option<Sample> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let own = std::fs::read_to_string("/proc/self/stat").ok()?;
    Some(Sample {
        at: Instant::now(),
        busy: busy_ticks(&stat)?,
        ours: process_ticks(&own)?.1,
    })
}

/// Watches the cores other processes hold, step after step.
pub struct CpuWatch {
    cores: usize,
    hz: f64,
    last: Option<Sample>,
}

impl CpuWatch {
    /// A watch over the `cores` this process may use.
    pub fn new(cores: usize) -> Self {
        CpuWatch {
            cores: cores.max(1),
            hz: ticks_per_second(),
            last: sample(),
        }
    }

    /// Cores other processes held on average since the last call (or the watch's start);
    /// `None` where `/proc` cannot be read or less than a second has passed (too few ticks
    /// to tell), in which case the interval goes on.
    pub fn others(&mut self) -> Option<f64> {
        let now = sample()?;
        let last = self.last.get_or_insert(now);
        let secs = now.at.duration_since(last.at).as_secs_f64();
        if secs < 1.0 {
            return None;
        }
        let busy = now.busy.saturating_sub(last.busy) as f64;
        let ours = now.ours.saturating_sub(last.ours) as f64;
        *last = now;
        Some(((busy - ours).max(0.0) / self.hz / secs).min(self.cores as f64))
    }

    /// The threads to run on when others hold `others` cores: the cores they leave, rounded
    /// (half a core held counts as lost: a thread sharing a core waits for the slower one),
    /// between 1 and `most`.
    pub fn free_threads(&self, others: f64, most: usize) -> usize {
        let lost = (others + 0.5).floor() as usize;
        self.cores.saturating_sub(lost).clamp(1, most.max(1))
    }
}

/// The processes other than this one that used CPU over `window`: pid, name, nice value and
/// cores used.
pub fn cpu_by_process(window: Duration) -> Vec<(u32, String, i64, f64)> {
    let me = std::process::id();
    let read = || -> Vec<(u32, String, u64, i64)> {
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        dir.filter_map(|e| {
            let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
            if pid == me {
                return None;
            }
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let (name, ticks, nice) = process_ticks(&stat)?;
            Some((pid, name, ticks, nice))
        })
        .collect()
    };
    let before = read();
    std::thread::sleep(window);
    let hz = ticks_per_second();
    read()
        .into_iter()
        .filter_map(|(pid, name, ticks, nice)| {
            let (_, _, t0, _) = before.iter().find(|b| b.0 == pid)?;
            let used = ticks.saturating_sub(*t0) as f64 / hz / window.as_secs_f64();
            (used > 0.0).then_some((pid, name, nice, used))
        })
        .collect()
}

/// The process other than this one that used the most CPU over `window`.
pub fn busiest_other(window: Duration) -> Option<(u32, String, i64, f64)> {
    cpu_by_process(window)
        .into_iter()
        .max_by(|a, b| a.3.total_cmp(&b.3))
}

/// Matches a serial run's threads to the cores others leave free, or warns once that they
/// are taken.
pub struct ThreadGuard {
    watch: CpuWatch,
    most: usize,
    adapt: bool,
    now: usize,
    warned: bool,
}

impl ThreadGuard {
    /// `most` intra-op threads at most (the config's); `adapt`: follow the free cores.
    pub fn new(most: usize, adapt: bool) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        ThreadGuard {
            watch: CpuWatch::new(cores),
            most,
            adapt,
            now: most,
            warned: false,
        }
    }

    /// After a step: measures the other processes and, adapting, sets the threads of the next
    /// step; otherwise warns (once) when they held a core the run's threads wanted.
    pub fn after_step(&mut self) {
        let Some(others) = self.watch.others() else {
            return;
        };
        let free = self.watch.free_threads(others, self.most);
        if self.adapt {
            if free != self.now {
                eprintln!(
                    "asymre: other processes held {others:.1} of {} cores over the last step: \
                     {free} intra-op thread(s) from now on (learner.adapt_threads)",
                    self.watch.cores
                );
                tch::set_num_threads(free as i32);
                self.now = free;
            }
        } else if free < self.most && !self.warned {
            self.warned = true;
            let who = busiest_other(Duration::from_millis(300))
                .map(|(pid, name, nice, used)| {
                    format!(" (the busiest: pid {pid} `{name}`, nice {nice}, {used:.1} cores)")
                })
                .unwrap_or_default();
            eprintln!(
                "asymre: warning: other processes held {others:.1} of this machine's {} cores \
                 over the last step{who}; its {} intra-op threads share cores with them and \
                 each step waits for the slowest; set learner.adapt_threads = true to run on \
                 the free cores (steps then are not bit-identical across runs)",
                self.watch.cores, self.most
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_lines_read_as_busy_ticks() {
        let stat = "cpu  100 5 50 1000 20 3 2 7 0 0\ncpu0 50 2 25 500 10 1 1 3 0 0\n";
        assert_eq!(busy_ticks(stat), Some(100 + 5 + 50 + 3 + 2 + 7));
        assert_eq!(busy_ticks("intr 1 2 3\n"), None);
        assert_eq!(busy_ticks("cpu 1 2\n"), None);
    }

    #[test]
    fn a_process_stat_line_gives_its_ticks_and_nice_even_with_spaces_in_its_name() {
        let line = "4242 (cc1 plus (x)) R 1 2 3 4 5 6 7 8 9 10 300 45 0 0 20 19 1 0 100 1000 10";
        assert_eq!(
            process_ticks(line),
            Some(("cc1 plus (x)".to_string(), 345, 19))
        );
        assert_eq!(process_ticks("4242 (x) R 1 2"), None);
    }

    #[test]
    fn free_threads_count_half_a_held_core_as_lost_and_never_go_below_one() {
        let w = CpuWatch {
            cores: 2,
            hz: 100.0,
            last: None,
        };
        assert_eq!(w.free_threads(0.0, 2), 2);
        assert_eq!(w.free_threads(0.3, 2), 2);
        assert_eq!(w.free_threads(0.6, 2), 1);
        assert_eq!(w.free_threads(1.0, 2), 1);
        assert_eq!(w.free_threads(2.0, 2), 1);
        assert_eq!(w.free_threads(0.0, 1), 1);
    }

    #[test]
    fn a_busy_process_beside_this_one_is_seen_with_its_name_and_nice_value() {
        let mut hog = std::process::Command::new("nice")
            .args(["-n", "5", "sh", "-c", "while :; do :; done"])
            .spawn()
            .unwrap();
        let seen = cpu_by_process(Duration::from_millis(600));
        hog.kill().unwrap();
        hog.wait().unwrap();
        let (_, name, nice, used) = seen
            .into_iter()
            .find(|p| p.0 == hog.id())
            .expect("the busy loop ran in the window");
        assert_eq!((name.as_str(), nice), ("sh", 5));
        assert!(used > 0.0 && used <= 1.05, "{used}");
    }
}
