//! The test runner of the integration test files (libtest-mimic): a privileged test that
//! cannot run here is reported as ignored, with the reason, and under `CI=true` it fails.
use std::process::Command;

use libtest_mimic::{Arguments, Completion, Failed, Trial};

/// Why privileged tests cannot run here, if they cannot.
pub fn missing_privilege() -> Option<&'static str> {
    if !nix::unistd::geteuid().is_root() {
        Some("not root")
    } else if crate::cgroup2_mount().is_none() {
        Some("no cgroup v2 mount")
    } else if Command::new("ip").arg("-V").output().is_err() {
        Some("no `ip` (iproute2)")
    } else {
        None
    }
}

/// Runs `tests` (name, function) as libtest-mimic trials and exits with their verdict. A test
/// fails by panicking, as with `#[test]`.
pub fn run_privileged(tests: Vec<(&'static str, fn())>) -> ! {
    let args = Arguments::from_args();
    let ci = std::env::var("CI").as_deref() == Ok("true");
    let trials = tests
        .into_iter()
        .map(|(name, test)| {
            Trial::ignorable_test(name, move || match missing_privilege() {
                Some(why) if ci => Err(Failed::from(format!(
                    "privileged test cannot run under CI: {why}"
                ))),
                Some(why) => Ok(Completion::ignored_with(format!(
                    "SKIPPED: needs root, cgroup v2 and iproute2 ({why})"
                ))),
                None => {
                    test();
                    Ok(Completion::Completed)
                }
            })
        })
        .collect();
    libtest_mimic::run(&args, trials).exit()
}

/// The `main` of a privileged integration test file: `privileged_tests![a, b, c];` runs the
/// functions `a`, `b` and `c` as tests (see [`run_privileged`]).
#[macro_export]
macro_rules! privileged_tests {
    ($($test:ident),* $(,)?) => {
        fn main() {
            $crate::run_privileged(vec![$((stringify!($test), $test as fn())),*])
        }
    };
}
