//! Registration time as the registry grows (the scale section's registration series): N
//! containers registered one by one through the API (`POST /v1/containers`, one durable
//! store transaction each), the time of each call recorded. The report compares the first
//! 1000 registrations with the last 1000 (target: at most 1.5x) and gives the median at a
//! few registry sizes. A batch registration of the same size is timed too.
use std::time::Instant;

use anyhow::{Context, Result};
use indicatif::ProgressBar;
use netiso_user::api::AddContainer;
use serde::Serialize;

use crate::env::World;

#[derive(Clone, Debug, Serialize)]
pub struct Registration {
    /// Containers registered one by one.
    pub count: usize,
    /// The API call of each, ms (cgroup creation not included).
    pub per_container_ms: Vec<f64>,
    /// One batch of `batch_count` containers (`POST /v1/containers` with an array), ms.
    pub batch_count: usize,
    pub batch_ms: f64,
}

/// Registers `n` containers one by one, then a batch of `min(n, 10000)`; removes none (the
/// world's teardown does).
pub fn measure(w: &World, n: usize, pb: &ProgressBar) -> Result<Registration> {
    let mut per = Vec::with_capacity(n);
    for i in 0..n {
        if i % 500 == 0 {
            pb.set_message(format!("registration: {i}/{n} containers"));
        }
        // The cgroup is made here, outside the timed call.
        let r = w.container_req(
            &format!("reg{i}"),
            &[&format!("2001:db8:1e::{:x}:{:x}", i >> 16, i & 0xffff)],
            false,
            None,
        )?;
        let t = Instant::now();
        w.api
            .add_container(&r)
            .with_context(|| format!("registering container {i}"))?;
        per.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let batch_count = n.min(10_000);
    pb.set_message(format!("registration: a batch of {batch_count}"));
    let batch: Vec<AddContainer> = (0..batch_count)
        .map(|i| {
            w.container_req(
                &format!("regb{i}"),
                &[&format!("2001:db8:1f::{:x}:{:x}", i >> 16, i & 0xffff)],
                false,
                None,
            )
        })
        .collect::<Result<_>>()?;
    let t = Instant::now();
    w.api.add_containers(&batch).context("batch registration")?;
    let batch_ms = t.elapsed().as_secs_f64() * 1e3;
    Ok(Registration {
        count: n,
        per_container_ms: per,
        batch_count,
        batch_ms,
    })
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s.get(s.len() / 2).copied().unwrap_or(0.0)
}

/// The report's text.
pub fn table(r: &Registration) -> String {
    use std::fmt::Write;
    let v = &r.per_container_ms;
    let mut out = format!(
        "\nRegistration: {} containers one by one through the API (one durable store transaction each)\n",
        r.count
    );
    let window = 1000.min(v.len() / 2).max(1);
    let first = mean(&v[..window.min(v.len())]);
    let last = mean(&v[v.len().saturating_sub(window)..]);
    let _ = writeln!(
        out,
        "  first {window}: {first:.3} ms mean, last {window}: {last:.3} ms mean, ratio {:.2} (target <= 1.5)",
        last / first.max(1e-9)
    );
    let last_at = v.len().saturating_sub(window);
    let points: std::collections::BTreeSet<usize> = [0, 1000, 10_000, last_at]
        .into_iter()
        .filter(|&at| at <= last_at)
        .collect();
    for at in points {
        let end = (at + window).min(v.len());
        let _ = writeln!(
            out,
            "  at {at:>6} registered: median {:.3} ms, mean {:.3} ms (next {} registrations)",
            median(&v[at..end]),
            mean(&v[at..end]),
            end - at
        );
    }
    let _ = writeln!(
        out,
        "  one batch of {}: {:.0} ms ({:.3} ms per container)",
        r.batch_count,
        r.batch_ms,
        r.batch_ms / r.batch_count.max(1) as f64
    );
    out
}
