//! The host's nftables rules of one sandbox network, in a table of their own named
//! after the owning process and the TAP (`husk_<pid>_<tap>`), removed when the sandbox
//! ends (the [`Rules`] guard) and, for a process that was killed, by the next sandbox
//! network set up on the host ([`remove_stale`]): a table whose process or TAP is gone
//! is stale (the TAP is not persistent, so it vanished with its process).
//!
//! `--net nat`: masquerade what the guest sends beyond its link, let it out and its
//! answers back in, nothing else in; it may not reach other sandboxes' links
//! (10.213.0.0/16) nor send from another address; with an allowlist (`--allow`), only
//! those networks and its DNS servers. IPv4 forwarding is switched on for the network
//! namespace (as docker does) and left on.
//!
//! `--net link` (the link to the host only): a table that drops anything forwarded to
//! or from the TAP, so the link stays a link when forwarding is on; skipped (with a
//! debug line) where nftables is not installed.
//!
//! Rules are written in nft's own syntax and loaded with `nft -f -` (Debian's
//! nftables): one atomic transaction per change.

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use super::net::{GuestNet, Ipv4Net, NetError, LINK_NETWORK};

/// The nft binary.
const NFT: &str = "nft";
/// Table names start with this.
const PREFIX: &str = "husk_";
/// Where IPv4 forwarding is switched on.
const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// What `--net nat` lets out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Egress {
    /// Only these networks (and the DNS servers); empty: everywhere.
    pub allow: Vec<Ipv4Net>,
    /// The guest's DNS servers (always allowed).
    pub dns: Vec<Ipv4Addr>,
}

/// A sandbox's table; deleted when dropped.
#[derive(Debug)]
pub struct Rules {
    table: String,
}

impl Rules {
    /// The table's name.
    pub fn table(&self) -> &str {
        &self.table
    }
}

impl Drop for Rules {
    fn drop(&mut self) {
        match nft(&format!("delete table ip {}\n", self.table)) {
            Ok(()) => {}
            // Another sandbox's start found the TAP gone (this VM stopped first) and
            // removed the table already.
            Err(e) if e.to_string().contains("No such file or directory") => {
                log::debug!("nftables table {} was removed already", self.table)
            }
            Err(e) => log::warn!("cannot remove the nftables table {}: {e}", self.table),
        }
    }
}

/// The table of `tap` owned by this process.
fn table_name(tap: &str) -> String {
    format!("{PREFIX}{}_{}", std::process::id(), tap.replace('-', "_"))
}

/// Installs `--net nat`'s rules for `link` and switches IPv4 forwarding on.
pub fn install_nat(link: &GuestNet, egress: &Egress) -> Result<Rules, NetError> {
    let table = table_name(&link.tap);
    nft(&nat_ruleset(&table, link, egress))?;
    let rules = Rules { table };
    enable_forwarding()?;
    Ok(rules)
}

/// Installs `--net link`'s isolation table for `link`; `None` (and a debug line) when
/// nftables is not there.
pub fn install_isolation(link: &GuestNet) -> Option<Rules> {
    let table = table_name(&link.tap);
    match nft(&isolation_ruleset(&table, &link.tap)) {
        Ok(()) => Some(Rules { table }),
        Err(e) => {
            log::debug!("no isolation table for {}: {e}", link.tap);
            None
        }
    }
}

/// The ruleset of a NAT sandbox.
fn nat_ruleset(table: &str, link: &GuestNet, egress: &Egress) -> String {
    let (tap, guest) = (&link.tap, link.guest);
    let mut forward = vec![
        format!("iifname \"{tap}\" ip saddr != {guest} drop"),
        format!("iifname \"{tap}\" ip daddr {LINK_NETWORK}/16 drop"),
    ];
    if !egress.allow.is_empty() {
        let mut allowed: Vec<String> = egress.allow.iter().map(Ipv4Net::to_string).collect();
        allowed.extend(egress.dns.iter().map(Ipv4Addr::to_string));
        forward.push(format!(
            "iifname \"{tap}\" ip daddr != {{ {} }} drop",
            allowed.join(", ")
        ));
    }
    forward.push(format!("iifname \"{tap}\" accept"));
    forward.push(format!(
        "oifname \"{tap}\" ct state established,related accept"
    ));
    forward.push(format!("oifname \"{tap}\" drop"));
    format!(
        "table ip {table} {{\n\
         \x20 chain postrouting {{\n\
         \x20   type nat hook postrouting priority srcnat; policy accept;\n\
         \x20   ip saddr {guest} oifname != \"{tap}\" masquerade\n\
         \x20 }}\n\
         \x20 chain forward {{\n\
         \x20   type filter hook forward priority filter; policy accept;\n\
         {}\n\
         \x20 }}\n\
         }}\n",
        forward
            .iter()
            .map(|rule| format!("    {rule}"))
            .collect::<Vec<_>>()
            .join("\n")
    )
}

/// The ruleset of a link-only sandbox: nothing forwarded to or from its TAP.
fn isolation_ruleset(table: &str, tap: &str) -> String {
    format!(
        "table ip {table} {{\n\
         \x20 chain forward {{\n\
         \x20   type filter hook forward priority filter; policy accept;\n\
         \x20   iifname \"{tap}\" drop\n\
         \x20   oifname \"{tap}\" drop\n\
         \x20 }}\n\
         }}\n"
    )
}

/// Deletes the husk tables whose process or TAP is gone (a sandbox whose process was
/// killed), and any table of another process for `tap` (whose name is ours now).
/// Best effort: failures are logged.
pub fn remove_stale(tap: &str) {
    let Ok(listing) = nft_output(&["list", "tables", "ip"]) else {
        return;
    };
    let mut script = String::new();
    for table in stale_tables(
        &listing,
        tap,
        std::process::id(),
        |pid| std::path::Path::new(&format!("/proc/{pid}")).exists(),
        |tap| std::path::Path::new(&format!("/sys/class/net/{tap}")).exists(),
    ) {
        log::info!("removing the stale nftables table {table}");
        script.push_str(&format!("delete table ip {table}\n"));
    }
    if !script.is_empty() {
        if let Err(e) = nft(&script) {
            log::warn!("cannot remove stale nftables tables: {e}");
        }
    }
}

/// The stale tables in `nft list tables ip`'s `listing`.
fn stale_tables(
    listing: &str,
    tap: &str,
    own_pid: u32,
    alive: impl Fn(u32) -> bool,
    tap_exists: impl Fn(&str) -> bool,
) -> Vec<String> {
    let ours = tap.replace('-', "_");
    listing
        .lines()
        .filter_map(|line| line.trim().strip_prefix("table ip "))
        .filter_map(|name| {
            let rest = name.strip_prefix(PREFIX)?;
            let (pid, table_tap) = rest.split_once('_')?;
            let pid: u32 = pid.parse().ok()?;
            let stale =
                !alive(pid) || !tap_exists(table_tap) || (table_tap == ours && pid != own_pid);
            stale.then(|| name.to_string())
        })
        .collect()
}

/// Switches IPv4 forwarding on for this network namespace, if it is off.
fn enable_forwarding() -> Result<(), NetError> {
    let on = std::fs::read_to_string(IP_FORWARD).is_ok_and(|v| v.trim() == "1");
    if !on {
        log::info!("switching IPv4 forwarding on ({IP_FORWARD}) for --net nat");
        std::fs::write(IP_FORWARD, "1").map_err(|e| {
            NetError::Nat(format!(
                "cannot switch IPv4 forwarding on ({IP_FORWARD}): {e}"
            ))
        })?;
    }
    Ok(())
}

/// Runs `nft -f -` with `script`.
fn nft(script: &str) -> Result<(), NetError> {
    let mut child = Command::new(NFT)
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| NetError::Nat(format!("cannot run {NFT} (install nftables): {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| NetError::Nat(format!("{NFT}: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| NetError::Nat(format!("{NFT}: {e}")))?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    Err(NetError::Nat(format!(
        "{NFT} failed ({}): {}",
        out.status,
        stderr.trim()
    )))
}

fn nft_output(args: &[&str]) -> Result<String, NetError> {
    let out = Command::new(NFT)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| NetError::Nat(format!("cannot run {NFT}: {e}")))?;
    if !out.status.success() {
        return Err(NetError::Nat(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link() -> GuestNet {
        GuestNet::for_ifindex("husk7", 5)
    }

    #[test]
    fn nat_ruleset_masquerades_the_guest_and_keeps_others_out() {
        let text = nat_ruleset("husk_1_husk7", &link(), &Egress::default());
        assert!(
            text.contains("ip saddr 10.213.0.22 oifname != \"husk7\" masquerade"),
            "{text}"
        );
        assert!(
            text.contains("iifname \"husk7\" ip daddr 10.213.0.0/16 drop"),
            "{text}"
        );
        assert!(
            text.contains("iifname \"husk7\" ip saddr != 10.213.0.22 drop"),
            "{text}"
        );
        assert!(
            text.contains("oifname \"husk7\" ct state established,related accept"),
            "{text}"
        );
        assert!(!text.contains("daddr != {"), "no allowlist: {text}");
    }

    #[test]
    fn allowlist_admits_its_networks_and_the_dns_servers_only() {
        let egress = Egress {
            allow: vec!["192.0.2.0/24".parse().unwrap()],
            dns: vec![Ipv4Addr::new(198, 51, 100, 53)],
        };
        let text = nat_ruleset("t", &link(), &egress);
        assert!(
            text.contains("iifname \"husk7\" ip daddr != { 192.0.2.0/24, 198.51.100.53 } drop"),
            "{text}"
        );
    }

    #[test]
    fn tables_of_dead_processes_gone_taps_or_our_tap_are_stale() {
        let listing = "table ip filter\ntable ip husk_100_husk1\ntable ip husk_200_husk2\n\
                       table ip husk_300_husk3\ntable ip husk_400_husk4\n";
        let alive = |pid| pid != 100;
        let tap_exists = |tap: &str| tap != "husk2";
        let stale = stale_tables(listing, "husk4", 999, alive, tap_exists);
        assert_eq!(
            stale,
            vec!["husk_100_husk1", "husk_200_husk2", "husk_400_husk4"]
        );
    }

    #[test]
    fn isolation_drops_forwarding_both_ways() {
        let text = isolation_ruleset("t", "husk7");
        assert!(
            text.contains("iifname \"husk7\" drop") && text.contains("oifname \"husk7\" drop"),
            "{text}"
        );
    }
}
