//! The `process_*` metrics every Go component exports through Prometheus' process
//! collector (kube-proxy among them), read from `/proc/self` at each scrape, so
//! dashboards and alerts on kube-proxy's CPU, memory and file descriptors keep working.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// What the process collector reports, as Prometheus' Go client computes it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProcessStats {
    /// User and system CPU time, seconds.
    pub cpu_seconds: f64,
    /// Open file descriptors.
    pub open_fds: f64,
    /// The soft limit on open file descriptors.
    pub max_fds: f64,
    /// Virtual memory size, bytes.
    pub virtual_memory_bytes: f64,
    /// The soft limit on the address space, bytes (unlimited: the largest `u64`).
    pub virtual_memory_max_bytes: f64,
    /// Resident memory, bytes.
    pub resident_memory_bytes: f64,
    /// Start of the process, Unix seconds.
    pub start_time_seconds: f64,
    /// IP bytes received in the process' network namespace (`IpExt: InOctets`).
    pub network_receive_bytes: f64,
    /// IP bytes sent in the process' network namespace (`IpExt: OutOctets`).
    pub network_transmit_bytes: f64,
}

/// The clock ticks and page size `/proc` counts in.
#[derive(Debug, Clone, Copy)]
pub struct Units {
    /// Clock ticks per second (`CLK_TCK`).
    pub ticks: f64,
    /// Bytes per page.
    pub page_size: f64,
}

/// The `/proc` files the statistics come from, as text.
#[derive(Debug, Clone, Default)]
pub struct ProcFiles {
    /// `/proc/self/stat`.
    pub stat: String,
    /// `/proc/self/limits`.
    pub limits: String,
    /// `/proc/stat` (for `btime`).
    pub system_stat: String,
    /// `/proc/self/net/netstat`.
    pub netstat: String,
    /// Entries of `/proc/self/fd`.
    pub open_fds: usize,
}

impl ProcessStats {
    /// The statistics in `files`; a field whose source cannot be read stays 0.
    pub fn parse(files: &ProcFiles, units: Units) -> ProcessStats {
        let mut stats = ProcessStats {
            open_fds: files.open_fds as f64,
            ..ProcessStats::default()
        };
        // The command name (field 2) is in parentheses and may hold spaces: fields are
        // counted after its closing parenthesis, from field 3 (state) on.
        if let Some((_, rest)) = files.stat.rsplit_once(')') {
            let fields: Vec<f64> = rest
                .split_whitespace()
                .map(|f| f.parse().unwrap_or(0.0))
                .collect();
            let field = |n: usize| fields.get(n - 3).copied().unwrap_or(0.0);
            stats.cpu_seconds = (field(14) + field(15)) / units.ticks;
            stats.virtual_memory_bytes = field(23);
            stats.resident_memory_bytes = field(24) * units.page_size;
            let boot = files
                .system_stat
                .lines()
                .find_map(|l| l.strip_prefix("btime "))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(0.0);
            stats.start_time_seconds = boot + field(22) / units.ticks;
        }
        let soft_limit = |name: &str| -> f64 {
            files
                .limits
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .map_or(0.0, |v| {
                    if v == "unlimited" {
                        u64::MAX as f64
                    } else {
                        v.parse().unwrap_or(0.0)
                    }
                })
        };
        stats.max_fds = soft_limit("Max open files");
        stats.virtual_memory_max_bytes = soft_limit("Max address space");
        // "IpExt: NoRoutes InTruncatedPkts ... InOctets OutOctets ..." then the values.
        let mut ip_ext = files
            .netstat
            .lines()
            .filter_map(|l| l.strip_prefix("IpExt:"));
        if let (Some(names), Some(values)) = (ip_ext.next(), ip_ext.next()) {
            for (name, value) in names.split_whitespace().zip(values.split_whitespace()) {
                let value = value.parse().unwrap_or(0.0);
                match name {
                    "InOctets" => stats.network_receive_bytes = value,
                    "OutOctets" => stats.network_transmit_bytes = value,
                    _ => {}
                }
            }
        }
        stats
    }

    /// This process' statistics, read now.
    pub fn read() -> ProcessStats {
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        let files = ProcFiles {
            stat: read("/proc/self/stat"),
            limits: read("/proc/self/limits"),
            system_stat: read("/proc/stat"),
            netstat: read("/proc/self/net/netstat"),
            open_fds: std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count),
        };
        let sysconf = |var| {
            nix::unistd::sysconf(var)
                .ok()
                .flatten()
                .map_or(0.0, |v| v as f64)
        };
        let units = Units {
            ticks: sysconf(nix::unistd::SysconfVar::CLK_TCK).max(1.0),
            page_size: sysconf(nix::unistd::SysconfVar::PAGE_SIZE),
        };
        ProcessStats::parse(&files, units)
    }
}

/// The collector: registered once, it reads `/proc/self` at every scrape.
#[derive(Debug, Default)]
pub struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = ProcessStats::read();
        let counters = [
            (
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                s.cpu_seconds,
            ),
            (
                "process_network_receive_bytes",
                "Number of bytes received by the process over the network",
                s.network_receive_bytes,
            ),
            (
                "process_network_transmit_bytes",
                "Number of bytes sent by the process over the network",
                s.network_transmit_bytes,
            ),
        ];
        for (name, help, value) in counters {
            let counter = ConstCounter::new(value);
            counter.encode(encoder.encode_descriptor(
                name,
                help,
                None,
                counter.metric_type(),
            )?)?;
        }
        let gauges = [
            (
                "process_open_fds",
                "Number of open file descriptors",
                s.open_fds,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors",
                s.max_fds,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                s.virtual_memory_bytes,
            ),
            (
                "process_virtual_memory_max_bytes",
                "Maximum amount of virtual memory available in bytes",
                s.virtual_memory_max_bytes,
            ),
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                s.resident_memory_bytes,
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds",
                s.start_time_seconds,
            ),
        ];
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        Ok(())
    }
}

/// For messages: the main figures on one line.
impl std::fmt::Display for ProcessStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cpu {} s, rss {} B, vsz {} B, fds {}/{}",
            self.cpu_seconds,
            self.resident_memory_bytes,
            self.virtual_memory_bytes,
            self.open_fds,
            self.max_fds
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_give_the_go_collectors_values() {
        let files = ProcFiles {
            stat: "4242 (kipvs (x) y) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 150 0 0 20 0 \
                   8 0 5000 123456789 300 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0"
                .into(),
            limits: "Limit                     Soft Limit           Hard Limit           Units\n\
                     Max open files            1048576              1048576              files\n\
                     Max address space         unlimited            unlimited            bytes\n"
                .into(),
            system_stat: "cpu  1 2 3\nbtime 1700000000\nprocesses 9\n".into(),
            netstat: "TcpExt: A B\nTcpExt: 1 2\nIpExt: InNoRoutes InOctets OutOctets\nIpExt: 3 1000 2000\n"
                .into(),
            open_fds: 12,
        };
        let s = ProcessStats::parse(
            &files,
            Units {
                ticks: 100.0,
                page_size: 4096.0,
            },
        );
        assert_eq!(s.cpu_seconds, 4.0);
        assert_eq!(s.virtual_memory_bytes, 123_456_789.0);
        assert_eq!(s.resident_memory_bytes, 300.0 * 4096.0);
        assert_eq!(s.start_time_seconds, 1_700_000_050.0);
        assert_eq!(s.max_fds, 1_048_576.0);
        assert_eq!(s.virtual_memory_max_bytes, u64::MAX as f64);
        assert_eq!(s.open_fds, 12.0);
        assert_eq!(s.network_receive_bytes, 1000.0);
        assert_eq!(s.network_transmit_bytes, 2000.0);
    }

    #[test]
    fn unreadable_files_give_zeros() {
        let s = ProcessStats::parse(
            &ProcFiles::default(),
            Units {
                ticks: 100.0,
                page_size: 4096.0,
            },
        );
        assert_eq!(s, ProcessStats::default());
    }

    #[test]
    fn this_process_has_started_and_holds_descriptors() {
        let s = ProcessStats::read();
        assert!(s.start_time_seconds > 1.0e9, "{s}");
        assert!(s.open_fds >= 3.0, "{s}");
        assert!(s.resident_memory_bytes > 0.0, "{s}");
    }
}
