//! The process's memory from /proc and getrusage: resident peaks per input (for code that
//! allocates outside Rust, like libtorch) and for the whole run.

/// A `Name:  123 kB` field of /proc/PID/status, in KiB.
pub fn status_field_kib(status: &str, field: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(field))?;
    line[field.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

fn own_status_kib(field: &str) -> Option<u64> {
    status_field_kib(&std::fs::read_to_string("/proc/self/status").ok()?, field)
}

/// Resident bytes now.
pub fn resident() -> u64 {
    own_status_kib("VmRSS:").unwrap_or(0) * 1024
}

/// The resident peak (VmHWM) since the last [`reset_resident_peak`], in bytes.
pub fn resident_peak() -> u64 {
    own_status_kib("VmHWM:").unwrap_or(0) * 1024
}

/// Restarts the resident peak at the current size (Linux: "5" to /proc/self/clear_refs).
pub fn reset_resident_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// CPU seconds (user + system) of this process and of its waited-for children, and this
/// process's largest resident size in bytes.
pub fn rusage() -> (f64, f64, u64) {
    let get = |who| {
        // SAFETY: getrusage fills the zeroed struct it is given and reads nothing else.
        let mut u: libc::rusage = unsafe { std::mem::zeroed() };
        unsafe { libc::getrusage(who, &mut u) };
        u
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    let own = get(libc::RUSAGE_SELF);
    let children = get(libc::RUSAGE_CHILDREN);
    (
        secs(own.ru_utime) + secs(own.ru_stime),
        secs(children.ru_utime) + secs(children.ru_stime),
        own.ru_maxrss as u64 * 1024,
    )
}
