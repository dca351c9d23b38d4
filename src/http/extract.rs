//! Extractors whose rejections are precise problems: [`Json`] (415 / 413 / 400 / 422), [`Query`]
//! (422) and the request context set by the edge middleware ([`RequestId`], [`ClientInfo`]).

use std::net::IpAddr;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{header, request::Parts, StatusCode};
use serde::de::DeserializeOwned;

use crate::domain::FieldError;
use crate::http::error::ApiError;

/// The id of this request, as echoed in `X-Request-Id`.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Who is on the other end, after trusted-proxy resolution.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ClientInfo {
    /// The socket peer, or the right-most untrusted `X-Forwarded-For` hop when the peer is a
    /// trusted proxy.
    pub ip: IpAddr,
    /// Served over TLS by us, or by a trusted proxy that said `X-Forwarded-Proto: https`.
    pub https: bool,
}

impl<S: Send + Sync> FromRequestParts<S> for ClientInfo {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<ClientInfo>()
            .cloned()
            .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("ClientInfo missing: edge middleware not installed")))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for RequestId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<RequestId>()
            .cloned()
            .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("RequestId missing: edge middleware not installed")))
    }
}

/// A JSON body. Unlike axum's, every rejection is a problem: a wrong or missing `Content-Type`
/// is 415, a body over the limit 413, bytes that are not JSON 400, and JSON of the wrong shape 422
/// naming the field.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

fn is_json_content_type(value: &str) -> bool {
    let essence = value.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

impl<T, S> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let json = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(is_json_content_type);
        if !json {
            return Err(ApiError::UnsupportedMediaType);
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge
            } else {
                ApiError::BadRequest("the request body could not be read".to_owned())
            }
        })?;
        parse_json(&bytes).map(Json)
    }
}

/// Deserialises `bytes`, telling syntax errors (400) from shape errors (422 with the field).
/// Every request body of this API is a JSON object; serde would otherwise accept an array for a
/// struct (`[null, null]` as `{role, disabled}`).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| malformed(&e))?;
    if !value.is_object() {
        return Err(ApiError::Validation(vec![FieldError::new("body", "must be a JSON object")]));
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        ApiError::Validation(vec![data_error(&path, &e.into_inner())])
    })
}

fn malformed(e: &serde_json::Error) -> ApiError {
    if e.is_eof() && e.line() == 1 && e.column() == 0 {
        return ApiError::BadRequest("the request body is empty; expected a JSON object".to_owned());
    }
    ApiError::BadRequest(format!("malformed JSON at line {} column {}", e.line(), e.column()))
}

fn data_error(path: &str, e: &serde_json::Error) -> FieldError {
    // serde_json appends " at line L column C"; the field path says more to a client.
    let full = e.to_string();
    let message = full.rsplit_once(" at line ").map(|(m, _)| m.to_owned()).unwrap_or(full);
    let parent = if path == "." { String::new() } else { path.to_owned() };
    // A missing field is reported at its parent; name the field itself.
    if let Some(name) = message.strip_prefix("missing field `").and_then(|r| r.strip_suffix('`')) {
        let field = if parent.is_empty() { name.to_owned() } else { format!("{parent}.{name}") };
        return FieldError::new(field, "is required");
    }
    let field = if parent.is_empty() { "body".to_owned() } else { parent };
    FieldError::new(field, message)
}

/// Query parameters. Unlike axum's, a parameter that does not parse is a 422 naming it, with
/// the message of its type (`limit`: "must be an integer from 1 to 100"). Parameters the type does
/// not name are ignored; of one given more than once the last non-empty value counts (as the
/// hand-written parsing before this extractor did).
#[derive(Debug, Clone, Copy, Default)]
pub struct Query<T>(pub T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parse_query(parts.uri.query().unwrap_or_default()).map(Query)
    }
}

/// Deserialises a query string (without the `?`), naming the parameter that failed.
pub fn parse_query<T: DeserializeOwned>(query: &str) -> Result<T, ApiError> {
    let mut once: Vec<(std::borrow::Cow<'_, str>, std::borrow::Cow<'_, str>)> = Vec::new();
    for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
        match once.iter_mut().find(|(n, _)| *n == name) {
            Some((_, kept)) if !value.is_empty() || kept.is_empty() => *kept = value,
            Some(_) => {}
            None => once.push((name, value)),
        }
    }
    let query = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(once).finish();
    let pairs = serde_urlencoded::Deserializer::new(url::form_urlencoded::parse(query.as_bytes()));
    serde_path_to_error::deserialize(pairs).map_err(|e| {
        let path = e.path().to_string();
        ApiError::Validation(vec![parameter_error(&path, e.into_inner().to_string())])
    })
}

fn parameter_error(path: &str, message: String) -> FieldError {
    if path != "." {
        return FieldError::new(path, message);
    }
    // Errors about the parameters as a whole name the parameter only in their message.
    for (prefix, rule) in [("missing field `", "is required"), ("duplicate field `", "must be given at most once")] {
        if let Some(name) = message.strip_prefix(prefix).and_then(|r| r.strip_suffix('`')) {
            return FieldError::new(name, rule);
        }
    }
    FieldError::new("query", message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct In {
        email: String,
        inner: Option<Inner>,
    }
    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Inner {
        amount: i64,
    }

    fn fields(e: ApiError) -> Vec<FieldError> {
        match e {
            ApiError::Validation(f) => f,
            other => panic!("expected validation, got {other:?}"),
        }
    }

    #[test]
    fn shape_errors_name_the_field() {
        assert_eq!(fields(parse_json::<In>(br#"{}"#).unwrap_err()), vec![FieldError::new("email", "is required")]);
        let f = fields(parse_json::<In>(br#"{"email":"a","inner":{"amount":"x"}}"#).unwrap_err());
        assert_eq!(f[0].field, "inner.amount");
        assert!(f[0].message.contains("invalid type"), "{f:?}");
        let f = fields(parse_json::<In>(br#"{"email":"a","extra":1}"#).unwrap_err());
        assert!(f[0].message.contains("unknown field `extra`"), "{f:?}");
        assert_eq!(fields(parse_json::<In>(br#""text""#).unwrap_err())[0].field, "body");
        assert_eq!(
            fields(parse_json::<In>(br#"["a", null]"#).unwrap_err()),
            vec![FieldError::new("body", "must be a JSON object")]
        );
    }

    #[test]
    fn syntax_errors_are_bad_requests() {
        for body in [&b"{\"email\":"[..], b"not json", b"{\"email\":\"a\"} trailing", b""] {
            assert!(matches!(parse_json::<In>(body), Err(ApiError::BadRequest(_))), "{:?}", String::from_utf8_lossy(body));
        }
    }

    #[derive(Debug, serde::Deserialize)]
    struct Params {
        name: String,
        #[serde(default, deserialize_with = "even")]
        even: Option<i64>,
    }

    fn even<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
        let n: i64 = <String as serde::Deserialize>::deserialize(d)?.parse().map_err(serde::de::Error::custom)?;
        (n % 2 == 0).then_some(Some(n)).ok_or_else(|| serde::de::Error::custom("must be even"))
    }

    #[test]
    fn query_parameters_name_the_one_that_failed() {
        let p: Params = parse_query("name=a%20b&even=4&other=x").unwrap();
        assert_eq!((p.name.as_str(), p.even), ("a b", Some(4)), "unknown parameters are ignored");
        assert_eq!(fields(parse_query::<Params>("name=a&even=3").unwrap_err()), vec![FieldError::new("even", "must be even")]);
        assert_eq!(fields(parse_query::<Params>("even=2").unwrap_err()), vec![FieldError::new("name", "is required")]);
        let twice: Params = parse_query("name=a&name=b&even=2&even=").unwrap();
        assert_eq!((twice.name.as_str(), twice.even), ("b", Some(2)), "the last non-empty value counts");
    }

    #[test]
    fn content_types() {
        assert!(is_json_content_type("application/json"));
        assert!(is_json_content_type("application/json; charset=utf-8"));
        assert!(is_json_content_type("application/merge-patch+json"));
        assert!(!is_json_content_type("text/plain"));
        assert!(!is_json_content_type("application/x-www-form-urlencoded"));
    }
}
