//! The text table and the hand-written SVG charts.
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
};

use anyhow::Result;

use crate::{
    bench::{Output, Sample},
    env::PathKind,
    load::Workload,
};

/// Median, min and max of a non-empty set.
pub fn stats(v: &[f64]) -> Option<(f64, f64, f64)> {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    let med = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some((med, v[0], v[n - 1]))
}

fn pick<'a>(
    o: &'a Output,
    section: &str,
    scale: usize,
    path: PathKind,
    wl: Workload,
    flows: usize,
) -> Vec<&'a Sample> {
    o.samples
        .iter()
        .filter(|s| {
            s.section == section
                && s.scale == scale
                && s.path == path
                && s.workload == wl
                && s.flows == flows
        })
        .collect()
}

fn med_of(v: &[&Sample], f: impl Fn(&Sample) -> Option<f64>) -> Option<(f64, f64, f64)> {
    stats(&v.iter().filter_map(|s| f(s)).collect::<Vec<_>>())
}

fn wl_label(wl: Workload, flows: usize) -> String {
    match wl {
        Workload::Stream => format!(
            "TCP stream, {flows} flow{}",
            if flows > 1 { "s" } else { "" }
        ),
        Workload::Rr => "TCP request/response 1 B".into(),
        Workload::Crr => "TCP connect/request/close".into(),
        Workload::UdpRr => "UDP request/response 1 B".into(),
    }
}

fn num(x: f64) -> String {
    if x >= 1e5 {
        format!("{:.0}", x)
    } else if x >= 100.0 {
        format!("{:.1}", x)
    } else {
        format!("{:.2}", x)
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.3}", a / b),
        _ => "-".into(),
    }
}

fn lat(v: &[&Sample]) -> String {
    match (
        med_of(v, |s| s.result.p50_us),
        med_of(v, |s| s.result.p99_us),
    ) {
        (Some(a), Some(b)) => format!("{:.1}/{:.1}", a.0, b.0),
        _ => "-".into(),
    }
}

pub fn table(o: &Output) -> String {
    let mut t = String::new();
    let reps = o.meta["reps"].as_u64().unwrap_or(0);
    let _ = writeln!(
        t,
        "\nMain matrix: 1 container per path, IPv4, {reps} repetition(s) of {} ms, interleaved; median [min..max]",
        o.meta["duration_ms"]
    );
    let _ = writeln!(
        t,
        "{:<27} {:<12} {:>12} {:>25} {:>8} {:>8} {:>14}",
        "workload", "path", "median", "[min..max]", "/host", "/bridge", "p50/p99 us"
    );
    let mut keys: Vec<(Workload, usize)> = o
        .samples
        .iter()
        .filter(|s| s.section == "main")
        .map(|s| (s.workload, s.flows))
        .collect();
    keys.sort();
    keys.dedup();
    for (wl, flows) in keys {
        let host = med_of(&pick(o, "main", 1, PathKind::Host, wl, flows), |s| {
            Some(s.result.value)
        })
        .map(|x| x.0);
        let br = med_of(&pick(o, "main", 1, PathKind::VethBridge, wl, flows), |s| {
            Some(s.result.value)
        })
        .map(|x| x.0);
        for p in PathKind::ALL {
            let v = pick(o, "main", 1, p, wl, flows);
            let Some((m, lo, hi)) = med_of(&v, |s| Some(s.result.value)) else {
                continue;
            };
            let _ = writeln!(
                t,
                "{:<27} {:<12} {:>12} {:>25} {:>8} {:>8} {:>14}",
                format!("{} ({})", wl_label(wl, flows), wl.unit()),
                p.label(),
                num(m),
                format!("[{}..{}]", num(lo), num(hi)),
                ratio(Some(m), host),
                ratio(Some(m), br),
                if wl == Workload::Stream {
                    "-".into()
                } else {
                    lat(&v)
                },
            );
        }
    }
    if !o.crosscheck.is_empty() {
        let _ = writeln!(t, "\nCross-check (one run per path):");
        for c in &o.crosscheck {
            let _ = writeln!(
                t,
                "  {:<9} {:<30} {:<12} {:>10} {}",
                c.tool,
                c.metric,
                c.path.label(),
                num(c.value),
                c.unit
            );
        }
    }
    let scales: Vec<usize> = {
        let mut s: Vec<usize> = o.setup.iter().map(|s| s.scale).collect();
        s.sort();
        s.dedup();
        s
    };
    if !scales.is_empty() {
        let _ = writeln!(
            t,
            "\nScale: N containers per path (IPv6), traffic spread over {} of them; setup = median ms per container [max], \
             kmem = kernel KiB per container (meminfo Slab+Percpu+KernelStack+PageTables+VmallocUsed delta / N); medians",
            o.meta["spread"]
        );
        let _ = writeln!(
            t,
            "{:>6} {:<12} {:>16} {:>9} {:>11} {:>11} {:>11} {:>10} {:>11} {:>8}",
            "N",
            "path",
            "setup ms",
            "kmem KiB",
            "stream4 G",
            "rr trans/s",
            "rr p50 us",
            "crr conn/s",
            "udp trans/s",
            "rr/host"
        );
        for n in scales {
            let host_rr = med_of(&pick(o, "scale", n, PathKind::Host, Workload::Rr, 1), |s| {
                Some(s.result.value)
            })
            .map(|x| x.0);
            for p in PathKind::ALL {
                let setup = o.setup.iter().find(|s| s.scale == n && s.path == p);
                let val = |wl, f| {
                    med_of(&pick(o, "scale", n, p, wl, f), |s| Some(s.result.value)).map(|x| x.0)
                };
                let rr = val(Workload::Rr, 1);
                if rr.is_none() && setup.is_none() {
                    continue;
                }
                let opt = |x: Option<f64>| x.map(num).unwrap_or_else(|| "-".into());
                let _ = writeln!(
                    t,
                    "{:>6} {:<12} {:>16} {:>9} {:>11} {:>11} {:>11} {:>10} {:>11} {:>8}",
                    n,
                    p.label(),
                    setup
                        .and_then(|s| stats(&s.per_container_ms).map(|(m, _, hi)| format!(
                            "{} [{}]",
                            num(m),
                            num(hi)
                        )))
                        .unwrap_or_else(|| "-".into()),
                    setup
                        .map(|s| format!("{:.1}", s.kernel_kib_per_container))
                        .unwrap_or_else(|| "-".into()),
                    opt(val(Workload::Stream, 4)),
                    opt(rr),
                    opt(med_of(&pick(o, "scale", n, p, Workload::Rr, 1), |s| s
                        .result
                        .p50_us)
                    .map(|x| x.0)),
                    opt(val(Workload::Crr, 1)),
                    opt(val(Workload::UdpRr, 1)),
                    ratio(rr, host_rr),
                );
            }
        }
    }
    let _ = writeln!(
        t,
        "\nRoute checks: {} of {} cells failed",
        o.route_failures,
        o.samples.len()
    );
    t
}

fn color(p: PathKind) -> &'static str {
    match p {
        PathKind::Host => "#555555",
        PathKind::Netiso => "#1f77b4",
        PathKind::VethBridge => "#d62728",
        PathKind::VethRouted => "#ff7f0e",
    }
}

const W: f64 = 720.0;
const H: f64 = 420.0;
const ML: f64 = 80.0;
const MR: f64 = 150.0;
const MT: f64 = 40.0;
const MB: f64 = 60.0;

fn svg_head(title: &str, ylabel: &str) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">{}</text>\n\
         <text transform=\"translate(16,{}) rotate(-90)\" text-anchor=\"middle\">{}</text>\n",
        W / 2.0,
        esc(title),
        (MT + H - MB) / 2.0,
        esc(ylabel)
    )
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn legend(s: &mut String, paths: &[PathKind]) {
    for (i, p) in paths.iter().enumerate() {
        let y = MT + 10.0 + i as f64 * 20.0;
        let x = W - MR + 15.0;
        let _ = writeln!(
            s,
            "<rect x=\"{x}\" y=\"{}\" width=\"12\" height=\"12\" fill=\"{}\"/><text x=\"{}\" y=\"{}\">{}</text>",
            y - 10.0,
            color(*p),
            x + 18.0,
            y,
            esc(p.label())
        );
    }
}

/// A "nice" upper bound and tick step for 0..max.
fn nice(max: f64) -> (f64, f64) {
    let max = if max > 0.0 && max.is_finite() {
        max
    } else {
        1.0
    };
    let raw = max / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    ((max / step).ceil() * step, step)
}

fn y_axis(s: &mut String, top: f64) -> f64 {
    let (ymax, step) = nice(top);
    let mut v = 0.0;
    while v <= ymax + step / 2.0 {
        let y = H - MB - v / ymax * (H - MT - MB);
        let _ = writeln!(
            s,
            "<line x1=\"{ML}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            W - MR,
            ML - 6.0,
            y + 4.0,
            num(v)
        );
        v += step;
    }
    ymax
}

/// (median, min, max).
type Mmm = (f64, f64, f64);

/// Grouped bars with min..max whiskers: groups x paths -> (median, min, max).
fn bars(title: &str, ylabel: &str, groups: &[(String, Vec<(PathKind, Mmm)>)]) -> String {
    let mut s = svg_head(title, ylabel);
    let top = groups
        .iter()
        .flat_map(|g| g.1.iter().map(|x| x.1 .2))
        .fold(0.0, f64::max);
    let ymax = y_axis(&mut s, top);
    let gw = (W - ML - MR) / groups.len().max(1) as f64;
    let mut paths = Vec::new();
    for (gi, (label, vals)) in groups.iter().enumerate() {
        let x0 = ML + gi as f64 * gw;
        let bw = gw * 0.8 / vals.len().max(1) as f64;
        for (bi, (p, (m, lo, hi))) in vals.iter().enumerate() {
            if !paths.contains(p) {
                paths.push(*p);
            }
            let x = x0 + gw * 0.1 + bi as f64 * bw;
            let yv = |v: f64| H - MB - v / ymax * (H - MT - MB);
            let _ = writeln!(
                s,
                "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\"><title>{}: {}</title></rect>",
                yv(*m),
                bw * 0.9,
                (H - MB - yv(*m)).max(0.0),
                color(*p),
                esc(p.label()),
                num(*m)
            );
            let cx = x + bw * 0.45;
            let _ = writeln!(
                s,
                "<line x1=\"{cx:.1}\" x2=\"{cx:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"black\"/>",
                yv(*lo),
                yv(*hi)
            );
        }
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            x0 + gw / 2.0,
            H - MB + 18.0,
            esc(label)
        );
    }
    legend(&mut s, &paths);
    s.push_str("</svg>\n");
    s
}

/// Lines against container count (log x axis): path -> [(n, value)].
fn lines(title: &str, ylabel: &str, series: &BTreeMap<PathKind, Vec<(usize, f64)>>) -> String {
    let mut s = svg_head(title, ylabel);
    let top = series.values().flatten().map(|x| x.1).fold(0.0, f64::max);
    let ymax = y_axis(&mut s, top);
    let xmax = series
        .values()
        .flatten()
        .map(|x| x.0)
        .max()
        .unwrap_or(10)
        .max(10) as f64;
    let lx = |n: usize| ML + ((n.max(1) as f64).log10() / xmax.log10()) * (W - ML - MR);
    let yv = |v: f64| H - MB - v / ymax * (H - MT - MB);
    let mut d = 1usize;
    while d as f64 <= xmax * 1.01 {
        let _ = writeln!(
            s,
            "<line x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{MT}\" y2=\"{}\" stroke=\"#eee\"/><text x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\">{d}</text>",
            H - MB,
            H - MB + 18.0,
            x = lx(d)
        );
        d *= 10;
    }
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">containers (log scale)</text>",
        (ML + W - MR) / 2.0,
        H - 15.0
    );
    for (p, pts) in series {
        let pts: Vec<String> = pts
            .iter()
            .map(|(n, v)| format!("{:.1},{:.1}", lx(*n), yv(*v)))
            .collect();
        let _ = writeln!(
            s,
            "<polyline points=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"2\"/>",
            pts.join(" "),
            color(*p)
        );
        for pt in &pts {
            let (x, y) = pt.split_once(',').unwrap();
            let _ = writeln!(
                s,
                "<circle cx=\"{x}\" cy=\"{y}\" r=\"3.5\" fill=\"{}\"/>",
                color(*p)
            );
        }
    }
    legend(&mut s, &series.keys().copied().collect::<Vec<_>>());
    s.push_str("</svg>\n");
    s
}

pub fn charts(o: &Output, dir: &Path) -> Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    let mut write = |name: &str, svg: String| -> Result<()> {
        let p = dir.join(name);
        fs::write(&p, svg)?;
        written.push(p);
        Ok(())
    };
    let group = |label: String, wl: Workload, flows: usize, f: &dyn Fn(&Sample) -> Option<f64>| {
        let vals = PathKind::ALL
            .iter()
            .filter_map(|p| med_of(&pick(o, "main", 1, *p, wl, flows), f).map(|x| (*p, x)))
            .collect::<Vec<_>>();
        (label, vals)
    };
    let value = |s: &Sample| Some(s.result.value);
    write(
        "throughput.svg",
        bars(
            "TCP stream throughput (median, min..max)",
            "Gbit/s",
            &[
                group("1 flow".into(), Workload::Stream, 1, &value),
                group("4 flows".into(), Workload::Stream, 4, &value),
            ],
        ),
    )?;
    write(
        "latency.svg",
        bars(
            "1-byte request/response latency",
            "microseconds",
            &[
                group("TCP p50".into(), Workload::Rr, 1, &|s| s.result.p50_us),
                group("TCP p99".into(), Workload::Rr, 1, &|s| s.result.p99_us),
                group("UDP p50".into(), Workload::UdpRr, 1, &|s| s.result.p50_us),
                group("UDP p99".into(), Workload::UdpRr, 1, &|s| s.result.p99_us),
            ],
        ),
    )?;
    write(
        "rates.svg",
        bars(
            "Transaction and connection rates",
            "per second",
            &[
                group("TCP RR trans/s".into(), Workload::Rr, 1, &value),
                group("TCP CRR conn/s".into(), Workload::Crr, 1, &value),
                group("UDP RR trans/s".into(), Workload::UdpRr, 1, &value),
            ],
        ),
    )?;
    let mut setup: BTreeMap<PathKind, Vec<(usize, f64)>> = BTreeMap::new();
    let mut mem: BTreeMap<PathKind, Vec<(usize, f64)>> = BTreeMap::new();
    for s in &o.setup {
        if let Some((m, _, _)) = stats(&s.per_container_ms) {
            setup.entry(s.path).or_default().push((s.scale, m));
        }
        mem.entry(s.path)
            .or_default()
            .push((s.scale, s.kernel_kib_per_container.max(0.0)));
    }
    for v in setup.values_mut().chain(mem.values_mut()) {
        v.sort_by_key(|x| x.0);
    }
    if !setup.is_empty() {
        write(
            "scale_setup.svg",
            lines(
                "Time to create one container (median)",
                "ms per container",
                &setup,
            ),
        )?;
        write(
            "scale_memory.svg",
            lines("Kernel memory per container", "KiB per container", &mem),
        )?;
    }
    for (name, title, wl, flows, unit) in [
        (
            "scale_stream.svg",
            "TCP stream, 4 flows, against container count",
            Workload::Stream,
            4,
            "Gbit/s",
        ),
        (
            "scale_rr.svg",
            "TCP 1-byte request/response against container count",
            Workload::Rr,
            1,
            "transactions/s",
        ),
        (
            "scale_crr.svg",
            "TCP connection rate against container count",
            Workload::Crr,
            1,
            "connections/s",
        ),
        (
            "scale_udp.svg",
            "UDP 1-byte request/response against container count",
            Workload::UdpRr,
            1,
            "transactions/s",
        ),
    ] {
        let mut series: BTreeMap<PathKind, Vec<(usize, f64)>> = BTreeMap::new();
        for s in o
            .samples
            .iter()
            .filter(|s| s.section == "scale" && s.workload == wl && s.flows == flows)
        {
            let e = series.entry(s.path).or_default();
            if !e.iter().any(|x| x.0 == s.scale) {
                let v = med_of(&pick(o, "scale", s.scale, s.path, wl, flows), |x| {
                    Some(x.result.value)
                });
                if let Some((m, _, _)) = v {
                    e.push((s.scale, m));
                }
            }
        }
        for v in series.values_mut() {
            v.sort_by_key(|x| x.0);
        }
        if !series.is_empty() {
            write(name, lines(title, unit, &series))?;
        }
    }
    Ok(written)
}
