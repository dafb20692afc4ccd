//! Network namespaces, so one node can be cut off from the others while clients still reach it.
//!
//! [`Netns::create`] gives each node its own Linux network namespace, joined to a bridge in the
//! root namespace through a veth pair:
//!
//! ```text
//!   root namespace (the test process)          namespace rnt-<pid>-<k>-<id>
//!   bridge rntb<pid><k>  10.A.B.254/24  ──┬── veth rntv<pid><k><id> ═══ eth0  10.A.B.<id>/24
//!                                         ├── ...                          (node <id> binds here)
//! ```
//!
//! Each node listens on, and advertises, its own address; the test process reaches every node
//! through the bridge. Nodes reach each other through the bridge too, so a fault can be put on
//! the path between two nodes without touching the path from the test process.
//!
//! **Isolating** node N ([`Netns::isolate`]) points, in N's namespace, the neighbour (ARP)
//! entry of every other node's address at a MAC address that no port owns, and in every other
//! node's namespace the entry for N's address likewise. Frames between N and the others then
//! leave with a destination nobody accepts and are dropped on the wire: silently, as in a real
//! partition, with no error to either sender. New connections time out and existing ones stall
//! until their keepalives or deadlines give up. Healing deletes the entries, and ARP finds the
//! real addresses again. (A `blackhole` route would be simpler, but the kernel answers a local
//! sender's packet to a blackhole route with `EINVAL` at once, which is a fast, visible
//! failure, not a partition; `tc` and `iptables` are not available everywhere the tests run.)
//!
//! Names and subnets are unique per [`Netns`]: names carry the creating process's pid and a
//! per-process counter, and the subnet is chosen under a lock file among the `/24`s of
//! `10.64.0.0/10` that no route or address of the root namespace overlaps. Everything is
//! removed on drop (also while a test panics); leftovers of a process that died without
//! dropping (SIGKILL) are removed by the next [`Netns::create`], which deletes only names with
//! this module's prefix whose pid is no longer alive.
//!
//! Needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN) and iproute2's `ip`; without them
//! [`Netns::create`] fails with an error that says so.
//!
//! **Bridged traffic and a host firewall.** Where `br_netfilter` passes bridged frames to
//! iptables (`net.bridge.bridge-nf-call-iptables = 1`) and the FORWARD policy is DROP (what a
//! Docker engine sets up), frames between two nodes on the bridge are dropped by the host's
//! firewall. [`Netns::create`] then inserts one rule accepting forwarding within its own
//! bridge (`-i B -o B`), and drop removes it; stale rules of dead processes go with their
//! bridges. The rule concerns only the bridge's own ports, so isolation (by neighbour
//! entries, above) is unaffected.

use std::collections::BTreeSet;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};

/// The first characters of every name this module creates (namespaces, bridges, veths), and
/// the only names its stale-leftover cleanup ever deletes.
pub const NAME_PREFIX: &str = "rnt";

/// The MAC address isolated peers are pointed at: locally administered, unicast, and owned by
/// no interface, so the bridge floods frames for it and every port drops them.
const DEAD_MAC: &str = "02:00:00:de:ad:00";

/// The pool subnets are picked from: 10.64.0.0/10, as `/24`s (16384 of them).
const POOL_FIRST_OCTET: u8 = 10;
const POOL_SECOND_OCTET_MIN: u8 = 64;
const POOL_SUBNETS: u32 = 64 * 256;

/// The bridge's host number in the subnet (nodes are 1..=253).
const BRIDGE_HOST: u8 = 254;

/// Where `ip netns add` puts its namespace handles.
const NETNS_DIR: &str = "/run/netns";

/// Per-process counter, so clusters created by parallel tests of one process get distinct names.
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// One node's namespace.
#[derive(Debug)]
struct NsNode {
    id: u64,
    ns: String,
    veth: String,
    addr: Ipv4Addr,
    created: bool,
}

/// A set of network namespaces, one per node, on one bridge. See the module docs.
#[derive(Debug)]
pub struct Netns {
    ip: PathBuf,
    bridge: String,
    bridge_created: bool,
    /// Whether an iptables rule lets forwarding within the bridge through (see the module docs).
    forward_rule: bool,
    subnet: [u8; 3],
    nodes: Vec<NsNode>,
    isolated: BTreeSet<u64>,
}

impl Netns {
    /// Creates namespaces for nodes `1..=n` and the bridge joining them.
    pub fn create(n: usize) -> anyhow::Result<Self> {
        assert!((1..=(BRIDGE_HOST as usize - 1)).contains(&n), "1 to 253 nodes, not {n}");
        let ip = ip_binary()?;
        if !rustix::process::geteuid().is_root() {
            bail!(
                "the netns mode of the testkit needs root (CAP_NET_ADMIN to create namespaces, \
                 veths and a bridge); this process runs as uid {}",
                rustix::process::geteuid().as_raw()
            );
        }
        let pid = std::process::id();
        let k = COUNTER.fetch_add(1, Ordering::Relaxed) & 0xff;
        let tag = format!("{pid:06x}{k:02x}");
        let mut net = Netns {
            bridge: format!("{NAME_PREFIX}b{tag}"),
            bridge_created: false,
            forward_rule: false,
            subnet: [0; 3],
            nodes: Vec::new(),
            isolated: BTreeSet::new(),
            ip,
        };
        {
            // Cleanup and the choice of a subnet are serialized across processes; the lock is
            // released once the bridge holds its address, which is what the next chooser sees.
            let _lock = lock_file()?;
            cleanup_stale(&net.ip);
            net.subnet = pick_subnet(&net.ip, pid, k)?;
            net.run(&["link", "add", &net.bridge, "type", "bridge"]).context(
                "the netns mode of the testkit could not create a bridge (it needs root and a kernel \
                 with bridge and veth support)",
            )?;
            net.bridge_created = true;
            let cidr = format!("{}/24", net.bridge_addr());
            net.run(&["addr", "add", &cidr, "dev", &net.bridge])?;
            net.run(&["link", "set", &net.bridge, "up"])?;
            net.forward_rule = allow_bridge_forwarding(&net.bridge)?;
        }
        for id in 1..=n as u64 {
            let [a, b, c] = net.subnet;
            net.nodes.push(NsNode {
                id,
                ns: format!("{NAME_PREFIX}-{pid}-{k}-{id}"),
                veth: format!("{NAME_PREFIX}v{tag}{id:02x}"),
                addr: Ipv4Addr::new(a, b, c, id as u8),
                created: false,
            });
            let i = net.nodes.len() - 1;
            let (ns, veth) = (net.nodes[i].ns.clone(), net.nodes[i].veth.clone());
            net.run(&["netns", "add", &ns]).with_context(|| format!("creating network namespace {ns}"))?;
            net.nodes[i].created = true;
            net.run(&["link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns])?;
            net.run(&["link", "set", &veth, "master", &net.bridge, "up"])?;
            let cidr = format!("{}/24", net.nodes[i].addr);
            net.run(&["-n", &ns, "link", "set", "lo", "up"])?;
            net.run(&["-n", &ns, "addr", "add", &cidr, "dev", "eth0"])?;
            net.run(&["-n", &ns, "link", "set", "eth0", "up"])?;
        }
        Ok(net)
    }

    /// The node ids, `1..=n`.
    pub fn ids(&self) -> Vec<u64> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    fn node(&self, id: u64) -> &NsNode {
        self.nodes.iter().find(|n| n.id == id).unwrap_or_else(|| panic!("no node {id} in the netns set"))
    }

    /// Node `id`'s address (`10.A.B.<id>`).
    pub fn addr(&self, id: u64) -> Ipv4Addr {
        self.node(id).addr
    }

    /// The bridge's address in the root namespace (`10.A.B.254`).
    pub fn bridge_addr(&self) -> Ipv4Addr {
        let [a, b, c] = self.subnet;
        Ipv4Addr::new(a, b, c, BRIDGE_HOST)
    }

    /// The name of node `id`'s namespace (for `ip netns exec`).
    pub fn namespace(&self, id: u64) -> &str {
        &self.node(id).ns
    }

    /// The bridge's name.
    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// The root-side veth of node `id`.
    pub fn veth(&self, id: u64) -> &str {
        &self.node(id).veth
    }

    /// A command that runs `program` inside node `id`'s namespace. `ip netns exec` execs the
    /// program, so the child's pid is the program's.
    pub fn command(&self, id: u64, program: &Path) -> Command {
        let mut cmd = Command::new(&self.ip);
        cmd.args(["netns", "exec", self.namespace(id)]).arg(program);
        cmd
    }

    /// The nodes isolated now.
    pub fn isolated(&self) -> &BTreeSet<u64> {
        &self.isolated
    }

    /// Cuts node `id` off from every other node (not from the root namespace). Idempotent.
    pub fn isolate(&mut self, id: u64) -> anyhow::Result<()> {
        let _ = self.node(id);
        let before = self.cut_pairs();
        self.isolated.insert(id);
        self.apply(&before)
    }

    /// Reconnects node `id` to every node that is not itself isolated. Idempotent.
    pub fn heal(&mut self, id: u64) -> anyhow::Result<()> {
        let _ = self.node(id);
        let before = self.cut_pairs();
        self.isolated.remove(&id);
        self.apply(&before)
    }

    /// Reconnects every node.
    pub fn heal_all(&mut self) -> anyhow::Result<()> {
        let before = self.cut_pairs();
        self.isolated.clear();
        self.apply(&before)
    }

    /// The unordered pairs of nodes that cannot talk: any pair with an isolated member.
    fn cut_pairs(&self) -> BTreeSet<(u64, u64)> {
        let ids = self.ids();
        let mut pairs = BTreeSet::new();
        for &a in &ids {
            for &b in ids.iter().filter(|&&b| b > a) {
                if self.isolated.contains(&a) || self.isolated.contains(&b) {
                    pairs.insert((a, b));
                }
            }
        }
        pairs
    }

    /// Brings the neighbour entries from the cut set `before` to the current one.
    fn apply(&self, before: &BTreeSet<(u64, u64)>) -> anyhow::Result<()> {
        let after = self.cut_pairs();
        for &(a, b) in after.difference(before) {
            for (from, to) in [(a, b), (b, a)] {
                let (ns, addr) = (self.namespace(from), self.addr(to).to_string());
                self.run(&[
                    "-n",
                    ns,
                    "neigh",
                    "replace",
                    &addr,
                    "lladdr",
                    DEAD_MAC,
                    "dev",
                    "eth0",
                    "nud",
                    "permanent",
                ])
                .with_context(|| format!("cutting node {from} off from node {to}"))?;
            }
        }
        for &(a, b) in before.difference(&after) {
            for (from, to) in [(a, b), (b, a)] {
                let (ns, addr) = (self.namespace(from), self.addr(to).to_string());
                self.run(&["-n", ns, "neigh", "del", &addr, "dev", "eth0"])
                    .with_context(|| format!("reconnecting node {from} to node {to}"))?;
            }
        }
        Ok(())
    }

    /// Binds a TCP listener inside node `id`'s namespace (the socket stays in that namespace;
    /// the caller's thread does not move).
    pub fn bind_in(&self, id: u64, addr: SocketAddr) -> anyhow::Result<TcpListener> {
        self.in_namespace(id, move || TcpListener::bind(addr).with_context(|| format!("binding {addr}")))
    }

    /// Connects from inside node `id`'s namespace, within `timeout`.
    pub fn connect_from(&self, id: u64, to: SocketAddr, timeout: Duration) -> anyhow::Result<TcpStream> {
        self.in_namespace(id, move || {
            TcpStream::connect_timeout(&to, timeout).with_context(|| format!("connecting to {to}"))
        })
    }

    /// Runs `f` on a fresh thread moved into node `id`'s network namespace. Sockets keep the
    /// namespace they were created in, so what `f` creates can be used from any thread.
    fn in_namespace<T: Send + 'static>(
        &self,
        id: u64,
        f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        let path = Path::new(NETNS_DIR).join(self.namespace(id));
        std::thread::spawn(move || {
            let handle = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
            rustix::thread::move_into_link_name_space(
                handle.as_fd(),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .with_context(|| format!("entering {}", path.display()))?;
            f()
        })
        .join()
        .map_err(|_| anyhow!("the thread in node {id}'s namespace panicked"))?
    }

    /// Runs `ip <args>`, failing with its stderr.
    fn run(&self, args: &[&str]) -> anyhow::Result<()> {
        run_ip(&self.ip, args)
    }
}

impl Drop for Netns {
    /// Deletes the namespaces, veths and bridge. Processes still inside a namespace keep it
    /// alive until they exit: stop them first ([`crate::Cluster`] does).
    fn drop(&mut self) {
        for node in &self.nodes {
            // Deleting the root side deletes the pair; the namespace then holds only `lo`.
            let _ = run_ip(&self.ip, &["link", "del", &node.veth]);
            if node.created
                && let Err(e) = run_ip(&self.ip, &["netns", "del", &node.ns])
            {
                eprintln!("testkit: could not delete network namespace {}: {e:#}", node.ns);
            }
        }
        if self.bridge_created
            && let Err(e) = run_ip(&self.ip, &["link", "del", &self.bridge])
        {
            eprintln!("testkit: could not delete bridge {}: {e:#}", self.bridge);
        }
        if self.forward_rule
            && let Err(e) = iptables(&forward_rule("-D", &self.bridge))
        {
            eprintln!("testkit: could not remove the forwarding rule of bridge {}: {e:#}", self.bridge);
        }
    }
}

/// The iptables arguments that insert (`-I`) or delete (`-D`) the rule accepting forwarding
/// within `bridge`.
fn forward_rule(op: &str, bridge: &str) -> Vec<String> {
    [op, "FORWARD", "-i", bridge, "-o", bridge, "-j", "ACCEPT"].iter().map(|s| (*s).to_owned()).collect()
}

fn iptables(args: &[String]) -> anyhow::Result<()> {
    let out = Command::new("iptables").args(args).output().context("running iptables")?;
    if !out.status.success() {
        bail!("iptables {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Lets frames between the bridge's ports through a host firewall that would drop them (see
/// the module docs). Returns whether a rule was inserted: none is needed when bridged frames
/// skip iptables or the FORWARD policy accepts. Fails when one is needed and cannot be made.
fn allow_bridge_forwarding(bridge: &str) -> anyhow::Result<bool> {
    let filtered = std::fs::read_to_string("/proc/sys/net/bridge/bridge-nf-call-iptables")
        .is_ok_and(|v| v.trim() == "1");
    if !filtered {
        return Ok(false);
    }
    let policy = Command::new("iptables").args(["-S", "FORWARD"]).output();
    let drops = match &policy {
        Ok(out) if out.status.success() => {
            String::from_utf8_lossy(&out.stdout).lines().any(|l| l == "-P FORWARD DROP")
        }
        // br_netfilter is on but iptables cannot be asked: assume nothing blocks.
        _ => false,
    };
    if !drops {
        return Ok(false);
    }
    iptables(&forward_rule("-I", bridge)).with_context(|| {
        format!(
            "bridged traffic is filtered by iptables with a FORWARD policy of DROP (a Docker engine does              this), and the testkit could not let bridge {bridge}'s traffic through"
        )
    })?;
    Ok(true)
}

/// Removes forwarding rules of this module's bridges whose creating process is gone.
fn cleanup_stale_forward_rules(stale: impl Fn(&str) -> bool) {
    let Ok(out) = Command::new("iptables").args(["-S", "FORWARD"]).output() else { return };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // "-A FORWARD -i rntb00ab1200 -o rntb00ab1200 -j ACCEPT"
        let words: Vec<&str> = line.split_whitespace().collect();
        if let ["-A", "FORWARD", "-i", i, "-o", o, "-j", "ACCEPT"] = words.as_slice()
            && i == o
            && stale(i)
        {
            match iptables(&forward_rule("-D", i)) {
                Ok(()) => eprintln!("testkit: removed the stale forwarding rule of bridge {i}"),
                Err(e) => {
                    eprintln!("testkit: could not remove the stale forwarding rule of bridge {i}: {e:#}")
                }
            }
        }
    }
}

/// Finds iproute2's `ip` on `PATH` or in the sbin directories (a non-login root shell may not
/// have them on its path).
fn ip_binary() -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join("ip"))
        .find(|p| p.is_file())
        .ok_or_else(|| anyhow!("the netns mode of the testkit needs iproute2's `ip`, found neither on PATH nor in /usr/sbin, /sbin"))
}

fn run_ip(ip: &Path, args: &[&str]) -> anyhow::Result<()> {
    ip_output(ip, args).map(drop)
}

fn ip_output(ip: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(ip).args(args).output().with_context(|| format!("running {}", ip.display()))?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// An exclusive lock on a file shared by every process using this module, held while the
/// returned file is open.
fn lock_file() -> anyhow::Result<File> {
    let path = std::env::temp_dir().join("runnel-testkit-netns.lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
        .with_context(|| format!("locking {}", path.display()))?;
    Ok(file)
}

/// The pid a name of this module embeds: `rnt-<pid>-<k>-<id>` for namespaces, and
/// `rnt<b|v><pid, 6 hex><k, 2 hex>...` for links. `None` for any other name.
pub fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(NAME_PREFIX)?;
    if let Some(ns) = rest.strip_prefix('-') {
        let mut parts = ns.split('-');
        let pid = parts.next()?.parse().ok()?;
        let (k, id) = (parts.next()?, parts.next()?);
        (k.parse::<u32>().is_ok() && id.parse::<u64>().is_ok() && parts.next().is_none()).then_some(pid)
    } else {
        let kind = rest.chars().next()?;
        let hex = rest.get(1..)?;
        let digits = match kind {
            'b' => 8,
            'v' => 10,
            _ => return None,
        };
        if hex.len() != digits || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        u32::from_str_radix(&hex[..6], 16).ok()
    }
}

fn alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

/// Deletes the namespaces and links of this module whose creating process is gone (see
/// [`cleanup_stale`]); [`Netns::create`] does this itself.
pub fn cleanup_stale_leftovers() -> anyhow::Result<()> {
    let ip = ip_binary()?;
    let _lock = lock_file()?;
    cleanup_stale(&ip);
    Ok(())
}

/// Deletes the namespaces and links of this module whose creating process is gone. Names
/// without the prefix, or whose pid is alive (possibly reused by another process: then they
/// stay, which is safe), are left alone. Best effort: a failure is reported, not fatal.
fn cleanup_stale(ip: &Path) {
    let stale = |name: &str| owner_pid(name).is_some_and(|pid| !alive(pid));
    cleanup_stale_forward_rules(stale);
    if let Ok(list) = ip_output(ip, &["-o", "link", "show"]) {
        for line in list.lines() {
            // "12: rntv00ab1200@if11: <BROADCAST,..." (the part after @ names the peer).
            let Some(name) = line.split(": ").nth(1).map(|n| n.split('@').next().unwrap_or(n)) else {
                continue;
            };
            if stale(name) {
                match run_ip(ip, &["link", "del", name]) {
                    Ok(()) => eprintln!("testkit: removed stale link {name}"),
                    Err(e) => eprintln!("testkit: could not remove stale link {name}: {e:#}"),
                }
            }
        }
    }
    if let Ok(list) = ip_output(ip, &["netns", "list"]) {
        for line in list.lines() {
            // "rnt-123-0-1 (id: 4)" or just the name.
            let Some(name) = line.split_whitespace().next() else { continue };
            if stale(name) {
                match run_ip(ip, &["netns", "del", name]) {
                    Ok(()) => eprintln!("testkit: removed stale network namespace {name}"),
                    Err(e) => eprintln!("testkit: could not remove stale network namespace {name}: {e:#}"),
                }
            }
        }
    }
}

/// An IPv4 prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Prefix {
    addr: u32,
    len: u32,
}

impl Prefix {
    fn parse(s: &str) -> Option<Self> {
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, l.parse().ok()?),
            None => (s, 32),
        };
        let addr: Ipv4Addr = addr.parse().ok()?;
        (len <= 32).then_some(Prefix { addr: u32::from(addr), len })
    }

    fn mask(&self) -> u32 {
        if self.len == 0 { 0 } else { u32::MAX << (32 - self.len) }
    }

    fn overlaps(&self, other: &Prefix) -> bool {
        let mask = self.mask() & other.mask();
        self.addr & mask == other.addr & mask
    }
}

/// Every IPv4 prefix the root namespace uses (addresses and route destinations), except the
/// default route, which overlaps everything and routes nothing a subnet of ours needs.
fn used_prefixes(ip: &Path) -> anyhow::Result<Vec<Prefix>> {
    let mut used = Vec::new();
    for line in ip_output(ip, &["-4", "-o", "addr", "show"])?.lines() {
        // "4: eth0    inet 192.0.2.2/24 brd ..."
        let mut words = line.split_whitespace();
        if words.any(|w| w == "inet")
            && let Some(p) = words.next().and_then(Prefix::parse)
        {
            used.push(p);
        }
    }
    for line in ip_output(ip, &["-4", "route", "show", "table", "all"])?.lines() {
        // "10.1.2.0/24 dev br0 ...", "local 10.1.2.254 dev ...", "broadcast ...", "blackhole ...".
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or_default();
        let dest = if Prefix::parse(first).is_some() { first } else { words.next().unwrap_or_default() };
        if let Some(p) = Prefix::parse(dest).filter(|p| p.len > 0) {
            used.push(p);
        }
    }
    Ok(used)
}

/// The `/24` a new set gets: the first free one of the pool, probing from a point derived from
/// the pid and counter so concurrent processes start apart.
fn pick_subnet(ip: &Path, pid: u32, k: u32) -> anyhow::Result<[u8; 3]> {
    let used = used_prefixes(ip)?;
    let start = pid.wrapping_mul(2_654_435_761).wrapping_add(k.wrapping_mul(40_503)) % POOL_SUBNETS;
    for i in 0..POOL_SUBNETS {
        let n = (start + i) % POOL_SUBNETS;
        let subnet = [POOL_FIRST_OCTET, POOL_SECOND_OCTET_MIN + (n / 256) as u8, (n % 256) as u8];
        let prefix = Prefix { addr: u32::from(Ipv4Addr::new(subnet[0], subnet[1], subnet[2], 0)), len: 24 };
        if !used.iter().any(|u| u.overlaps(&prefix)) {
            return Ok(subnet);
        }
    }
    bail!("no free /24 in 10.64.0.0/10 for the testkit's network namespaces")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pids_are_read_only_from_names_of_this_module() {
        assert_eq!(owner_pid("rnt-1234-0-1"), Some(1234));
        assert_eq!(owner_pid("rntb0004d2ff"), Some(1234));
        assert_eq!(owner_pid("rntv0004d20003"), Some(1234));
        for other in [
            "eth0",
            "rnt",
            "rnt-x-0-1",
            "rnt-1-0",
            "rnt-1-0-1-2",
            "rntb0004d2",
            "rntq0004d2ff",
            "rntv0004d2zz03",
            "br0",
        ] {
            assert_eq!(owner_pid(other), None, "{other}");
        }
        // Every name fits IFNAMSIZ (15 characters).
        assert_eq!(format!("{NAME_PREFIX}v{:06x}{:02x}{:02x}", 4_194_304u32, 255, 253).len(), 14);
    }

    #[test]
    fn prefixes_overlap_when_one_contains_the_other() {
        let p = |s| Prefix::parse(s).unwrap();
        assert!(p("10.64.3.0/24").overlaps(&p("10.64.3.7")));
        assert!(p("10.64.3.0/24").overlaps(&p("10.0.0.0/8")));
        assert!(!p("10.64.3.0/24").overlaps(&p("10.64.4.0/24")));
        assert!(!p("10.64.3.0/24").overlaps(&p("192.0.2.0/24")));
        assert_eq!(Prefix::parse("default"), None);
    }

    /// Every namespace and link name `ip` lists now.
    fn names() -> (String, String) {
        let ip = ip_binary().unwrap();
        (ip_output(&ip, &["netns", "list"]).unwrap(), ip_output(&ip, &["-o", "link", "show"]).unwrap())
    }

    fn port(net: &Netns, id: u64) -> SocketAddr {
        SocketAddr::from((net.addr(id), 7000))
    }

    const SHORT: Duration = Duration::from_millis(300);

    #[test]
    fn nodes_reach_each_other_and_the_root_until_one_is_isolated() {
        let mut net = Netns::create(3).unwrap();
        assert_ne!(net.addr(1), net.addr(2));
        assert_eq!(net.addr(1).octets()[..3], net.bridge_addr().octets()[..3]);
        let listeners: Vec<TcpListener> =
            net.ids().iter().map(|&id| net.bind_in(id, port(&net, id)).unwrap()).collect();
        for l in &listeners {
            l.set_nonblocking(false).unwrap();
        }
        let reach = |net: &Netns, from: Option<u64>, to: u64| match from {
            Some(id) => net.connect_from(id, port(net, to), SHORT).is_ok(),
            None => TcpStream::connect_timeout(&port(net, to), SHORT).is_ok(),
        };
        // Accepted connections pile up in the backlogs; nobody needs to accept them.
        for to in [1, 2, 3] {
            assert!(reach(&net, None, to), "root -> {to}");
            for from in [1, 2, 3] {
                assert!(reach(&net, Some(from), to), "{from} -> {to}");
            }
        }
        // An established connection from 1 to 2, to see that isolation stalls it silently.
        let mut stream = net.connect_from(1, port(&net, 2), SHORT).unwrap();
        let (mut accepted, _) = loop {
            let (s, peer) = listeners[1].accept().unwrap();
            if peer.ip() == std::net::IpAddr::V4(net.addr(1))
                && peer.port() == stream.local_addr().unwrap().port()
            {
                break (s, peer);
            }
        };
        accepted.set_read_timeout(Some(SHORT)).unwrap();

        net.isolate(1).unwrap();
        assert!(!reach(&net, Some(1), 2) && !reach(&net, Some(1), 3), "1 is cut off");
        assert!(!reach(&net, Some(2), 1) && !reach(&net, Some(3), 1), "the others cannot reach 1");
        assert!(reach(&net, Some(2), 3) && reach(&net, Some(3), 2), "the others still talk");
        assert!(reach(&net, None, 1) && reach(&net, None, 2), "the root reaches everyone");
        // The sender sees no error: the bytes are dropped on the wire.
        use std::io::{Read as _, Write as _};
        stream.write_all(b"ping").unwrap();
        let mut buf = [0u8; 4];
        let err = accepted.read_exact(&mut buf).unwrap_err();
        assert!(matches!(err.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut), "{err}");

        // Isolating 2 as well, then healing 1: 1 and 3 talk again, 2 stays cut off.
        net.isolate(2).unwrap();
        net.heal(1).unwrap();
        assert!(reach(&net, Some(1), 3) && reach(&net, Some(3), 1));
        assert!(!reach(&net, Some(1), 2) && !reach(&net, Some(3), 2));
        net.heal_all().unwrap();
        assert!(net.isolated().is_empty());
        assert!(reach(&net, Some(1), 2) && reach(&net, Some(2), 1) && reach(&net, Some(2), 3));
        // The stalled connection delivers once healed (TCP retransmits).
        accepted.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        accepted.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping");
    }

    #[test]
    fn everything_is_removed_on_drop_even_on_panic() {
        let net = Netns::create(2).unwrap();
        let mine = [
            net.namespace(1).to_owned(),
            net.namespace(2).to_owned(),
            net.veth(1).to_owned(),
            net.bridge().to_owned(),
        ];
        for name in &mine {
            assert!(name.len() <= 15 || name.starts_with("rnt-"), "{name} is too long for an interface");
            assert_eq!(owner_pid(name), Some(std::process::id()), "{name}");
        }
        let (ns, links) = names();
        assert!(ns.contains(&mine[0]) && ns.contains(&mine[1]), "{ns}");
        assert!(links.contains(&mine[2]) && links.contains(&mine[3]), "{links}");
        drop(net);
        let (ns, links) = names();
        for name in &mine {
            assert!(!ns.contains(name.as_str()) && !links.contains(name.as_str()), "{name} left behind");
        }
        let rules =
            Command::new("iptables").args(["-S", "FORWARD"]).output().map(|o| o.stdout).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&rules).contains(mine[3].as_str()),
            "the bridge's forwarding rule left behind"
        );

        let (tx, rx) = std::sync::mpsc::channel();
        let result = std::panic::catch_unwind(move || {
            let net = Netns::create(1).unwrap();
            tx.send((net.namespace(1).to_owned(), net.bridge().to_owned())).unwrap();
            panic!("a failing test");
        });
        assert!(result.is_err());
        let (namespace, bridge) = rx.recv().unwrap();
        let (ns, links) = names();
        assert!(!ns.contains(&namespace) && !links.contains(&bridge), "left behind after a panic");
    }

    #[test]
    fn stale_leftovers_of_dead_processes_are_removed_and_nothing_else() {
        let ip = ip_binary().unwrap();
        // A pid nobody has now.
        let dead = (2..32768u32).rev().find(|&p| !alive(p)).unwrap();
        let stale_ns = format!("{NAME_PREFIX}-{dead}-0-1");
        let stale_bridge = format!("{NAME_PREFIX}b{dead:06x}00");
        // Names of the same shape but not ours, and a live set.
        let foreign_ns = format!("rnx-{dead}-0-1");
        run_ip(&ip, &["netns", "add", &stale_ns]).unwrap();
        run_ip(&ip, &["netns", "add", &foreign_ns]).unwrap();
        run_ip(&ip, &["link", "add", &stale_bridge, "type", "bridge"]).unwrap();
        let live = Netns::create(1).unwrap();

        cleanup_stale_leftovers().unwrap();
        let (ns, links) = names();
        assert!(!ns.contains(&stale_ns), "{ns}");
        assert!(!links.contains(&stale_bridge), "{links}");
        assert!(ns.contains(&foreign_ns), "a name without our prefix stays: {ns}");
        assert!(ns.contains(live.namespace(1)) && links.contains(live.bridge()), "a live set stays");
        run_ip(&ip, &["netns", "del", &foreign_ns]).unwrap();
    }
}
