//! Work between libtorch's operations, split over libtorch's own OpenMP workers when its libgomp
//! is loaded (Linux): the packed decoding products and sampling. Those workers wait actively
//! between operations (see `main`), so a second pool of threads would take their cores while
//! they wait and each pool would slow the other (measured: decoding from Q8_0 weights at batch
//! 16 ran 1.6× faster on libgomp's team than on rayon's). Elsewhere, rayon's pool.
use std::any::Any;
use std::ffi::{c_int, c_uint, c_void};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::{Mutex, OnceLock};

type Parallel = unsafe extern "C" fn(extern "C" fn(*mut c_void), *mut c_void, c_uint, c_uint);
type Query = unsafe extern "C" fn() -> c_int;

struct Gomp {
    parallel: Parallel,
    thread_num: Query,
    num_threads: Query,
}

fn gomp() -> Option<&'static Gomp> {
    static GOMP: OnceLock<Option<Gomp>> = OnceLock::new();
    GOMP.get_or_init(|| {
        #[cfg(target_os = "linux")]
        {
            let find = |name: &std::ffi::CStr| {
                // SAFETY: dlsym with RTLD_DEFAULT only looks a name up in what is loaded.
                let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
                (!p.is_null()).then_some(p)
            };
            let parallel = find(c"GOMP_parallel")?;
            let thread_num = find(c"omp_get_thread_num")?;
            let num_threads = find(c"omp_get_num_threads")?;
            // SAFETY: libgomp's entry points with their C signatures (GCC's libgomp ABI).
            unsafe {
                Some(Gomp {
                    parallel: std::mem::transmute::<*mut c_void, Parallel>(parallel),
                    thread_num: std::mem::transmute::<*mut c_void, Query>(thread_num),
                    num_threads: std::mem::transmute::<*mut c_void, Query>(num_threads),
                })
            }
        }
        #[cfg(not(target_os = "linux"))]
        None
    })
    .as_ref()
}

struct Job<'a> {
    tasks: usize,
    f: &'a (dyn Fn(usize) + Sync),
    gomp: &'a Gomp,
    /// The first panic of a task, carried out of the C frames and resumed by `for_each`.
    panic: Mutex<Option<Box<dyn Any + Send>>>,
}

extern "C" fn run(data: *mut c_void) {
    // SAFETY: `data` is the `Job` for_each passed, alive until GOMP_parallel returns.
    let job = unsafe { &*(data as *const Job) };
    // SAFETY: called inside the parallel region.
    let (t, n) = unsafe { ((job.gomp.thread_num)(), (job.gomp.num_threads)()) };
    let (t, n) = (t.max(0) as usize, n.max(1) as usize);
    // Contiguous shares, the first ones a task longer.
    let (base, extra) = (job.tasks / n, job.tasks % n);
    let start = t * base + t.min(extra);
    let end = start + base + usize::from(t < extra);
    // A panic must not unwind through libgomp's frames (it would abort the process).
    let ran = catch_unwind(AssertUnwindSafe(|| {
        for task in start..end {
            (job.f)(task);
        }
    }));
    if let Err(payload) = ran {
        let mut first = job.panic.lock().unwrap_or_else(|e| e.into_inner());
        first.get_or_insert(payload);
    }
}

/// Runs `f(0..tasks)`, each task once, in parallel; returns when all have run. A task's panic
/// is resumed on the calling thread, as if `f` had run there.
pub fn for_each(tasks: usize, f: &(dyn Fn(usize) + Sync)) {
    let workers = tch::get_num_threads().max(1) as usize;
    match gomp() {
        _ if tasks <= 1 || workers == 1 => (0..tasks).for_each(f),
        Some(gomp) => {
            let job = Job {
                tasks,
                f,
                gomp,
                panic: Mutex::new(None),
            };
            let threads = workers.min(tasks) as c_uint;
            // SAFETY: `run` reads `job` only during the call, which blocks until every
            // thread of the team has returned.
            unsafe { (gomp.parallel)(run, &job as *const Job as *mut c_void, threads, 0) };
            let panic = job.panic.into_inner().unwrap_or_else(|e| e.into_inner());
            if let Some(payload) = panic {
                resume_unwind(payload);
            }
        }
        None => {
            use rayon::prelude::*;
            (0..tasks).into_par_iter().for_each(f);
        }
    }
}

/// An output buffer that the tasks of one [`for_each`] write in disjoint parts.
#[derive(Clone, Copy)]
pub struct DisjointOut {
    ptr: *mut f32,
    len: usize,
}

// SAFETY: only a pointer and a length; `part`'s contract keeps the tasks' writes apart.
unsafe impl Send for DisjointOut {}
unsafe impl Sync for DisjointOut {}

impl DisjointOut {
    /// `buf`, which must outlive every use of the parts.
    pub fn new(buf: &mut [f32]) -> Self {
        DisjointOut {
            ptr: buf.as_mut_ptr(),
            len: buf.len(),
        }
    }

    /// `buf[start..start + len]`.
    ///
    /// # Safety
    /// The buffer is still alive, and no other part that overlaps this one is used meanwhile.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn part<'a>(self, start: usize, len: usize) -> &'a mut [f32] {
        assert!(start + len <= self.len, "a part inside the buffer");
        std::slice::from_raw_parts_mut(self.ptr.add(start), len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn every_task_runs_once_and_a_panic_reaches_the_caller() {
        let seen: Vec<AtomicUsize> = (0..37).map(|_| AtomicUsize::new(0)).collect();
        for_each(seen.len(), &|t| {
            seen[t].fetch_add(1, Ordering::Relaxed);
        });
        assert!(seen.iter().all(|c| c.load(Ordering::Relaxed) == 1));
        let caught = std::panic::catch_unwind(|| {
            for_each(8, &|t| {
                if t == 5 {
                    panic!("task {t} failed");
                }
            })
        });
        let payload = caught.expect_err("the panic is resumed");
        let msg = payload
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_default();
        assert_eq!(msg, "task 5 failed");
    }
}
