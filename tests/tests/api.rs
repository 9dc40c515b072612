//! The API as an untrusted client sees it: who may connect, what is accepted, how big and
//! how slow a request may be, what every error looks like, and thousands of malformed
//! requests that must neither crash the agent nor change anything.
use std::{
    fs,
    io::{Read, Write},
    os::unix::{fs::PermissionsExt, net::UnixStream, process::CommandExt},
    path::Path,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use netiso_testkit::{
    netiso_bin, probe_last, rawhttp, rawhttp::Answer, wait_until, CliOutput, World,
};
use nix::sys::signal::Signal;

/// Runs the CLI against `w`'s agent as `uid`:`gid` with supplementary `groups`.
fn cli_as(w: &World, uid: u32, gid: u32, groups: &[u32], args: &[&str]) -> CliOutput {
    let groups: Vec<nix::unistd::Gid> = groups
        .iter()
        .map(|g| nix::unistd::Gid::from_raw(*g))
        .collect();
    let mut cmd = Command::new(netiso_bin());
    cmd.arg("--socket")
        .arg(&w.agent.socket)
        .args(args)
        .stdin(Stdio::null());
    // SAFETY: only setgroups, setgid and setuid run between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::setgroups(&groups)?;
            nix::unistd::setgid(nix::unistd::Gid::from_raw(gid))?;
            nix::unistd::setuid(nix::unistd::Uid::from_raw(uid))?;
            Ok(())
        });
    }
    cmd.output().expect("running netiso").into()
}

fn mode_of(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o777
}

const NOBODY: u32 = 65534;

/// Item 5. Contract: the API socket is root's from its creation (0600 even when the agent
/// starts under umask 000), and every connection's credentials are checked: a non-root
/// process is refused even when the socket's mode lets it connect; with --socket-group G,
/// members of G (primary or supplementary group) are admitted, others still refused.
fn api_socket_admits_root_and_socket_group_only() {
    let mut w = World::new("api-cred");
    let _web = w.container("web", &["192.0.2.10"], &[]);
    w.agent.stop(Signal::SIGTERM);
    w.agent.umask = Some(0);
    w.agent.start();
    assert_eq!(
        mode_of(&w.agent.socket),
        0o600,
        "socket mode under umask 000"
    );
    // Opened to everyone by mistake: still only root gets in.
    fs::set_permissions(&w.agent.socket, fs::Permissions::from_mode(0o666)).unwrap();
    let out = cli_as(
        &w,
        NOBODY,
        NOBODY,
        &[],
        &["container", "mode", "web", "audit"],
    );
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("permission denied"), "{}", out.stderr);
    assert_eq!(
        w.agent.client().container("web").unwrap().mode.to_string(),
        "enforce",
        "a refused peer changed a container"
    );
    assert!(w.agent.log_text().contains("refused a connection"));

    let group = 4242;
    w.agent.stop(Signal::SIGTERM);
    w.agent.start_with(&["--socket-group", &group.to_string()]);
    assert_eq!(mode_of(&w.agent.socket), 0o660);
    {
        use std::os::unix::fs::MetadataExt;
        assert_eq!(fs::metadata(&w.agent.socket).unwrap().gid(), group);
    }
    cli_as(&w, NOBODY, group, &[], &["status"]).ok();
    cli_as(&w, NOBODY, NOBODY, &[group], &["status"]).ok();
    fs::set_permissions(&w.agent.socket, fs::Permissions::from_mode(0o666)).unwrap();
    let out = cli_as(&w, NOBODY, NOBODY, &[], &["status"]);
    assert_eq!(out.code, 1, "a non-member got in: {out:?}");
    assert!(out.stderr.contains("permission denied"), "{}", out.stderr);
}

fn send(w: &World, method: &str, path: &str, body: Option<&str>) -> Answer {
    rawhttp::send(&w.agent.socket, method, path, body)
}

#[track_caller]
fn assert_error(a: &Answer, status: u16, needle: &str) {
    assert_eq!(a.status, status, "{a:?}");
    assert!(a.is_json_error(), "not a JSON error: {a:?}");
    assert!(a.body.contains(needle), "{needle:?} not in {}", a.body);
}

/// Item 6. Contract: request bodies with unknown fields are refused (400, naming the field),
/// address lists are bounded and checked fast, sizes are limited (413, 431), every error is
/// JSON (404, 405, query and path errors included), and the state is private to root.
fn api_refuses_unknown_fields_and_bounds_requests() {
    let w = World::new("api-bounds");
    let web = w.container("web", &["192.0.2.10"], &[]);
    let fresh = w.cgroups.child("fresh");
    let add = |extra: &str| {
        format!(
            r#"{{"name":"x","cgroup":"{}","ips":["192.0.2.11"]{extra}}}"#,
            fresh.display()
        )
    };
    let a = send(
        &w,
        "POST",
        "/v1/containers",
        Some(&add(r#","isolate":true"#)),
    );
    assert_error(&a, 400, "unknown field `isolate`");
    let a = send(
        &w,
        "PUT",
        "/v1/containers/web/mode",
        Some(r#"{"mode":"audit","force":1}"#),
    );
    assert_error(&a, 400, "unknown field `force`");
    let a = send(
        &w,
        "POST",
        "/v1/policy",
        Some(r#"{"from":"web","to":"web","action":"allow","why":"x"}"#),
    );
    assert_error(&a, 400, "unknown field `why`");
    let a = send(&w, "GET", "/v1/events?after=1&bogus=2", None);
    assert_error(&a, 400, "unknown field `bogus`");
    assert_eq!(w.agent.client().containers().unwrap().len(), 1);

    // 105 000 addresses: refused at once, naming the limit; the agent stays responsive.
    let many: Vec<String> = (0..105_000u32)
        .map(|i| format!("\"2001:db8:7::{:x}:{:x}\"", i >> 16, i & 0xffff))
        .collect();
    let body = format!(
        r#"{{"name":"x","cgroup":"{}","ips":[{}]}}"#,
        fresh.display(),
        many.join(",")
    );
    let t = Instant::now();
    let a = send(&w, "POST", "/v1/containers", Some(&body));
    let took = t.elapsed();
    assert_error(&a, 507, "--max-addresses-per-container");
    eprintln!("105 000 addresses refused in {took:?}");
    w.agent.client().status().unwrap();
    // A duplicate in a long list is found (sorted, not compared pairwise).
    let mut list: Vec<String> = (0..200u32)
        .map(|i| format!("\"2001:db8:8::{i:x}\""))
        .collect();
    list.push("\"2001:db8:8::7\"".into());
    let body = format!(
        r#"{{"name":"x","cgroup":"{}","ips":[{}]}}"#,
        fresh.display(),
        list.join(",")
    );
    assert_error(
        &send(&w, "POST", "/v1/containers", Some(&body)),
        400,
        "given twice",
    );

    // Sizes.
    let big = format!(r#"{{"name":"{}"}}"#, "x".repeat(5 * 1024 * 1024));
    assert_error(
        &send(&w, "POST", "/v1/containers", Some(&big)),
        413,
        "larger than",
    );
    let long_header = format!(
        "GET /v1/status HTTP/1.1\r\nhost: x\r\nx-long: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let raw = rawhttp::exchange(
        &w.agent.socket,
        long_header.as_bytes(),
        Duration::from_secs(10),
    )
    .unwrap();
    assert_error(&rawhttp::parse(&raw).unwrap(), 431, "larger than");

    // Every error is JSON.
    assert_error(&send(&w, "GET", "/nope", None), 404, "no such API path");
    assert_error(
        &send(&w, "DELETE", "/v1/status", None),
        405,
        "method not allowed",
    );
    assert_error(
        &send(&w, "GET", "/v1/events?after=abc", None),
        400,
        "invalid query",
    );
    assert_error(
        &send(&w, "GET", "/v1/containers/%FF", None),
        400,
        "invalid path",
    );
    assert_error(
        &send(&w, "POST", "/v1/containers", Some("{not json")),
        400,
        "invalid request body",
    );
    let raw = rawhttp::exchange(&w.agent.socket, b"BLAH\r\n\r\n", Duration::from_secs(10)).unwrap();
    assert_error(&rawhttp::parse(&raw).unwrap(), 400, "malformed request");

    // The state is root's alone.
    let dir = &w.agent.state_dir;
    assert_eq!(mode_of(dir), 0o700);
    for f in fs::read_dir(dir).unwrap() {
        let p = f.unwrap().path();
        assert_eq!(mode_of(&p), 0o600, "{}", p.display());
    }
    // Nothing above changed what is enforced.
    assert_eq!(
        probe_last(&w.ns, &web, &["socket tcp4", "bind 192.0.2.11:7000"]).err(),
        "EADDRNOTAVAIL"
    );
}

/// Reads one answer from a connection that is expected to get one within `within`.
fn answer_of(mut s: UnixStream, within: Duration) -> Option<Answer> {
    s.set_read_timeout(Some(within)).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    rawhttp::parse(&out)
}

/// Item 6. Contract: stalled clients are timed out (head 5 s, body 10 s) with a JSON 408,
/// connections beyond the limit get a JSON 503 at once, the API answers again once they are
/// gone, and SIGTERM ends the agent within a few seconds even with stalled clients connected.
fn stalled_clients_are_timed_out_and_never_hold_the_agent() {
    let mut w = World::new("api-stall");
    let t = Instant::now();
    let stalled: Vec<UnixStream> = (0..100)
        .map(|_| {
            let mut s = UnixStream::connect(&w.agent.socket).unwrap();
            s.write_all(b"POST /v1/containers HTTP/1.1\r\nhost: x\r\n")
                .unwrap();
            s
        })
        .collect();
    let answers: Vec<Option<Answer>> = thread::scope(|sc| {
        let handles: Vec<_> = stalled
            .into_iter()
            .map(|s| sc.spawn(move || answer_of(s, Duration::from_secs(20))))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let took = t.elapsed();
    let (mut timed_out, mut busy) = (0, 0);
    for a in &answers {
        let a = a.as_ref().expect("every stalled connection gets an answer");
        assert!(a.is_json_error(), "{a:?}");
        match a.status {
            408 => timed_out += 1,
            503 => busy += 1,
            s => panic!("unexpected {s}: {a:?}"),
        }
    }
    assert!(
        timed_out > 0 && busy > 0 && timed_out + busy == 100,
        "{timed_out} / {busy}"
    );
    assert!(
        took < Duration::from_secs(15),
        "stalled heads held for {took:?}"
    );
    eprintln!(
        "100 stalled heads: {timed_out} timed out (408), {busy} refused (503), all within {took:?}"
    );
    // A body that never comes.
    let mut body_stall = UnixStream::connect(&w.agent.socket).unwrap();
    let _ = body_stall.write_all(b"POST /v1/policy HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"from\"");
    let a = answer_of(body_stall, Duration::from_secs(20)).expect("an answer");
    assert_eq!(a.status, 408, "{a:?}");
    assert!(a.is_json_error());
    w.agent.client().status().unwrap();

    // Shutdown with stalled clients still connected.
    let _held: Vec<UnixStream> = (0..50)
        .map(|_| {
            let mut s = UnixStream::connect(&w.agent.socket).unwrap();
            s.write_all(b"GET /v1/status HTTP/1.1\r\n").unwrap();
            s
        })
        .collect();
    // Once the agent has accepted them (it answers the next request), stop it.
    wait_until("the agent to answer", Duration::from_secs(10), || {
        w.agent.client().status().is_ok()
    });
    let t = Instant::now();
    w.agent.stop(Signal::SIGTERM);
    let took = t.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "SIGTERM took {took:?} with stalled clients"
    );
    eprintln!("SIGTERM with 50 stalled clients: stopped in {took:?}");
    assert!(w.agent.log_text().contains("agent stopped"));
    w.agent.start();
}

/// A small deterministic generator (xorshift64*), so a failing run can be repeated.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len())]
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// A path for `method`: a real route or a twisted one. Mutating methods never name an
/// existing container or interface, so no request can be a valid change.
fn fuzz_path(r: &mut Rng) -> String {
    let long = "x".repeat(300);
    let name = r
        .pick(&[
            "nosuch", "zz-1", "%2e%2e", "..", "a%2Fb", "%FF%FE", "", &long, "web/..", "%00",
        ])
        .to_string();
    let ip = r
        .pick(&[
            "192.0.2.99",
            "not-an-ip",
            "::ffff:1.2.3.4",
            "%",
            "2001:db8::99",
            "",
        ])
        .to_string();
    match r.below(16) {
        0 => "/v1/status".into(),
        1 => "/v1/containers".into(),
        2 => format!("/v1/containers/{name}"),
        3 => format!("/v1/containers/{name}/mode"),
        4 => format!("/v1/containers/{name}/ips"),
        5 => format!("/v1/containers/{name}/ips/{ip}"),
        6 => format!("/v1/ips/{ip}/move"),
        7 => "/v1/policy".into(),
        8 => format!(
            "/v1/events?after={}",
            r.pick(&["1", "-1", "x", "99999999999999999999", "", "1&after=2"])
        ),
        9 => format!("/v1/ifaces/{name}"),
        10 => "/metrics".into(),
        11 => format!(
            "/{}",
            String::from_utf8_lossy(&r.bytes(8)).replace(['\r', '\n', ' '], "_")
        ),
        12 => "/v1/containers//ips".into(),
        13 => "*".into(),
        14 => format!("/v1/containers/{name}?x=%zz"),
        _ => "/v1/ifaces".into(),
    }
}

fn fuzz_body(r: &mut Rng, cgroup: &Path) -> Option<String> {
    let cg = cgroup.display();
    Some(match r.below(14) {
        0 => return None,
        1 => "{".into(),
        2 => "[".repeat(5000),
        3 => r#"{"name": 5}"#.into(),
        // Valid shapes that must be refused: owned address, unknown container, bad values.
        4 => format!(r#"{{"name":"web2","cgroup":"{cg}","ips":["192.0.2.10"]}}"#),
        5 => format!(r#"{{"name":"web2","cgroup":"{cg}","ips":[]}}"#),
        6 => format!(
            r#"[{{"name":"w3","cgroup":"{cg}","ips":["2001:db8::99"]}},{{"name":"w3","cgroup":"{cg}","ips":["2001:db8::98"]}}]"#
        ),
        7 => r#"{"mode":"sideways"}"#.into(),
        8 => r#"{"ip":"not-an-ip"}"#.into(),
        9 => r#"{"from":"nosuch","to":"web","action":"allow"}"#.into(),
        10 => r#"{"from":"web","to":"nosuch"}"#.into(),
        11 => format!(
            r#"{{"name":"web2","cgroup":"{cg}","ips":["192.0.2.77"],"mode":"enforce","extra":[1,2,3]}}"#
        ),
        12 => "1e999999".into(),
        _ => {
            let n = r.below(200);
            String::from_utf8_lossy(&r.bytes(n)).into_owned()
        }
    })
}

fn fuzz_request(r: &mut Rng, cgroup: &Path) -> Vec<u8> {
    let method = *r.pick(&[
        "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "G E T", "get", "\u{0}",
    ]);
    let path = fuzz_path(r);
    let body = fuzz_body(r, cgroup).unwrap_or_default();
    use std::fmt::Write as _;
    let mut head = format!("{method} {path} HTTP/1.1\r\nhost: netiso\r\n");
    let _ = match r.below(10) {
        0 => write!(head, "content-length: {}\r\n", body.len() + 1 + r.below(50)),
        1 => write!(head, "content-length: -1\r\n"),
        2 => write!(head, "transfer-encoding: gzip\r\n"),
        3 => write!(
            head,
            "content-length: {}\r\ncontent-length: 0\r\n",
            body.len()
        ),
        4 => write!(head, "content-type: text/plain\r\n"),
        5 => Ok(()),
        _ => write!(
            head,
            "content-type: application/json\r\ncontent-length: {}\r\n",
            body.len()
        ),
    };
    if r.below(20) == 0 {
        let _ = write!(head, "x-junk: {}\r\n", "j".repeat(r.below(30_000)));
    }
    let mut out = head.into_bytes();
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body.as_bytes());
    if r.below(25) == 0 {
        // Raw garbage instead of a request.
        let n = r.below(400);
        out = r.bytes(n);
    }
    out
}

/// Contract: thousands of malformed requests (random methods, paths, headers and bodies,
/// valid shapes with invalid contents) never get a 5xx, never crash the agent, never
/// change the registry or what the kernel enforces, and every error answer is JSON.
fn malformed_api_requests_change_nothing() {
    let w = World::new("api-fuzz");
    let web = w.container("web", &["192.0.2.10"], &[]);
    let _other = w.container("other", &["192.0.2.11"], &["--isolated"]);
    w.agent.cli(&["policy", "allow", "web", "other"]).ok();
    let fresh = w.cgroups.child("fresh");
    let before = w.agent.state();
    let pid = w.agent.pid();
    let seed = std::env::var("NETISO_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x6e65_7469_736f_2d31_u64);
    eprintln!("fuzz seed {seed} (NETISO_FUZZ_SEED repeats a run)");
    let mut r = Rng(seed);
    let (mut answered, mut closed, mut empty) = (0, 0, 0);
    let t = Instant::now();
    for i in 0..3000 {
        let req = fuzz_request(&mut r, &fresh);
        if req.is_empty() {
            empty += 1;
        }
        let raw = rawhttp::exchange(&w.agent.socket, &req, Duration::from_secs(20)).unwrap();
        if raw.is_empty() {
            closed += 1;
            continue;
        }
        let a = rawhttp::parse(&raw).unwrap_or_else(|| {
            panic!(
                "request {i} ({:?}): not an HTTP answer: {:?}",
                String::from_utf8_lossy(&req[..req.len().min(300)]),
                String::from_utf8_lossy(&raw)
            )
        });
        answered += 1;
        assert!(
            a.status < 500,
            "request {i}: {} for {:?}: {}",
            a.status,
            String::from_utf8_lossy(&req[..req.len().min(300)]),
            a.body
        );
        // HEAD answers carry no body; their headers must still say JSON.
        let head = req.starts_with(b"HEAD ");
        if a.status >= 400 && head {
            assert_eq!(a.header("content-type"), Some("application/json"), "{a:?}");
        } else if a.status >= 400 {
            assert!(
                a.is_json_error(),
                "request {i}: a non-JSON error for {:?}: {a:?}",
                String::from_utf8_lossy(&req[..req.len().min(300)])
            );
        }
    }
    eprintln!(
        "3000 malformed requests in {:?}: {answered} answered, {closed} closed without an answer",
        t.elapsed()
    );
    assert_eq!(closed, empty, "only empty requests go unanswered");
    assert_eq!(w.agent.pid(), pid);
    w.agent.client().status().expect("the agent still answers");
    assert_eq!(w.agent.state(), before, "the registry changed");
    assert_eq!(
        probe_last(&w.ns, &web, &["socket tcp4", "bind 192.0.2.11:7000"]).err(),
        "EADDRNOTAVAIL"
    );
    assert_eq!(
        probe_last(&w.ns, &fresh, &["socket tcp4", "bind 192.0.2.11:7000"]).addr(),
        "192.0.2.11:7000"
    );
}

netiso_testkit::privileged_tests![
    api_socket_admits_root_and_socket_group_only,
    api_refuses_unknown_fields_and_bounds_requests,
    stalled_clients_are_timed_out_and_never_hold_the_agent,
    malformed_api_requests_change_nothing,
];
