//! Licences: the signing key, the previous key kept for verification, and the lifetime. The keys'
//! format is checked where they are read (`domain::licence`), at start.

use std::time::Duration;

use secrecy::SecretString;

use super::layer::Raw;
use super::types::LicenceConfig;

pub(super) fn parse(raw: &Raw, errors: &mut Vec<String>) -> LicenceConfig {
    let ttl = raw.duration("licence_ttl", errors);
    // Below a minute a licence would be born expired (exp is in whole seconds); beyond ten years
    // it would outlive any key rotation, and far beyond it is not a date.
    if !(Duration::from_secs(60)..=Duration::from_secs(10 * 366 * 86_400)).contains(&ttl) {
        errors.push(raw.bad("licence_ttl", "must be between 1m and 3660d"));
    }
    LicenceConfig {
        key: raw.get("licence_key").map(|v| SecretString::from(v.to_owned())),
        previous_key: raw.get("licence_previous_key").map(|v| SecretString::from(v.to_owned())),
        ttl,
    }
}
