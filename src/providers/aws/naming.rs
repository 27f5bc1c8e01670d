//! The names rehearse creates things under, derived from the run id: RDS identifiers,
//! group names and client tokens — what makes a create idempotent and what `sweep`
//! checks a tagged resource against.

use super::AwsProvider;

/// The names rehearse creates things under, derived from the run id: what `sweep`
/// checks a tagged resource against.
impl<A> AwsProvider<A> {
    /// An RDS identifier for a run's resource: a letter first, then lowercase letters,
    /// digits and single hyphens, ≤ 63 characters, unique per run and name. A name that
    /// had to be changed to fit (`a_b` and `a-b` would both become `a-b`; a long one is
    /// cut) gets a hash of the original, so two names never share an identifier.
    pub fn rds_id(run_id: &str, name: &str) -> String {
        let suffix = run_id.trim_start_matches("r-").replace('-', "");
        let raw = format!("rh-{suffix}-{name}");
        let mut id = String::new();
        for c in raw.to_lowercase().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }) {
            if !(c == '-' && id.ends_with('-')) {
                id.push(c);
            }
        }
        let mut id = id.trim_end_matches('-').to_string();
        if id != raw || id.len() > 63 {
            id.truncate(54);
            id = format!("{}-{:08x}", id.trim_end_matches('-'), fnv1a(&raw) as u32);
        }
        id
    }

    /// The name of the run's security group and DB subnet group.
    pub(crate) fn group_name(run_id: &str) -> String {
        format!("rehearse-{run_id}")
    }

    /// `RunInstances`' client token for a run's instance: ≤ 64 ASCII characters, unique
    /// per run and instance (a long one is cut and given a hash of the whole, so that
    /// `service.<long name>.0` and `.1` never share a token).
    pub(crate) fn client_token(run_id: &str, res_id: &str) -> String {
        let full = format!("{run_id}-{res_id}");
        if full.len() <= 64 {
            return full;
        }
        format!("{}-{:016x}", &full[..47], fnv1a(&full))
    }
}

/// FNV-1a: a short, stable hash for names (stable across builds and Rust versions,
/// unlike `std`'s `DefaultHasher`; eight lines do not justify a crate).
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}
