//! Lists are pages: `?limit=` (1–100, default 20) and `?starting_after=` the last id of the
//! previous page, answered with `data` and `has_more`.

use serde::Deserialize;
use utoipa::IntoParams;

use crate::domain::FieldError;
use crate::http::error::ApiError;

/// `?limit=` (1–100, default 20) and `?starting_after=`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// 1–100, default 20.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// The last id of the previous page.
    pub starting_after: Option<String>,
}

/// `?limit=` and `?starting_after=` for the audit log, whose ids are integers.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditListParams {
    /// 1–100, default 20.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// The last id of the previous page.
    pub starting_after: Option<i64>,
}

/// Parses list parameters, reporting each bad one as a 422 field error.
pub(crate) fn list_params(raw: Option<String>) -> Result<(i64, Option<String>), ApiError> {
    let mut limit = 20;
    let mut after = None;
    let mut errors = Vec::new();
    for (k, v) in url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        match k.as_ref() {
            "limit" => match v.parse::<i64>() {
                Ok(n) if (1..=100).contains(&n) => limit = n,
                _ => errors.push(FieldError::new("limit", "must be an integer from 1 to 100")),
            },
            "starting_after" if !v.is_empty() => after = Some(v.into_owned()),
            _ => {}
        }
    }
    if errors.is_empty() {
        Ok((limit, after))
    } else {
        Err(ApiError::Validation(errors))
    }
}

/// A page of at most `limit` from `limit + 1` fetched rows, and whether there are more.
pub(crate) fn page<T>(mut rows: Vec<T>, limit: i64) -> (Vec<T>, bool) {
    let limit = usize::try_from(limit).unwrap_or(0);
    let has_more = rows.len() > limit;
    rows.truncate(limit);
    (rows, has_more)
}
