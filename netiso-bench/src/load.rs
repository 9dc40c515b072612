//! The load generator: `netiso-bench server` and `netiso-bench client`.
//!
//! Both modes first move themselves into the network namespace and cgroup they are given,
//! while still single-threaded and before creating any socket (the cgroup a socket is created
//! in decides which eBPF programs govern it).
use std::{
    io::{ErrorKind, Read, Write},
    net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::PathBuf,
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};

use crate::sys;

/// TCP sink for the stream workloads: reads until EOF, then answers the byte count (u64 LE).
pub const PORT_STREAM: u16 = 5201;
/// TCP echo for request/response on long-lived connections.
pub const PORT_RR: u16 = 5202;
/// TCP connect-request-close: one 1-byte exchange per connection, the server closes first.
pub const PORT_CRR: u16 = 5203;
/// UDP echo.
pub const PORT_UDP: u16 = 5204;

#[derive(Args, Debug)]
pub struct ServerArgs {
    /// Network namespace file to enter (e.g. /run/netns/NAME).
    #[arg(long)]
    pub netns: Option<PathBuf>,
    /// cgroup v2 directory to join before binding.
    #[arg(long)]
    pub cgroup: Option<PathBuf>,
    /// Address to bind (a wildcard is rewritten by netiso inside a container).
    #[arg(long)]
    pub bind: IpAddr,
}

/// Enables TCP_NODELAY; errors are irrelevant for the measurement.
fn nodelay(s: &TcpStream) {
    let _ = s.set_nodelay(true);
}

pub fn server(a: ServerArgs) -> Result<()> {
    // SAFETY: prctl with PR_SET_PDEATHSIG only sets a flag on this process.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    if let Some(ns) = &a.netns {
        sys::enter_netns(ns)?;
    }
    if let Some(cg) = &a.cgroup {
        sys::enter_cgroup(cg)?;
    }
    let stream = TcpListener::bind((a.bind, PORT_STREAM)).context("bind stream")?;
    let rr = TcpListener::bind((a.bind, PORT_RR)).context("bind rr")?;
    let crr = Arc::new(TcpListener::bind((a.bind, PORT_CRR)).context("bind crr")?);
    let udp = Arc::new(UdpSocket::bind((a.bind, PORT_UDP)).context("bind udp")?);
    // The address the kernel actually bound (netiso rewrites wildcards): the orchestrator checks it.
    println!("ready {}", rr.local_addr()?.ip());
    std::io::stdout().flush()?;

    thread::spawn(move || {
        for c in stream.incoming().flatten() {
            thread::spawn(move || sink(c));
        }
    });
    thread::spawn(move || {
        for c in rr.incoming().flatten() {
            thread::spawn(move || echo(c));
        }
    });
    for _ in 0..2 {
        let crr = crr.clone();
        thread::spawn(move || loop {
            if let Ok((mut c, _)) = crr.accept() {
                nodelay(&c);
                let mut b = [0u8; 1];
                if c.read_exact(&mut b).is_ok() {
                    let _ = c.write_all(&b);
                }
            }
        });
    }
    for _ in 0..2 {
        let udp = udp.clone();
        thread::spawn(move || {
            let mut b = [0u8; 64];
            loop {
                if let Ok((n, from)) = udp.recv_from(&mut b) {
                    let _ = udp.send_to(&b[..n], from);
                }
            }
        });
    }
    // Run until killed (the orchestrator kills the cgroup; PDEATHSIG covers a crash).
    loop {
        thread::park();
    }
}

fn sink(mut c: TcpStream) {
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        match c.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => total += n as u64,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
    let _ = c.write_all(&total.to_le_bytes());
}

fn echo(mut c: TcpStream) {
    nodelay(&c);
    let mut buf = [0u8; 64];
    loop {
        match c.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if c.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, ValueEnum, Serialize, Deserialize, PartialOrd, Ord,
)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum Workload {
    /// TCP bulk transfer, Gbit/s.
    Stream,
    /// TCP 1-byte request/response on long-lived connections, transactions/s.
    Rr,
    /// TCP connect, 1-byte request/response, close: connections/s.
    Crr,
    /// UDP 1-byte request/response, transactions/s.
    UdpRr,
}

impl Workload {
    pub fn unit(self) -> &'static str {
        match self {
            Workload::Stream => "Gbit/s",
            Workload::Rr | Workload::UdpRr => "trans/s",
            Workload::Crr => "conn/s",
        }
    }
}

#[derive(Args, Debug)]
pub struct ClientArgs {
    #[arg(long)]
    pub netns: Option<PathBuf>,
    #[arg(long)]
    pub cgroup: Option<PathBuf>,
    #[arg(long, value_enum)]
    pub workload: Workload,
    /// Server addresses, comma separated; work is spread round-robin over them.
    #[arg(long, value_delimiter = ',', required = true)]
    pub targets: Vec<IpAddr>,
    /// Parallel flows (threads).
    #[arg(long, default_value_t = 1)]
    pub flows: usize,
    #[arg(long, default_value_t = 1000)]
    pub duration_ms: u64,
    /// What to read at the edges of the measured window (the cost section).
    #[command(flatten)]
    pub probe: crate::cost::ProbeArgs,
}

/// One client run, printed as a JSON line.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClientResult {
    /// Gbit/s for stream, operations per second otherwise.
    pub value: f64,
    pub ops: u64,
    pub secs: f64,
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
    /// UDP requests that got no answer within the timeout.
    pub lost: u64,
    /// CPU, packets and program statistics over the measured window (with `--cpu-cgroups`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<crate::cost::Window>,
}

/// Log-linear latency histogram in nanoseconds (about 1.5 % resolution).
#[derive(Clone)]
pub struct Hist(Vec<u64>);

impl Hist {
    const SUB: u32 = 6;
    pub fn new() -> Hist {
        Hist(vec![0; 64 * (1 << Self::SUB)])
    }
    fn index(v: u64) -> usize {
        if v < (1 << Self::SUB) {
            return v as usize;
        }
        let e = v.ilog2();
        let m = (v >> (e - Self::SUB)) & ((1 << Self::SUB) - 1);
        ((e - Self::SUB + 1) as usize) * (1 << Self::SUB) + m as usize
    }
    fn value(i: usize) -> f64 {
        let sub = 1usize << Self::SUB;
        if i < sub {
            return i as f64;
        }
        let e = (i / sub) as u32 + Self::SUB - 1;
        let m = (i % sub) as u64;
        let lo = ((1u64 << Self::SUB) | m) << (e - Self::SUB);
        lo as f64 + (1u64 << (e - Self::SUB)) as f64 / 2.0
    }
    pub fn record(&mut self, d: Duration) {
        let i = Self::index(d.as_nanos().min(u128::from(u64::MAX)) as u64).min(self.0.len() - 1);
        self.0[i] += 1;
    }
    pub fn merge(&mut self, o: &Hist) {
        for (a, b) in self.0.iter_mut().zip(&o.0) {
            *a += b;
        }
    }
    pub fn quantile_us(&self, q: f64) -> Option<f64> {
        let n: u64 = self.0.iter().sum();
        if n == 0 {
            return None;
        }
        let want = ((n as f64 * q).ceil() as u64).max(1);
        let mut acc = 0;
        for (i, c) in self.0.iter().enumerate() {
            acc += c;
            if acc >= want {
                return Some(Self::value(i) / 1000.0);
            }
        }
        None
    }
}

struct Part {
    ops: u64,
    bytes: u64,
    hist: Hist,
    lost: u64,
    end: Instant,
    /// The flow's long-lived sockets, closed only after the measured window.
    sockets: (Vec<TcpStream>, Vec<UdpSocket>),
}

pub fn client(a: ClientArgs) -> Result<()> {
    if let Some(ns) = &a.netns {
        sys::enter_netns(ns)?;
    }
    if let Some(cg) = &a.cgroup {
        sys::enter_cgroup(cg)?;
    }
    let r = run_client(&a)?;
    println!("{}", serde_json::to_string(&r)?);
    Ok(())
}

fn run_client(a: &ClientArgs) -> Result<ClientResult> {
    let flows = a.flows.max(1);
    let dur = Duration::from_millis(a.duration_ms);
    // Each flow gets its share of the targets (at least one).
    let shares: Vec<Vec<IpAddr>> = (0..flows)
        .map(|f| {
            let mine: Vec<IpAddr> = a.targets.iter().copied().skip(f).step_by(flows).collect();
            if mine.is_empty() {
                vec![a.targets[f % a.targets.len()]]
            } else {
                mine
            }
        })
        .collect();
    // Connections are set up before the clock starts (except for crr, which measures them).
    let barrier = Arc::new(std::sync::Barrier::new(flows + 1));
    let mut handles = Vec::new();
    for targets in shares {
        let w = a.workload;
        let barrier = barrier.clone();
        handles.push(thread::spawn(move || flow(w, targets, dur, barrier)));
    }
    // Two phases: every flow has set up, then the probe reads (outside the window), then go.
    barrier.wait();
    let probe = crate::cost::Probe::start(&a.probe)?;
    barrier.wait();
    let start = Instant::now();
    let mut hist = Hist::new();
    let (mut ops, mut bytes, mut lost) = (0, 0, 0);
    let mut end = start;
    let mut sockets = Vec::new();
    for h in handles {
        let p = h
            .join()
            .map_err(|_| anyhow::anyhow!("client flow panicked"))??;
        ops += p.ops;
        bytes += p.bytes;
        lost += p.lost;
        hist.merge(&p.hist);
        end = end.max(p.end);
        sockets.push(p.sockets);
    }
    let window = probe.map(|p| p.finish(ops, bytes)).transpose()?;
    drop(sockets);
    let secs = end.duration_since(start).as_secs_f64();
    if secs <= 0.0 {
        bail!("no time measured");
    }
    let value = match a.workload {
        Workload::Stream => bytes as f64 * 8.0 / secs / 1e9,
        _ => ops as f64 / secs,
    };
    let lat = a.workload != Workload::Stream;
    Ok(ClientResult {
        value,
        ops,
        secs,
        p50_us: lat.then(|| hist.quantile_us(0.5)).flatten(),
        p99_us: lat.then(|| hist.quantile_us(0.99)).flatten(),
        lost,
        window,
    })
}

fn connect(ip: IpAddr, port: u16) -> Result<TcpStream> {
    let s = TcpStream::connect_timeout(&SocketAddr::new(ip, port), Duration::from_secs(5))
        .with_context(|| format!("connecting to {}", SocketAddr::new(ip, port)))?;
    nodelay(&s);
    Ok(s)
}

fn flow(
    w: Workload,
    targets: Vec<IpAddr>,
    dur: Duration,
    barrier: Arc<std::sync::Barrier>,
) -> Result<Part> {
    let mut hist = Hist::new();
    let (mut ops, mut bytes, mut lost) = (0u64, 0u64, 0u64);
    // Set-up that must not count; the barrier is always reached so that errors surface.
    let setup: Result<(Vec<TcpStream>, Vec<UdpSocket>)> = (|| {
        let mut tcp = Vec::new();
        let mut udp = Vec::new();
        match w {
            Workload::Stream => tcp.push(connect(targets[0], PORT_STREAM)?),
            Workload::Rr => {
                for t in &targets {
                    tcp.push(connect(*t, PORT_RR)?);
                }
            }
            Workload::UdpRr => {
                for t in &targets {
                    let bind: IpAddr = if t.is_ipv4() {
                        [0, 0, 0, 0].into()
                    } else {
                        [0u16; 8].into()
                    };
                    let s = UdpSocket::bind((bind, 0))?;
                    s.connect((*t, PORT_UDP))?;
                    s.set_read_timeout(Some(Duration::from_millis(200)))?;
                    udp.push(s);
                }
            }
            Workload::Crr => {}
        }
        Ok((tcp, udp))
    })();
    barrier.wait(); // set up
    barrier.wait(); // go
    let (mut tcp, udp) = setup?;
    let start = Instant::now();
    let deadline = start + dur;
    let mut b = [0u8; 1];
    match w {
        Workload::Stream => {
            let s = &mut tcp[0];
            let buf = vec![0x5au8; 128 * 1024];
            while Instant::now() < deadline {
                s.write_all(&buf)?;
            }
            s.shutdown(Shutdown::Write)?;
            let mut n = [0u8; 8];
            s.read_exact(&mut n)
                .context("reading the sink's byte count")?;
            bytes = u64::from_le_bytes(n);
            ops = 1;
        }
        Workload::Rr => 'outer: loop {
            for s in &mut tcp {
                let t0 = Instant::now();
                if t0 >= deadline {
                    break 'outer;
                }
                s.write_all(&b)?;
                s.read_exact(&mut b)?;
                hist.record(t0.elapsed());
                ops += 1;
            }
        },
        Workload::Crr => 'outer: loop {
            for t in &targets {
                let t0 = Instant::now();
                if t0 >= deadline {
                    break 'outer;
                }
                let mut s = connect(*t, PORT_CRR)?;
                s.write_all(&b)?;
                s.read_exact(&mut b)?;
                // The server closes first (TIME_WAIT stays on its side); wait for its FIN.
                let _ = s.read(&mut b);
                drop(s);
                hist.record(t0.elapsed());
                ops += 1;
            }
        },
        Workload::UdpRr => 'outer: loop {
            for s in &udp {
                let t0 = Instant::now();
                if t0 >= deadline {
                    break 'outer;
                }
                s.send(&b)?;
                match s.recv(&mut b) {
                    Ok(_) => {
                        hist.record(t0.elapsed());
                        ops += 1;
                    }
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                        lost += 1;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        },
    }
    Ok(Part {
        ops,
        bytes,
        hist,
        lost,
        end: Instant::now(),
        sockets: (tcp, udp),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hist_quantiles_are_close() {
        let mut h = Hist::new();
        for us in 1..=1000u64 {
            h.record(Duration::from_micros(us));
        }
        let p50 = h.quantile_us(0.5).unwrap();
        let p99 = h.quantile_us(0.99).unwrap();
        assert!((p50 - 500.0).abs() < 10.0, "{p50}");
        assert!((p99 - 990.0).abs() < 20.0, "{p99}");
        let mut small = Hist::new();
        small.record(Duration::from_nanos(10));
        assert_eq!(small.quantile_us(0.5), Some(0.01));
    }
}
