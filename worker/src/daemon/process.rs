//! Process set-up for the long-lived snapshotter daemon, done before its first thread: the
//! allocator tuned so freed chunk buffers go back to the system, and an async runtime whose
//! blocking pool (gRPC calls, disk-cache writes) is bounded and lets idle threads go soon.

/// Most blocking threads at once.
const MAX_BLOCKING_THREADS: usize = 24;
/// How long an idle blocking thread is kept.
const KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(2);

/// Two malloc arenas instead of one per thread, and buffers above 256 KiB always mapped
/// (glibc would otherwise raise that bound after the first free and keep such buffers in its
/// heap), so memory freed after a burst of megabyte chunk buffers goes back. Call it before
/// other threads exist.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; the caller runs before other threads.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10);
    }
}

/// The daemon's runtime: a burst of calls does not leave a hundred parked threads (and their
/// touched stacks) behind.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .thread_keep_alive(KEEP_ALIVE)
        .build()
}
