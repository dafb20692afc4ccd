//! The process's resource use, read from `/proc/self` with std at scrape time (Linux only;
//! [`read`] answers `None` elsewhere or when `/proc` cannot be read), for the standard
//! `process_*` metrics.

/// One reading.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Process {
    /// User plus system CPU time.
    pub(crate) cpu_seconds: f64,
    pub(crate) resident_bytes: u64,
    pub(crate) virtual_bytes: u64,
    pub(crate) open_fds: u64,
    /// The soft limit on open files, when it is not "unlimited".
    pub(crate) max_fds: Option<u64>,
    /// Since the Unix epoch.
    pub(crate) start_time_seconds: f64,
}

/// Reads the process's figures now.
#[cfg(target_os = "linux")]
pub(crate) fn read() -> Option<Process> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let boot_time = std::fs::read_to_string("/proc/stat").ok().and_then(|s| boot_time(&s))?;
    let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    let max_fds = std::fs::read_to_string("/proc/self/limits").ok().and_then(|s| max_open_files(&s));
    let ticks = rustix::param::clock_ticks_per_second();
    let page = rustix::param::page_size() as u64;
    parse_stat(&stat, ticks, page, boot_time).map(|mut p| {
        p.open_fds = open_fds;
        p.max_fds = max_fds;
        p
    })
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn read() -> Option<Process> {
    None
}

/// `/proc/self/stat`'s figures (man 5 proc): the fields after the command name, which is in
/// parentheses and may itself hold spaces and parentheses. `ticks` per second, `page` bytes,
/// `boot_time` seconds since the epoch. `open_fds` and `max_fds` are left for the caller.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn parse_stat(stat: &str, ticks: u64, page: u64, boot_time: u64) -> Option<Process> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    // Field 3 (state) is the first after the name; utime is field 14.
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    let ticks = ticks.max(1) as f64;
    Some(Process {
        cpu_seconds: (field(14)? + field(15)?) as f64 / ticks,
        virtual_bytes: field(23)?,
        resident_bytes: field(24)?.saturating_mul(page),
        start_time_seconds: boot_time as f64 + field(22)? as f64 / ticks,
        open_fds: 0,
        max_fds: None,
    })
}

/// `btime` of `/proc/stat`: the boot time, in seconds since the epoch.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn boot_time(proc_stat: &str) -> Option<u64> {
    proc_stat.lines().find_map(|l| l.strip_prefix("btime ")).and_then(|v| v.trim().parse().ok())
}

/// The soft "Max open files" limit of `/proc/self/limits`.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn max_open_files(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..].split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_found_after_a_command_name_with_spaces_and_parentheses() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
        // utime stime cutime cstime priority nice threads itrealvalue starttime vsize rss ...
        let stat = "42 (run (x) nel) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 8 0 1000 \
                    123456789 300 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        let p = parse_stat(stat, 100, 4096, 1_700_000_000).expect("parses");
        assert_eq!(p.cpu_seconds, 3.0);
        assert_eq!(p.virtual_bytes, 123_456_789);
        assert_eq!(p.resident_bytes, 300 * 4096);
        assert_eq!(p.start_time_seconds, 1_700_000_010.0);
        assert_eq!(parse_stat("42 (truncated", 100, 4096, 0), None);
        assert_eq!(parse_stat("42 (short) S 1 2", 100, 4096, 0), None);
    }

    #[test]
    fn boot_time_and_the_open_files_limit_are_read() {
        assert_eq!(boot_time("cpu  1 2 3\nbtime 1700000000\nprocesses 5\n"), Some(1_700_000_000));
        assert_eq!(boot_time("cpu 1\n"), None);
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(max_open_files(limits), Some(1024));
        assert_eq!(
            max_open_files("Max open files            unlimited            unlimited            files\n"),
            None
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_reads_non_zero() {
        let p = read().expect("/proc/self is readable on Linux");
        assert!(p.resident_bytes > 0 && p.virtual_bytes >= p.resident_bytes, "{p:?}");
        assert!(p.open_fds > 0, "{p:?}");
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        assert!(p.start_time_seconds > 1_500_000_000.0 && p.start_time_seconds <= now + 1.0, "{p:?}");
    }
}
