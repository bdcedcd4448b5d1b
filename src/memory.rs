//! The process's use of the C allocator (glibc malloc), tuned for a daemon that holds a
//! large, long-lived set of small objects (100,000s of schedules) and builds it from a much
//! larger, short-lived one (the YAML tree of the configuration).
//!
//! Without tuning, glibc keeps what such a load frees: a big freed block raises its mmap
//! threshold (up to 32 MiB) and with it the trim threshold, so the large tables built after
//! (the beat's agenda, grown by doubling) come from the heap and their outgrown copies stay
//! resident. Measured with 100,000 schedules: 137 MiB resident before this module, for
//! about 64 MiB of live data.
//!
//! One arena: the configuration is validated by several threads while its tree is freed
//! schedule by schedule (`config::validate`); with an arena per thread (glibc's default, up
//! to 8 per core), the threads' schedules could not reuse the memory the tree frees in the
//! main arena, and loading 100,000 schedules peaked at 123 MiB instead of 84 MiB. glibc's
//! per-thread caches serve most small allocations without the arena's lock, and a beat or
//! a worker runs a few threads (one per core), so sharing it costs nothing measurable here
//! (the same load took the same time).

/// Fixes the allocator's settings (call once, first thing in `main`, before any thread is
/// started): blocks of 256 KiB and more are mapped on their own and unmapped when freed,
/// free memory at the top of the heap beyond 1 MiB goes back to the system, and all
/// threads share one arena.
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it has no preconditions.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1024 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Hands the heap's free pages back to the system: after a large configuration is loaded or
/// installed, what was freed is several times what is kept.
pub fn release_freed() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free heap pages; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}
