//! Storage errors: each names the object it concerns and says what to do,
//! and a store that does not answer is told apart from one that refuses.

/// A storage failure, naming the object it concerns and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("cannot open storage location {url:?}: {message}")]
    BadUrl { url: String, message: String },
    #[error("{url}: not found")]
    NotFound { url: String },
    #[error("{url}: access denied; check the credentials for this bucket ({hint})")]
    Denied { url: String, hint: &'static str },
    #[error(
        "{url} already exists with different content; it was written by an earlier run \
         from other inputs. Reset both servers for this date (prio-processor cleanup) and rerun"
    )]
    Conflict { url: String },
    #[error("{url}: writing failed: {source}")]
    Write { url: String, source: std::io::Error },
    #[error("{url}: reading failed: {source}")]
    Read { url: String, source: std::io::Error },
    #[error("{url}: malformed: {message}")]
    Malformed { url: String, message: String },
    #[error("{url}: {message}")]
    NotOwn { url: String, message: String },
    #[error(
        "{url}: refused: {reason}. Only what the peer signed for this date, step and object is \
         read; check PUBLIC_SIGNING_KEY_HEX_EXTERNAL, and that nothing else writes to this inbox"
    )]
    Refused {
        url: String,
        reason: crate::wire::signing::Mismatch,
    },
    #[error(
        "{url}: the storage service did not answer ({source}); requests are retried with \
         backoff up to STORAGE_RETRY_LIMIT times within STORAGE_RETRY_TIMEOUT seconds. Check \
         that it is up and reachable, then rerun: finished steps are kept"
    )]
    Unavailable {
        url: String,
        source: object_store::Error,
    },
    #[error("{url}: {source}")]
    Other {
        url: String,
        source: object_store::Error,
    },
}

/// The kind of HTTP failure behind `error`, if it is one.
fn http_failure(error: &object_store::Error) -> Option<object_store::client::HttpErrorKind> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = cause {
        if let Some(http) = e.downcast_ref::<object_store::client::HttpError>() {
            return Some(http.kind());
        }
        cause = e.source();
    }
    None
}

/// Whether `error` is a request that never got an answer (connection refused
/// or reset, timeout) after object_store's retries: the store is down or unreachable.
pub(super) fn is_transport_failure(error: &object_store::Error) -> bool {
    use object_store::client::HttpErrorKind::*;
    matches!(
        http_failure(error),
        Some(Connect | Request | Timeout | Interrupted)
    )
}

/// Whether `error` is a request cut off after it was sent, which
/// object_store repeats only when it is idempotent.
pub(super) fn is_cut_off(error: &object_store::Error) -> bool {
    use object_store::client::HttpErrorKind::*;
    matches!(http_failure(error), Some(Timeout | Interrupted))
}

/// The variable that holds credentials for a URL's scheme, for error messages.
pub(super) fn credential_hint(url: &str) -> &'static str {
    match url.split("://").next() {
        Some("s3" | "s3a") => "set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, and AWS_ENDPOINT_URL for S3-compatible stores",
        Some("gs") => "set GOOGLE_APPLICATION_CREDENTIALS",
        Some("az" | "azure" | "abfs" | "abfss" | "adl") => "set AZURE_STORAGE_ACCOUNT_NAME and AZURE_STORAGE_ACCOUNT_KEY",
        _ => "check file permissions",
    }
}
