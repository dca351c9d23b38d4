//! Domain rules: parsed values and the services that hold the rules. Knows nothing of HTTP or SQL.

use serde::Serialize;
use utoipa::ToSchema;

/// One invalid field of a request, reported in a 422 problem's `errors`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct FieldError {
    /// The field's path in the request body (`email`, `grant.amount`, or `body` for the whole).
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> FieldError {
        FieldError { field: field.into(), message: message.into() }
    }
}

pub mod account;
pub mod apikeys;
pub mod auth;
pub mod catalog;
pub mod credits;
pub mod crypto;
pub mod jwt;
pub mod keys;
pub mod ledger;
pub mod licence;
pub mod licensing;
pub mod notifications;
pub mod orders;
pub mod password;
pub mod payments;

/// Integers as JSON Schema defines them: `950` and `950.0` are the same integer (the OpenAPI
/// document says `integer`, and a client serialising through a float type sends the latter).
/// Anything with a fractional part, or out of range, is refused: money is never a float.
pub mod whole_number {
    use serde::{de, Deserialize, Deserializer};

    fn from_number(n: serde_json::Number) -> Result<i64, String> {
        if let Some(i) = n.as_i64() {
            return Ok(i);
        }
        match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(f as i64),
            _ => Err(format!("expected a whole number, got {n}")),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        from_number(serde_json::Number::deserialize(d)?).map_err(de::Error::custom)
    }

    pub mod option {
        use super::*;

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
            Option::<serde_json::Number>::deserialize(d)?.map(super::from_number).transpose().map_err(de::Error::custom)
        }
    }

    #[cfg(test)]
    mod tests {
        #[derive(serde::Deserialize)]
        struct T {
            #[serde(deserialize_with = "super::deserialize")]
            n: i64,
            #[serde(default, deserialize_with = "super::option::deserialize")]
            o: Option<i64>,
        }

        #[test]
        fn whole_numbers_only() {
            let t: T = serde_json::from_str(r#"{"n": 950.0, "o": 3}"#).unwrap();
            assert_eq!((t.n, t.o), (950, Some(3)));
            assert_eq!(serde_json::from_str::<T>(r#"{"n": 5, "o": null}"#).unwrap().o, None);
            assert!(serde_json::from_str::<T>(r#"{"n": 19.99}"#).is_err());
            assert!(serde_json::from_str::<T>(r#"{"n": "5"}"#).is_err());
            assert!(serde_json::from_str::<T>(r#"{"n": 1e300}"#).is_err());
        }
    }
}
