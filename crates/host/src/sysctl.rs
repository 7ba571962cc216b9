//! Kernel parameters under `/proc/sys`, named the way `sysctl(8)` names them.

use std::path::PathBuf;

/// The file under `/proc/sys` holding the sysctl `name` (`net.ipv4.vs.conntrack`).
///
/// Dots separate levels, as `sysctl(8)` writes them; a slash-separated name is taken
/// as it is, so interface names containing dots can be given that way.
pub fn proc_path(name: &str) -> PathBuf {
    let relative = if name.contains('/') {
        name.to_owned()
    } else {
        name.replace('.', "/")
    };
    PathBuf::from("/proc/sys").join(relative)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotted_names_map_to_proc_sys_paths() {
        assert_eq!(
            proc_path("net.ipv4.vs.conntrack"),
            PathBuf::from("/proc/sys/net/ipv4/vs/conntrack")
        );
    }

    #[test]
    fn slashed_names_keep_dots_in_interface_names() {
        assert_eq!(
            proc_path("net/ipv4/conf/eth0.100/arp_ignore"),
            PathBuf::from("/proc/sys/net/ipv4/conf/eth0.100/arp_ignore")
        );
    }
}
