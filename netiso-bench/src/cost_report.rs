//! The cost section's text table and charts (see `cost` for what is measured).
use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
};

use anyhow::Result;
use plotters::prelude::*;

use crate::{
    cost::{share_limit, wl_name, Breakdown, CostPath, CostReport, Est, Verdict},
    env::PathKind,
    load::Workload,
    report::{self, TEXT},
};

/// "mean [lo, hi]" with as many decimals as the interval's half width supports (its first
/// significant digit): the interval decides how precise a figure is printed.
pub fn fmt_est(e: &Est) -> String {
    let half = (e.hi - e.lo) / 2.0;
    let d = if half > 0.0 && half.is_finite() {
        (-half.log10().floor()).clamp(0.0, 4.0) as usize
    } else if e.mean.abs() >= 100.0 {
        0
    } else {
        2
    };
    // A value that rounds to zero prints without a sign ("-0" says nothing more than "0").
    let f = |x: f64| {
        let s = format!("{x:.d$}");
        match s.strip_prefix('-') {
            Some(r) if r.bytes().all(|b| b == b'0' || b == b'.') => r.to_owned(),
            _ => s,
        }
    };
    format!("{} [{}, {}]", f(e.mean), f(e.lo), f(e.hi))
}

fn opt(e: Option<&Est>) -> String {
    e.map_or_else(|| "-".into(), fmt_est)
}

fn row_label(b: &Breakdown) -> &'static str {
    b.path.breakdown_label()
}

/// A per-run figure: its interval, or the pooled value when it ran in one round only.
fn per_run(e: Option<&Est>, pooled: f64) -> String {
    e.map_or_else(|| format!("{pooled:.0} (1 round)"), fmt_est)
}

pub fn table(c: &CostReport) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "\nCost: netiso's CPU as the kernel accounts it; {} interleaved rounds of {} ms per path and workload, order rotated each round",
        c.rounds, c.cell_ms
    );
    let _ = writeln!(
        t,
        "  CPU = usage_usec of the client's and the server's cgroups over the measured window; netiso's time = run_time_ns of\n  \
         its programs, timed (BPF_ENABLE_STATS) only in the \"+ bpf_stats\" cells. mean [95% t-interval over rounds]; a ratio\n  \
         is the mean of the per-round paired ratios. netiso = client and server each in an enforcing container; host = a\n  \
         namespace without netiso; no container = client and server under the agent's cgroup root, in no container.\n  \
         Timing floor: the kernel times each run between two sched_clock() reads, so a timed run costs more than an untimed\n  \
         one. In the timed cells a no-op cgroup_skb program of the bench runs on the ingress of client and server and is timed\n  \
         the same way; its ns/run is that cost. \"net of timing\" = netiso's time less the floor's ns/run for each run of\n  \
         netiso's programs, cell by cell (the share divides by the workload's CPU less the same); \"over the floor\" = a\n  \
         program's ns/run minus the floor's in the same cell, paired over rounds. The floor's own time is in no figure."
    );
    let _ = writeln!(
        t,
        "  {}",
        c.method.get("placement").map_or("", String::as_str)
    );
    let _ = writeln!(
        t,
        "  the agent had {} containers registered ({} idle besides the section's own)",
        c.registered_containers, c.idle_containers
    );
    let fmt_sysctl = |v: Option<u32>| v.map_or_else(|| "?".into(), |v| v.to_string());
    let _ = writeln!(
        t,
        "  kernel.bpf_stats_enabled: {} before, {} after (not written by the bench)",
        fmt_sysctl(c.stats.sysctl_before),
        fmt_sysctl(c.stats.sysctl_after)
    );
    if c.stats.off_cells_timed_anyway > 0 {
        let _ = writeln!(
            t,
            "  note: in {} cells without bpf_stats netiso's programs were timed anyway (another process held the statistics on)",
            c.stats.off_cells_timed_anyway
        );
    }
    if let Some(p) = c.ksoftirqd_pct {
        let _ = writeln!(
            t,
            "  ksoftirqd (machine-wide, in no row) ran {p:.1}% as long as the workloads did"
        );
    }
    for w in &c.workloads {
        let unit = &w.unit;
        let _ = writeln!(t, "\n{} (per {unit})", wl_name(w.workload));
        let path_row = |t: &mut String, c: [&str; 4]| {
            let _ = writeln!(t, "  {:<26} {:>26} {:>26} {:>26}", c[0], c[1], c[2], c[3]);
        };
        path_row(
            &mut t,
            ["path", &format!("CPU us/{unit}"), "/ host", "/ veth+bridge"],
        );
        for p in &w.paths {
            path_row(
                &mut t,
                [
                    p.path.label(),
                    &fmt_est(&p.cpu_us_per_op),
                    &opt(p.vs_host.as_ref()),
                    &opt(p.vs_bridge.as_ref()),
                ],
            );
        }
        if let Some(o) = &w.stats_overhead {
            let _ = writeln!(
                t,
                "  timing the programs costs: netiso + bpf_stats / netiso = {}",
                fmt_est(o)
            );
        }
        let per = if unit == "MB" { "MB" } else { "op" };
        // The "net of timing" rows have no last column (and no padding for it).
        let share_row = |t: &mut String, c: [&str; 5], pkts: Option<&str>| {
            let _ = write!(
                t,
                "  {:<14} {:<14} {:>26} {:>26} {:>22}",
                c[0], c[1], c[2], c[3], c[4]
            );
            if let Some(pkts) = pkts {
                let _ = write!(t, " {pkts:>8}");
            }
            t.push('\n');
        };
        share_row(
            &mut t,
            [
                "netiso's",
                "programs",
                &format!("ns/{unit}"),
                "share of CPU %",
                "ns/packet",
            ],
            Some(&format!("pkts/{per}")),
        );
        for b in &w.breakdown {
            share_row(
                &mut t,
                [
                    row_label(b),
                    "raw",
                    &fmt_est(&b.ns_per_op),
                    &fmt_est(&b.share_pct),
                    &fmt_est(&b.ns_per_packet),
                ],
                Some(&format!("{:.1}", b.packets_per_op)),
            );
            share_row(
                &mut t,
                [
                    "",
                    "net of timing",
                    &opt(b.ns_per_op_net.as_ref()),
                    &opt(b.share_net_pct.as_ref()),
                    &opt(b.ns_per_packet_net.as_ref()),
                ],
                None,
            );
        }
        for b in &w.breakdown {
            let _ = writeln!(
                t,
                "  timing floor ({}, the bench's no-op program): {}",
                row_label(b),
                b.floor.as_ref().map_or_else(
                    || "did not run".into(),
                    |f| format!(
                        "{} ns/run, {:.1} runs/{per}",
                        per_run(f.ns_per_run.as_ref(), f.ns_per_run_pooled),
                        f.runs_per_op
                    )
                )
            );
        }
        for b in &w.breakdown {
            if b.programs.is_empty() {
                let _ = writeln!(t, "    {}: no netiso program ran", row_label(b));
                continue;
            }
            let prog_row = |t: &mut String, c: [&str; 5]| {
                let _ = writeln!(
                    t,
                    "    {:<24} {:<18} {:>12} {:>24} {:>26}",
                    c[0], c[1], c[2], c[3], c[4]
                );
            };
            prog_row(
                &mut t,
                [
                    &format!("{}: program", row_label(b)),
                    "kind",
                    &format!("runs/{per}"),
                    "ns/run raw",
                    "ns/run over the floor",
                ],
            );
            for p in &b.programs {
                prog_row(
                    &mut t,
                    [
                        &p.name,
                        &p.kind,
                        &format!("{:.3}", p.runs_per_op),
                        &per_run(p.ns_per_run.as_ref(), p.ns_per_run_pooled),
                        &p.ns_per_run_net_pooled
                            .map_or_else(|| "-".into(), |x| per_run(p.ns_per_run_net.as_ref(), x)),
                    ],
                );
            }
        }
    }
    let _ = writeln!(
        t,
        "\nTargets of issue 11 against the cost section (verdict from the 95% interval):"
    );
    let tw = c.targets.iter().map(|x| x.target.len()).max().unwrap_or(0);
    let sw = c.targets.iter().map(|x| x.scope.len()).max().unwrap_or(0);
    for x in &c.targets {
        let cmp = if x.target.contains("below") {
            "<"
        } else {
            "<="
        };
        let _ = writeln!(
            t,
            "  {:<tw$} {:<sw$} {:>26} {:>9}  {}",
            x.target,
            x.scope,
            x.measured
                .as_ref()
                .map_or_else(|| "not measured".into(), fmt_est),
            format!("{cmp} {}{}", x.limit, x.unit),
            x.verdict.map_or("-", Verdict::label)
        );
    }
    if c.route_failures > 0 {
        let _ = writeln!(
            t,
            "\nCost section: {} cells did not take their route (see route_why in cost.json)",
            c.route_failures
        );
    }
    t
}

fn short(wl: Workload) -> &'static str {
    match wl {
        Workload::Stream => "TCP stream",
        Workload::Rr => "TCP RR",
        Workload::Crr => "TCP CRR",
        Workload::UdpRr => "UDP RR",
    }
}

fn color(p: CostPath) -> RGBColor {
    match p {
        CostPath::Host => report::color(PathKind::Host),
        CostPath::Netiso => report::color(PathKind::Netiso),
        CostPath::VethBridge => report::color(PathKind::VethBridge),
        CostPath::VethRouted => report::color(PathKind::VethRouted),
        CostPath::NetisoStats => RGBColor(0x9e, 0xca, 0xe1),
        CostPath::NoContainerStats => RGBColor(0x2c, 0xa0, 0x2c),
    }
}

/// Labels short enough for the charts' legend.
fn chart_label(p: CostPath) -> &'static str {
    match p {
        CostPath::NetisoStats => "netiso + stats",
        CostPath::NoContainerStats => "no container",
        p => p.label(),
    }
}

fn path_style(p: CostPath) -> (&'static str, RGBColor) {
    (chart_label(p), color(p))
}

/// A breakdown row's share, raw or net of timing.
#[derive(Clone, Copy, PartialEq)]
struct Share {
    path: CostPath,
    net: bool,
}

/// The breakdown rows: "netiso" in netiso's colour, each net figure (net of timing, as the
/// title says) a darker shade.
fn row_style(s: Share) -> (&'static str, RGBColor) {
    match (s.path == CostPath::NetisoStats, s.net) {
        (true, false) => ("netiso, raw", color(CostPath::Netiso)),
        (true, true) => ("netiso, net", RGBColor(0x08, 0x30, 0x6b)),
        (false, false) => ("no container, raw", color(s.path)),
        (false, true) => ("no container, net", RGBColor(0x00, 0x5a, 0x32)),
    }
}

/// Grouped marks with 95% interval whiskers: one group per workload, one mark per series.
/// `bars` draws bars from 0, otherwise points; `refs` are (group index, y) short reference
/// lines (targets), `baseline` a line across the chart.
fn whiskers<K: Copy + PartialEq>(
    title: &str,
    ylabel: &str,
    groups: &[(String, Vec<(K, Est)>)],
    style: fn(K) -> (&'static str, RGBColor),
    bars: bool,
    refs: &[(usize, f64)],
    baseline: Option<f64>,
) -> Result<String> {
    let mut series: Vec<K> = Vec::new();
    for (_, v) in groups {
        for (p, _) in v {
            if !series.contains(p) {
                series.push(*p);
            }
        }
    }
    let mut legend: Vec<(&str, RGBColor)> = series.iter().map(|p| style(*p)).collect();
    if !refs.is_empty() {
        legend.push(("target", BLACK));
    }
    if let Some(b) = baseline {
        if (b - 1.0).abs() < f64::EPSILON {
            legend.push(("host = 1", RGBColor(0x55, 0x55, 0x55)));
        }
    }
    let vals = groups
        .iter()
        .flat_map(|g| g.1.iter().flat_map(|(_, e)| [e.lo, e.hi]))
        .chain(refs.iter().map(|r| r.1))
        .chain(baseline)
        .filter(|x| x.is_finite());
    let (lo, hi) = vals.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
        (a.min(x), b.max(x))
    });
    let (lo, hi) = if lo.is_finite() { (lo, hi) } else { (0.0, 1.0) };
    let pad = ((hi - lo) * 0.1).max(1e-3);
    let y = if bars {
        0.0_f64.min(lo)..hi + pad
    } else {
        lo - pad..hi + pad
    };
    let names: Vec<String> = groups.iter().map(|g| g.0.clone()).collect();
    report::svg(title, &legend, |b| {
        let mut chart = b.build_cartesian_2d(names.nested_coord(|_| 0.0..1.0), y.clone())?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .light_line_style(TRANSPARENT)
            .label_style(TEXT)
            .x_label_formatter(&|v| (*v.category()).clone())
            .y_label_formatter(&|v| {
                format!("{v:.3}")
                    .trim_end_matches('0')
                    .trim_end_matches('.')
                    .to_owned()
            })
            .y_desc(ylabel)
            .draw()?;
        let area = chart.plotting_area();
        if let Some(b) = baseline {
            let first = &names[0];
            let last = &names[names.len() - 1];
            area.draw(&PathElement::new(
                [
                    (NestedValue::Value(first, 0.0), b),
                    (NestedValue::Value(last, 1.0), b),
                ],
                RGBColor(0x55, 0x55, 0x55).stroke_width(1),
            ))?;
        }
        for (gi, (name, v)) in groups.iter().enumerate() {
            let w = 0.8 / v.len().max(1) as f64;
            for (i, (p, e)) in v.iter().enumerate() {
                let at = |x: f64| NestedValue::Value(name, 0.1 + (i as f64 + x) * w);
                let c = style(*p).1;
                if bars {
                    area.draw(&Rectangle::new(
                        [(at(0.1), 0.0), (at(0.8), e.mean)],
                        c.filled(),
                    ))?;
                } else {
                    area.draw(&Circle::new((at(0.45), e.mean), 4, c.filled()))?;
                }
                let ink = if bars { BLACK } else { c };
                area.draw(&PathElement::new(
                    [(at(0.45), e.lo), (at(0.45), e.hi)],
                    ink.stroke_width(2),
                ))?;
                for y in [e.lo, e.hi] {
                    area.draw(&PathElement::new(
                        [(at(0.3), y), (at(0.6), y)],
                        ink.stroke_width(2),
                    ))?;
                }
            }
            for (_, ry) in refs.iter().filter(|r| r.0 == gi) {
                area.draw(&PathElement::new(
                    [
                        (NestedValue::Value(name, 0.02), *ry),
                        (NestedValue::Value(name, 0.98), *ry),
                    ],
                    BLACK.stroke_width(2),
                ))?;
            }
        }
        Ok(())
    })
}

pub fn charts(c: &CostReport, dir: &Path) -> Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    let share: Vec<(String, Vec<(Share, Est)>)> = c
        .workloads
        .iter()
        .map(|w| {
            let mut v = Vec::new();
            for b in &w.breakdown {
                v.push((
                    Share {
                        path: b.path,
                        net: false,
                    },
                    b.share_pct,
                ));
                if let Some(n) = b.share_net_pct {
                    v.push((
                        Share {
                            path: b.path,
                            net: true,
                        },
                        n,
                    ));
                }
            }
            (short(w.workload).to_owned(), v)
        })
        .collect();
    let refs: Vec<(usize, f64)> = c
        .workloads
        .iter()
        .enumerate()
        .map(|(i, w)| (i, share_limit(w.workload)))
        .collect();
    let cpu: Vec<(String, Vec<(CostPath, Est)>)> = c
        .workloads
        .iter()
        .map(|w| {
            (
                short(w.workload).to_owned(),
                w.paths
                    .iter()
                    .filter_map(|p| Some((p.path, p.vs_host?)))
                    .collect(),
            )
        })
        .collect();
    if share.is_empty() || cpu.is_empty() {
        return Ok(written);
    }
    for (name, svg) in [
        (
            "cost_share.svg",
            whiskers(
                "netiso's programs: share of the workload's CPU, raw and net of timing",
                "% of client + server CPU (mean, 95% CI)",
                &share,
                row_style,
                true,
                &refs,
                None,
            )?,
        ),
        (
            "cost_cpu.svg",
            whiskers(
                "CPU per transaction relative to host",
                "paired ratio to host (mean, 95% CI)",
                &cpu,
                path_style,
                false,
                &[],
                Some(1.0),
            )?,
        ),
    ] {
        let p = dir.join(name);
        fs::write(&p, svg)?;
        written.push(p);
    }
    Ok(written)
}

/// `--cost-only`: writes cost.json, cost_table.txt and the charts, prints the table. A full
/// run's results.json and table.txt in the same directory are left as they are.
pub fn write_only(c: &CostReport, out: &Path, started: std::time::Instant) -> Result<()> {
    let json = out.join("cost.json");
    fs::write(&json, serde_json::to_string_pretty(c)?)?;
    let t = table(c);
    fs::write(out.join("cost_table.txt"), &t)?;
    let charts = charts(c, out)?;
    println!("{t}");
    println!(
        "netiso-bench: cost section done in {:.0} s\n  {}\n  {}",
        started.elapsed().as_secs_f64(),
        json.display(),
        charts
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join("\n  ")
    );
    if c.route_failures > 0 {
        anyhow::bail!(
            "{} cost-section cells did not take their expected route (see route_why in {})",
            c.route_failures,
            json.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cost::{self, Plan};

    #[test]
    fn figures_print_as_precisely_as_their_interval() {
        let e = |mean, half| Est {
            mean,
            lo: mean - half,
            hi: mean + half,
            n: 5,
        };
        assert_eq!(fmt_est(&e(1.0345, 0.085)), "1.03 [0.95, 1.12]");
        assert_eq!(fmt_est(&e(1.0123, 0.004)), "1.012 [1.008, 1.016]");
        assert_eq!(fmt_est(&e(28.13, 0.6)), "28.1 [27.5, 28.7]");
        assert_eq!(fmt_est(&e(1520.4, 12.0)), "1520 [1508, 1532]");
        assert_eq!(fmt_est(&e(5.0, 0.0)), "5.00 [5.00, 5.00]");
        assert_eq!(fmt_est(&e(-0.3, 6.0)), "0 [-6, 6]");
        assert_eq!(fmt_est(&e(-0.04, 0.3)), "0.0 [-0.3, 0.3]");
    }

    fn report() -> CostReport {
        let plan = Plan {
            rounds: 4,
            cell_ms: 100,
            pin: true,
            idle_containers: 0,
        };
        cost::summarize(&plan, cost::tests::cells(4), Vec::new(), Some(0), Some(0))
    }

    #[test]
    fn table_has_every_workload_path_and_target() {
        let r = report();
        let t = table(&r);
        for w in cost::WORKLOADS {
            assert!(t.contains(wl_name(w)), "{w:?}");
        }
        for p in CostPath::ALL {
            assert!(t.contains(p.label()), "{p:?}");
        }
        for want in [
            "kernel.bpf_stats_enabled: 0 before, 0 after",
            "timing the programs costs",
            "ingress",
            "cgroup_skb",
            "Targets of issue 11",
            "share of the workload's CPU",
            "missed (interval refutes)",
            "met (interval confirms)",
            "net of timing",
            "timing floor (netiso, the bench's no-op program): ",
            "ns/run over the floor",
            // ingress over the floor, paired: exactly 240.
            "240 [240, 240]",
        ] {
            assert!(t.contains(want), "no {want:?} in\n{t}");
        }
    }

    #[test]
    fn charts_are_svg_with_titles_and_legend() {
        let r = report();
        let dir = std::env::temp_dir().join(format!("netiso-bench-cost-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let written = charts(&r, &dir).unwrap();
        assert_eq!(written.len(), 2);
        for (name, title, want) in [
            (
                "cost_share.svg",
                "netiso's programs: share of the workload's CPU, raw and net of timing",
                &[
                    "netiso, raw",
                    "netiso, net",
                    "no container, net",
                    "target",
                    "TCP CRR",
                ][..],
            ),
            (
                "cost_cpu.svg",
                "CPU per transaction relative to host",
                &[
                    "netiso",
                    "veth+bridge",
                    "veth routed",
                    "netiso + stats",
                    "host = 1",
                    "UDP RR",
                ][..],
            ),
        ] {
            let svg = fs::read_to_string(dir.join(name)).unwrap();
            assert!(svg.contains("</svg>"), "{name}");
            for w in std::iter::once(&title).chain(want) {
                // plotters escapes the apostrophe.
                let esc = w.replace('\'', "&apos;");
                assert!(svg.contains(*w) || svg.contains(&esc), "{name}: no {w:?}");
            }
        }
        fs::remove_dir_all(&dir).unwrap();
    }
}
