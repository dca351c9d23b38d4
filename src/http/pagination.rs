//! Lists are pages: `?limit=` (1–100, default 20) and `?starting_after=` the last id of the
//! previous page, answered with `data` and `has_more`. The parameter structs are read by
//! [`Query`](crate::http::extract::Query), which answers a bad parameter with 422 naming it.

use serde::{Deserialize, Deserializer};
use utoipa::IntoParams;

const LIMIT_RULE: &str = "must be an integer from 1 to 100";

/// How many items a page holds: 1–100, 20 when not asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit(i64);

impl Limit {
    pub const MAX: i64 = 100;

    pub fn get(self) -> i64 {
        self.0
    }

    /// How many rows to fetch: one more than a page, which tells whether there are more.
    pub fn fetch(self) -> i64 {
        self.0 + 1
    }
}

impl Default for Limit {
    fn default() -> Limit {
        Limit(20)
    }
}

impl<'de> Deserialize<'de> for Limit {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Limit, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Limit;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an integer from 1 to 100")
            }

            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Limit, E> {
                if (1..=Limit::MAX).contains(&n) {
                    Ok(Limit(n))
                } else {
                    Err(E::custom(LIMIT_RULE))
                }
            }

            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Limit, E> {
                self.visit_i64(i64::try_from(n).unwrap_or(i64::MAX))
            }

            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Limit, E> {
                s.parse().map_err(|_| E::custom(LIMIT_RULE)).and_then(|n| self.visit_i64(n))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// `?name=` with nothing after it is no value at all.
pub fn non_empty<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<String>::deserialize(deserializer)?.filter(|s| !s.is_empty()))
}

/// `?limit=` (1–100, default 20) and `?starting_after=`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// 1–100, default 20.
    #[serde(default)]
    #[param(value_type = Option<i64>, minimum = 1, maximum = 100)]
    pub limit: Limit,
    /// The last id of the previous page.
    #[serde(default, deserialize_with = "non_empty")]
    pub starting_after: Option<String>,
}

/// `?limit=` and `?starting_after=` for the audit log, whose ids are integers.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditListParams {
    /// 1–100, default 20.
    #[serde(default)]
    #[param(value_type = Option<i64>, minimum = 1, maximum = 100)]
    pub limit: Limit,
    /// The last id of the previous page.
    #[serde(default, deserialize_with = "audit_entry_id")]
    pub starting_after: Option<i64>,
}

fn audit_entry_id<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<i64>, D::Error> {
    match non_empty(deserializer)? {
        None => Ok(None),
        Some(id) => id.parse().map(Some).map_err(|_| serde::de::Error::custom("must be an audit entry id")),
    }
}

/// A page of at most `limit` from `limit.fetch()` fetched rows, and whether there are more.
pub fn page<T>(mut rows: Vec<T>, limit: Limit) -> (Vec<T>, bool) {
    let limit = usize::try_from(limit.get()).unwrap_or(0);
    let has_more = rows.len() > limit;
    rows.truncate(limit);
    (rows, has_more)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::FieldError;
    use crate::http::error::ApiError;
    use crate::http::extract::parse_query;

    fn fields(e: ApiError) -> Vec<FieldError> {
        match e {
            ApiError::Validation(f) => f,
            other => panic!("expected validation, got {other:?}"),
        }
    }

    #[test]
    fn limits_are_1_to_100_and_20_by_default() {
        let p: ListParams = parse_query("").unwrap();
        assert_eq!((p.limit.get(), p.starting_after), (20, None));
        let p: ListParams = parse_query("limit=100&starting_after=").unwrap();
        assert_eq!((p.limit.get(), p.starting_after), (100, None), "an empty parameter is an absent one");
        let p: ListParams = parse_query("starting_after=usr_1&limit=%2B7").unwrap();
        assert_eq!((p.limit.get(), p.starting_after.as_deref()), (7, Some("usr_1")));
        for bad in ["limit=0", "limit=101", "limit=", "limit=abc", "limit=1.5", "starting_after=x&limit=-1"] {
            assert_eq!(
                fields(parse_query::<ListParams>(bad).unwrap_err()),
                vec![FieldError::new("limit", "must be an integer from 1 to 100")],
                "{bad}"
            );
        }
    }

    #[test]
    fn audit_pages_start_after_an_integer_id() {
        let p: AuditListParams = parse_query("limit=3&starting_after=42").unwrap();
        assert_eq!((p.limit.get(), p.starting_after), (3, Some(42)));
        assert_eq!(parse_query::<AuditListParams>("starting_after=").unwrap().starting_after, None);
        assert_eq!(
            fields(parse_query::<AuditListParams>("starting_after=usr_1").unwrap_err()),
            vec![FieldError::new("starting_after", "must be an audit entry id")]
        );
    }

    #[test]
    fn a_page_says_whether_there_is_more() {
        let limit: Limit = parse_query::<ListParams>("limit=2").unwrap().limit;
        assert_eq!(limit.fetch(), 3);
        assert_eq!(page(vec![1, 2, 3], limit), (vec![1, 2], true));
        assert_eq!(page(vec![1, 2], limit), (vec![1, 2], false));
    }
}
