//! The text table and the SVG charts (plotters, SVG backend).
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    ops::Range,
    path::{Path, PathBuf},
};

use anyhow::Result;
use plotters::{
    prelude::*,
    style::text_anchor::{HPos, Pos, VPos},
};

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
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let med = if n % 2 == 1 {
        v[n / 2]
    } else {
        f64::midpoint(v[n / 2 - 1], v[n / 2])
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
        format!("{x:.0}")
    } else if x >= 100.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
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
        s.sort_unstable();
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
                let opt = |x: Option<f64>| x.map_or_else(|| "-".into(), num);
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
                    setup.map_or_else(
                        || "-".into(),
                        |s| format!("{:.1}", s.kernel_kib_per_container)
                    ),
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

/// Legend entries for paths.
fn legend(paths: &[PathKind]) -> Vec<(&'static str, RGBColor)> {
    paths.iter().map(|p| (p.label(), color(*p))).collect()
}

pub(crate) fn color(p: PathKind) -> RGBColor {
    match p {
        PathKind::Host => RGBColor(0x55, 0x55, 0x55),
        PathKind::Netiso => RGBColor(0x1f, 0x77, 0xb4),
        PathKind::VethBridge => RGBColor(0xd6, 0x27, 0x28),
        PathKind::VethRouted => RGBColor(0xff, 0x7f, 0x0e),
    }
}

/// (median, min, max).
type Mmm = (f64, f64, f64);

const SIZE: (u32, u32) = (720, 420);
/// Right margin, holding the legend.
const LEGEND_W: u32 = 150;
/// Text sizes as plotters takes them: the SVG gets `size / 1.24` px (12 px labels, 15 px title).
pub(crate) const TEXT: (&str, f64) = ("sans-serif", 12.0 * 1.24);
const TITLE: (&str, f64) = ("sans-serif", 15.0 * 1.24);

/// An SVG image: `title`, the chart that `draw` builds, and a legend on the right.
pub(crate) fn svg(
    title: &str,
    legend: &[(&str, RGBColor)],
    draw: impl FnOnce(&mut ChartBuilder<'_, '_, SVGBackend<'_>>) -> Result<()>,
) -> Result<String> {
    let mut s = String::new();
    {
        let root = SVGBackend::with_string(&mut s, SIZE).into_drawing_area();
        root.fill(&WHITE)?;
        let (plot, side) = root.split_horizontally(SIZE.0 - LEGEND_W);
        for (i, (label, c)) in legend.iter().enumerate() {
            let y = 50 + 20 * i as i32;
            side.draw(&Rectangle::new([(5, y - 6), (17, y + 6)], c.filled()))?;
            let style = TextStyle::from(TEXT.into_font()).pos(Pos::new(HPos::Left, VPos::Center));
            side.draw(&Text::new(*label, (23, y), style))?;
        }
        draw(
            ChartBuilder::on(&plot)
                .caption(title, TITLE)
                .margin(10)
                .x_label_area_size(45)
                .y_label_area_size(75),
        )?;
        root.present()?;
    }
    Ok(s)
}

/// 0 to a little above the largest value.
fn y_range(top: f64) -> Range<f64> {
    0.0..if top > 0.0 && top.is_finite() {
        top * 1.1
    } else {
        1.0
    }
}

/// Grouped bars with min..max whiskers: groups x paths -> (median, min, max).
fn bars(title: &str, ylabel: &str, groups: &[(String, Vec<(PathKind, Mmm)>)]) -> Result<String> {
    let top = groups
        .iter()
        .flat_map(|g| g.1.iter().map(|x| x.1 .2))
        .fold(0.0, f64::max);
    let paths: Vec<PathKind> = PathKind::ALL
        .into_iter()
        .filter(|p| groups.iter().any(|g| g.1.iter().any(|v| v.0 == *p)))
        .collect();
    svg(title, &legend(&paths), |b| {
        // One x category per group, each spanning 0..1 for its bars.
        let mut chart = b.build_cartesian_2d(groups.nested_coord(|_| 0.0..1.0), y_range(top))?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .light_line_style(TRANSPARENT)
            .label_style(TEXT)
            .x_label_formatter(&|v| v.category().0.clone())
            .y_label_formatter(&|v| num(*v))
            .y_desc(ylabel)
            .draw()?;
        let area = chart.plotting_area();
        for g in groups {
            let w = 0.8 / g.1.len() as f64;
            for (i, (p, (m, lo, hi))) in g.1.iter().enumerate() {
                // x within the bar's slot of the group: 0 = left edge, 0.9 = right edge.
                let at = |x| NestedValue::Value(g, 0.1 + (i as f64 + x) * w);
                area.draw(&Rectangle::new(
                    [(at(0.0), 0.0), (at(0.9), *m)],
                    color(*p).filled(),
                ))?;
                area.draw(&PathElement::new([(at(0.45), *lo), (at(0.45), *hi)], BLACK))?;
            }
        }
        Ok(())
    })
}

/// Lines against container count (log x axis): path -> [(n, value)].
fn lines(
    title: &str,
    ylabel: &str,
    series: &BTreeMap<PathKind, Vec<(usize, f64)>>,
) -> Result<String> {
    let top = series.values().flatten().map(|x| x.1).fold(0.0, f64::max);
    let xmax = series
        .values()
        .flatten()
        .map(|x| x.0)
        .max()
        .unwrap_or(10)
        .max(10) as f64;
    let decades = std::iter::successors(Some(1.0), |d| Some(d * 10.0))
        .take_while(|d| *d <= xmax * 1.01)
        .collect();
    let paths: Vec<PathKind> = series.keys().copied().collect();
    svg(title, &legend(&paths), |b| {
        let mut chart = b.build_cartesian_2d(
            (1.0..xmax).log_scale().with_key_points(decades),
            y_range(top),
        )?;
        chart
            .configure_mesh()
            .light_line_style(TRANSPARENT)
            .label_style(TEXT)
            .x_label_formatter(&|x| format!("{x}"))
            .y_label_formatter(&|v| num(*v))
            .x_desc("containers (log scale)")
            .y_desc(ylabel)
            .draw()?;
        for (p, pts) in series {
            let pts = pts.iter().map(|(n, v)| ((*n).max(1) as f64, *v));
            let style = color(*p).filled().stroke_width(2);
            chart.draw_series(LineSeries::new(pts, style).point_size(3))?;
        }
        Ok(())
    })
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
        )?,
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
        )?,
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
        )?,
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
            )?,
        )?;
        write(
            "scale_memory.svg",
            lines("Kernel memory per container", "KiB per container", &mem)?,
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
            write(name, lines(title, unit, &series)?)?;
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{bench::Route, bench::Setup, load::ClientResult};

    fn sample(
        section: &'static str,
        scale: usize,
        path: PathKind,
        wl: Workload,
        flows: usize,
        rep: usize,
    ) -> Sample {
        let v = (1 + path as usize) as f64 * (1.0 + rep as f64 / 10.0) * (scale as f64).ln_1p();
        Sample {
            section,
            scale,
            path,
            workload: wl,
            flows,
            rep,
            unit: wl.unit(),
            result: ClientResult {
                value: 10.0 + v,
                ops: 1000,
                secs: 1.0,
                p50_us: (wl != Workload::Stream).then_some(20.0 + v),
                p99_us: (wl != Workload::Stream).then_some(80.0 + v),
                lost: 0,
                window: None,
            },
            route: Route {
                lo_packets: 0,
                target_veth_packets: 0,
                other_packets: 0,
                ok: true,
                why: String::new(),
            },
        }
    }

    /// Every path in the main matrix; the scale groups at 1 and 100 containers, netiso also at 1000.
    fn output() -> Output {
        let mut samples = Vec::new();
        let mut setup = Vec::new();
        for path in PathKind::ALL {
            for (wl, flows) in [
                (Workload::Stream, 1),
                (Workload::Stream, 4),
                (Workload::Rr, 1),
                (Workload::Crr, 1),
                (Workload::UdpRr, 1),
            ] {
                for rep in 0..3 {
                    samples.push(sample("main", 1, path, wl, flows, rep));
                }
            }
            let scales: &[usize] = if path == PathKind::Netiso {
                &[1, 100, 1000]
            } else {
                &[1, 100]
            };
            for &n in scales {
                for (wl, flows) in [
                    (Workload::Stream, 4),
                    (Workload::Rr, 1),
                    (Workload::Crr, 1),
                    (Workload::UdpRr, 1),
                ] {
                    samples.push(sample("scale", n, path, wl, flows, 0));
                }
                setup.push(Setup {
                    path,
                    scale: n,
                    per_container_ms: vec![1.0 + path as usize as f64; n],
                    total_s: 0.1,
                    kernel_kib_per_container: 300.0 * path as usize as f64,
                    bpf_map_kib_per_container: None,
                });
            }
        }
        Output {
            meta: serde_json::json!({ "reps": 3, "duration_ms": 300, "spread": 4 }),
            samples,
            setup,
            crosscheck: Vec::new(),
            route_failures: 0,
        }
    }

    /// The contents of the SVG's <text> elements.
    fn texts(svg: &str) -> Vec<String> {
        svg.split("<text")
            .skip(1)
            .filter_map(|t| t.split_once('>')?.1.split_once("</text>"))
            .map(|(text, _)| text.trim().to_string())
            .collect()
    }

    #[test]
    fn charts_are_svg_with_titles_axes_and_legend() {
        let o = output();
        let dir = std::env::temp_dir().join(format!("netiso-bench-report-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let written = charts(&o, &dir).unwrap();
        let labels: Vec<&str> = PathKind::ALL.iter().map(|p| p.label()).collect();
        let expect: [(&str, &str, &[&str]); 9] = [
            (
                "throughput.svg",
                "TCP stream throughput (median, min..max)",
                &["Gbit/s", "1 flow", "4 flows"],
            ),
            (
                "latency.svg",
                "1-byte request/response latency",
                &["microseconds", "TCP p50", "TCP p99", "UDP p50", "UDP p99"],
            ),
            (
                "rates.svg",
                "Transaction and connection rates",
                &[
                    "per second",
                    "TCP RR trans/s",
                    "TCP CRR conn/s",
                    "UDP RR trans/s",
                ],
            ),
            (
                "scale_setup.svg",
                "Time to create one container (median)",
                &[
                    "ms per container",
                    "containers (log scale)",
                    "1",
                    "10",
                    "100",
                    "1000",
                ],
            ),
            (
                "scale_memory.svg",
                "Kernel memory per container",
                &["KiB per container", "containers (log scale)"],
            ),
            (
                "scale_stream.svg",
                "TCP stream, 4 flows, against container count",
                &["Gbit/s"],
            ),
            (
                "scale_rr.svg",
                "TCP 1-byte request/response against container count",
                &["transactions/s"],
            ),
            (
                "scale_crr.svg",
                "TCP connection rate against container count",
                &["connections/s"],
            ),
            (
                "scale_udp.svg",
                "UDP 1-byte request/response against container count",
                &["transactions/s"],
            ),
        ];
        assert_eq!(written.len(), expect.len(), "{written:?}");
        for (name, title, axes) in expect {
            let path = dir.join(name);
            assert!(written.contains(&path), "{name} not written");
            let svg = fs::read_to_string(&path).unwrap();
            assert!(
                svg.starts_with("<svg") || svg.starts_with("<?xml"),
                "{name}"
            );
            assert!(svg.contains("</svg>"), "{name}");
            let t = texts(&svg);
            for want in [title].iter().chain(axes).chain(&labels) {
                assert!(
                    t.iter().any(|x| x == want),
                    "{name}: no text {want:?} in {t:?}"
                );
            }
        }
        // The colours per path are kept.
        let svg = fs::read_to_string(dir.join("throughput.svg")).unwrap();
        for c in ["#555555", "#1F77B4", "#D62728", "#FF7F0E"] {
            assert!(svg.to_uppercase().contains(c), "colour {c}");
        }
        assert!(table(&o).contains("veth+bridge"));
        fs::remove_dir_all(&dir).unwrap();
    }
}
