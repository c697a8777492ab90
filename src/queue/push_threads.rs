//! The threads pushes run on: a Tokio runtime of their own, at a lower
//! scheduling priority than the API and the store.
//!
//! Under load most of Herald's CPU goes to the pushes, above all to the
//! fresh P-256 key and ECDH RFC 8291 wants per message. On the runtime that
//! serves the API, a caller's request waited behind the pushes of the batch
//! stored before it, so the next batch of sends formed slowly and callers
//! waited longer for their 202. On threads of their own at `nice` +5
//! ([`PUSH_NICE`]) the kernel runs the API, the SQLite writer and the
//! dispatcher first whenever they have work, and the pushes take the CPU
//! that is left; with CPU to spare, nothing changes. In five interleaved
//! pairs of benchmark runs on SQLite (40 000 subscriptions, 30 000 per-user
//! sends from 64 clients) per-user deliveries/s rose in each pair, from
//! 6 611 – 8 321 to 7 331 – 10 068, and POST → 202 p50 under load fell from
//! 7.5 – 9.2 ms to 5.2 – 6.4 ms (docs/performance.md).

use tokio::runtime::{Builder, Handle, Runtime};

/// How much lower the push threads' priority is (`setpriority`). A process
/// may always lower its own threads' priority; raising it back needs
/// privileges, which is why the API's threads are not raised instead.
pub const PUSH_NICE: i32 = 5;

/// Owns the push runtime; dropping it stops the runtime without waiting.
pub struct PushThreads {
    runtime: Option<Runtime>,
    handle: Handle,
}

impl PushThreads {
    /// As many worker threads as the main runtime has (one per core).
    pub fn start() -> std::io::Result<PushThreads> {
        let runtime = Builder::new_multi_thread()
            .thread_name("herald-push")
            .on_thread_start(lower_priority)
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        Ok(PushThreads {
            runtime: Some(runtime),
            handle,
        })
    }

    pub fn handle(&self) -> &Handle {
        &self.handle
    }
}

impl Drop for PushThreads {
    fn drop(&mut self) {
        // Without blocking: the last handle may go inside an async context.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Lowers the calling thread's priority (on Linux `PRIO_PROCESS` with 0
/// names the calling thread). A failure only leaves the default priority.
fn lower_priority() {
    // SAFETY: setpriority takes plain integers and touches no memory.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, PUSH_NICE) };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "lowering the push threads' priority failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_threads_run_at_the_lower_priority() {
        let threads = PushThreads::start().unwrap();
        let nice = threads.handle().block_on(async {
            tokio::spawn(async {
                // SAFETY: getpriority only reads; errno is cleared first
                // because -1 is a valid answer.
                unsafe {
                    *libc::__errno_location() = 0;
                    libc::getpriority(libc::PRIO_PROCESS, 0)
                }
            })
            .await
            .unwrap()
        });
        let own = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
        assert_eq!(nice, (own + PUSH_NICE).min(19));
    }
}
