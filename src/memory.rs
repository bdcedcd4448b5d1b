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
//! One arena for the processes that load large configurations (the beat, `run`, `check`):
//! the configuration is validated by several threads while its tree is freed schedule by
//! schedule (`config::validate`); with an arena per thread (glibc's default, up to 8 per
//! core), the threads' schedules could not reuse the memory the tree frees in the main
//! arena, and loading 100,000 schedules peaked at 123 MiB instead of 84 MiB (the beat kept
//! 123 MiB instead of 90 after it). The load took the same time, and a beat's wave too. A
//! worker keeps glibc's default: draining Celery tasks at full speed, it was 13 % slower with
//! one arena (23,300 against 26,800 tasks/s), and it needs no large configuration.

/// Fixes the allocator's thresholds (call once, first thing in `main`): blocks of 256 KiB
/// and more are mapped on their own and unmapped when freed, and free memory at the top of
/// the heap beyond 1 MiB goes back to the system.
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it has no preconditions.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1024 * 1024);
    }
}

/// Makes every thread share one arena (unless `MALLOC_ARENA_MAX` is set in the environment:
/// glibc reads it itself). Call before any thread is started: a thread that has allocated
/// already keeps its arena.
pub fn share_one_arena() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it has no preconditions.
    unsafe {
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
