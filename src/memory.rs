//! Returning freed memory to the operating system: the crate's one `unsafe`.
//!
//! Compiling a large policy builds a document tree several times the size of
//! the result; glibc keeps those pages once they are free, so the resident
//! memory of a long-running corsd would stay at the compile's peak.
//! `malloc_trim` returns them.

/// Hands the memory a compile freed back to the operating system. A no-op on
/// C libraries other than glibc.
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    trim();
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[expect(
    unsafe_code,
    reason = "malloc_trim has no safe wrapper; it takes a size and touches no Rust memory"
)]
fn trim() {
    // SAFETY: malloc_trim only releases free heap pages; it is thread-safe
    // and has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}
