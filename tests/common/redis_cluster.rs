//! A real Redis Cluster for tests: `redis-server` nodes on loopback ports, each in its own
//! temporary directory, joined by `redis-cli --cluster create`, all stopped when the value is
//! dropped (a failing test included). Every wait is bounded.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisCluster {
    dir: tempfile::TempDir,
    pub ports: Vec<u16>,
    nodes: Vec<Option<Child>>,
    /// How long a primary may be unreachable before its replica takes over (ms).
    node_timeout_ms: u64,
}

/// A node as `CLUSTER NODES` lists it.
struct Node {
    port: u16,
    /// A primary not marked failing.
    primary: bool,
    /// Its slot ranges, first and last included.
    ranges: Vec<(u16, u16)>,
}

/// A port free now, whose cluster-bus port (+10000) is free too.
fn free_port_pair(taken: &[u16]) -> u16 {
    for _ in 0..200 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        if port < 55_000
            && !taken.contains(&port)
            && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok()
        {
            return port;
        }
    }
    panic!("no free port pair for a Redis Cluster node");
}

fn redis_cli(args: &[&str]) -> std::process::Output {
    Command::new("redis-cli")
        .args(args)
        .output()
        .expect("redis-cli runs (install redis-server: ./setup.sh does)")
}

impl RedisCluster {
    /// Starts `n` (at least 3) primaries and joins them into one cluster.
    pub fn start(n: usize) -> Self {
        Self::start_with(n, 0, 5000)
    }

    /// Starts `primaries` (at least 3) primaries with `replicas` replicas each, joined into one
    /// cluster; a primary unreachable for `node_timeout_ms` is failed over to a replica.
    pub fn start_with(primaries: usize, replicas: usize, node_timeout_ms: u64) -> Self {
        assert!(primaries >= 3, "Redis Cluster needs three primaries");
        let n = primaries * (1 + replicas);
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut ports = Vec::new();
        for _ in 0..n {
            ports.push(free_port_pair(&ports));
        }
        let mut cluster = Self {
            dir,
            ports,
            nodes: (0..n).map(|_| None).collect(),
            node_timeout_ms,
        };
        for i in 0..n {
            cluster.start_node(i);
        }
        let addrs: Vec<String> = cluster
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let mut args = vec!["--cluster", "create"];
        args.extend(addrs.iter().map(String::as_str));
        let replicas = replicas.to_string();
        args.extend(["--cluster-replicas", &replicas, "--cluster-yes"]);
        let out = redis_cli(&args);
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        cluster.wait_until_ok();
        cluster
    }

    fn node_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("node{i}"))
    }

    /// Starts node `i` (again, after [`RedisCluster::stop_node`]: its nodes.conf makes it
    /// rejoin with its slots) and waits until it answers.
    pub fn start_node(&mut self, i: usize) {
        let dir = self.node_dir(i);
        std::fs::create_dir_all(&dir).expect("node directory");
        let port = self.ports[i].to_string();
        let node_timeout = self.node_timeout_ms.to_string();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port,
                "--bind",
                "127.0.0.1",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                &node_timeout,
                // Live nodes keep serving their slots while one is down (degraded mode).
                "--cluster-require-full-coverage",
                "no",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
            ])
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts (install it: ./setup.sh does)");
        self.nodes[i] = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while redis_cli(&["-p", &port, "ping"]).stdout != b"PONG\n" {
            assert!(
                Instant::now() < deadline,
                "node {i} did not answer within 10 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Freezes node `i` (SIGSTOP): it accepts connections and answers nothing, as a node
    /// stuck in a long command or a swap storm does.
    pub fn pause_node(&self, i: usize) {
        self.signal(i, "STOP");
    }

    /// Thaws node `i` (SIGCONT).
    pub fn resume_node(&self, i: usize) {
        self.signal(i, "CONT");
    }

    fn signal(&self, i: usize, signal: &str) {
        let pid = self.nodes[i].as_ref().expect("node running").id();
        let ok = Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .expect("kill runs")
            .success();
        assert!(ok, "kill -{signal} {pid}");
    }

    /// Kills node `i` (its data is gone: nothing is saved).
    pub fn stop_node(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].take() {
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits (at most 20 s) until every running node says the cluster is ok.
    pub fn wait_until_ok(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ok = self.ports.iter().enumerate().all(|(i, p)| {
                self.nodes[i].is_none()
                    || String::from_utf8_lossy(
                        &redis_cli(&["-p", &p.to_string(), "cluster", "info"]).stdout,
                    )
                    .contains("cluster_state:ok")
            });
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster was not ok within 20 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `redis://127.0.0.1:P1,127.0.0.1:P2,...`
    pub fn url(&self) -> String {
        let nodes: Vec<String> = self
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis://{}", nodes.join(","))
    }

    /// `CLUSTER NODES` as a running node sees it.
    fn topology(&self) -> Vec<Node> {
        let asked = (0..self.ports.len())
            .find(|&i| self.nodes[i].is_some())
            .expect("a running node");
        let out = redis_cli(&["-p", &self.ports[asked].to_string(), "cluster", "nodes"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                let port = f
                    .get(1)?
                    .split('@')
                    .next()?
                    .rsplit(':')
                    .next()?
                    .parse()
                    .ok()?;
                let primary = f.get(2)?.contains("master") && !f[2].contains("fail");
                let ranges = f[8.min(f.len())..]
                    .iter()
                    .filter(|r| !r.starts_with('['))
                    .filter_map(|r| match r.split_once('-') {
                        Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                        None => r.parse().ok().map(|a| (a, a)),
                    })
                    .collect();
                Some(Node {
                    port,
                    primary,
                    ranges,
                })
            })
            .collect()
    }

    /// The index of the node serving `slot` as a primary now.
    pub fn owner_of(&self, slot: u16) -> usize {
        self.try_owner_of(slot)
            .unwrap_or_else(|| panic!("no primary serves slot {slot}"))
    }

    fn try_owner_of(&self, slot: u16) -> Option<usize> {
        let port = self
            .topology()
            .into_iter()
            .find(|n| n.primary && n.ranges.iter().any(|&(a, b)| (a..=b).contains(&slot)))
            .map(|n| n.port)?;
        self.ports.iter().position(|&p| p == port)
    }

    /// Waits (at most 20 s) until slot `slot` is served by a primary other than `old`.
    pub fn wait_for_failover(&self, slot: u16, old: usize) -> usize {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let owner = self.try_owner_of(slot);
            if let Some(new) = owner.filter(|&n| n != old && self.nodes[n].is_some()) {
                return new;
            }
            assert!(Instant::now() < deadline, "no failover within 20 s");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until every primary's writes reached its replicas (WAIT on each primary).
    pub fn wait_for_replicas(&self, replicas: usize) {
        for (i, port) in self.ports.iter().enumerate() {
            if self.nodes[i].is_none() {
                continue;
            }
            let role = redis_cli(&["-p", &port.to_string(), "role"]);
            if String::from_utf8_lossy(&role.stdout).starts_with("master") {
                // A replica that is still making its first full sync acknowledges nothing yet:
                // ask again, for up to 30 s in all, rather than once.
                let begun = std::time::Instant::now();
                loop {
                    let out = redis_cli(&[
                        "-p",
                        &port.to_string(),
                        "wait",
                        &replicas.to_string(),
                        "1000",
                    ]);
                    let acked: usize = String::from_utf8_lossy(&out.stdout)
                        .trim()
                        .parse()
                        .unwrap_or(0);
                    if acked >= replicas {
                        break;
                    }
                    assert!(
                        begun.elapsed() < std::time::Duration::from_secs(30),
                        "node {i}: {acked} replicas acknowledged after 30 s"
                    );
                    std::thread::sleep(std::time::Duration::from_millis(200));
                }
            }
        }
    }

    /// The slot `CLUSTER KEYSLOT` gives `key`.
    pub fn keyslot(&self, key: &str) -> u16 {
        let out = redis_cli(&["-p", &self.ports[0].to_string(), "cluster", "keyslot", key]);
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("a slot")
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.stop_node(i);
        }
    }
}
