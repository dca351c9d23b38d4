//! Licences: the signing key, the previous key kept for verification, and the lifetime. The keys'
//! format is checked where they are read (`domain::licence`), at start.

use secrecy::SecretString;

use super::layer::Raw;
use super::types::LicenceConfig;

pub(super) fn parse(raw: &Raw, errors: &mut Vec<String>) -> LicenceConfig {
    LicenceConfig {
        key: raw.get("licence_key").map(|v| SecretString::from(v.to_owned())),
        previous_key: raw.get("licence_previous_key").map(|v| SecretString::from(v.to_owned())),
        ttl: raw.duration("licence_ttl", errors),
    }
}
