//! API keys for the merchant's servers: what a key may do (its scopes) and which mode it belongs
//! to. Pure rules; the keys themselves are stored by `store/` and checked by `http/apikey.rs`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What an API key may do. Deny by default: a key works only on the routes its scopes name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
pub enum Scope {
    #[serde(rename = "entitlements:read")]
    EntitlementsRead,
    #[serde(rename = "users:read")]
    UsersRead,
    #[serde(rename = "credits:write")]
    CreditsWrite,
    #[serde(rename = "licences:issue")]
    LicencesIssue,
    #[serde(rename = "orders:read")]
    OrdersRead,
    #[serde(rename = "tokens:introspect")]
    TokensIntrospect,
}

impl Scope {
    pub const ALL: [Scope; 6] = [
        Scope::EntitlementsRead,
        Scope::UsersRead,
        Scope::CreditsWrite,
        Scope::LicencesIssue,
        Scope::OrdersRead,
        Scope::TokensIntrospect,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::EntitlementsRead => "entitlements:read",
            Scope::UsersRead => "users:read",
            Scope::CreditsWrite => "credits:write",
            Scope::LicencesIssue => "licences:issue",
            Scope::OrdersRead => "orders:read",
            Scope::TokensIntrospect => "tokens:introspect",
        }
    }

    pub fn parse(s: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|scope| scope.as_str() == s)
    }
}

/// Live or test: follows the payment provider's (a Stripe test key or the sandbox is `test`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum KeyMode {
    Live,
    Test,
}

impl KeyMode {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyMode::Live => "live",
            KeyMode::Test => "test",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_round_trip_through_their_names() {
        for scope in Scope::ALL {
            assert_eq!(Scope::parse(scope.as_str()), Some(scope));
            assert_eq!(serde_json::to_value(scope).unwrap(), scope.as_str());
        }
        assert_eq!(Scope::parse("admin"), None);
    }
}
