//! The kernel netiso needs, checked when the agent starts, so that an old kernel gets one
//! clear sentence instead of a verifier or attach error.

/// The oldest kernel netiso runs on, and what sets that floor.
pub const MINIMUM: (u32, u32) = (6, 6);
const NEEDS: &str = "TCX links for the interface programs (6.6), bpf_set_retval in cgroup \
                     programs (5.18), BPF_LINK_UPDATE of cgroup links (5.7)";

/// `major.minor` of a kernel release string such as "6.18.0-1-amd64".
pub fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(['.', '-', '+']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Whether `release` is new enough; the error says what is missing and why.
pub fn check_release(release: &str) -> Result<(), String> {
    match parse_release(release) {
        Some(v) if v >= MINIMUM => Ok(()),
        Some(_) => Err(format!(
            "netiso needs Linux {}.{} or newer ({NEEDS}); this kernel is {release}",
            MINIMUM.0, MINIMUM.1
        )),
        None => Err(format!(
            "cannot read the kernel version from {release:?}; netiso needs Linux {}.{} or newer",
            MINIMUM.0, MINIMUM.1
        )),
    }
}

/// Checks the running kernel.
pub fn check() -> anyhow::Result<()> {
    let uts = nix::sys::utsname::uname()?;
    let release = uts.release().to_string_lossy();
    check_release(&release).map_err(anyhow::Error::msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_are_compared_by_major_and_minor() {
        assert_eq!(parse_release("6.18.0-1-amd64"), Some((6, 18)));
        assert_eq!(parse_release("6.6"), Some((6, 6)));
        assert!(check_release("6.6.0").is_ok());
        assert!(check_release("7.0.1+").is_ok());
        let old = check_release("6.5.13-generic").unwrap_err();
        assert!(
            old.contains("6.6 or newer") && old.contains("6.5.13"),
            "{old}"
        );
        assert!(check_release("5.19.0").is_err());
        assert!(check_release("garbage").is_err());
    }
}
