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
        "{url}: the storage service did not answer or kept failing ({source}); requests are retried with \
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

/// `error` and each error that caused it, outermost first.
fn causes(error: &object_store::Error) -> impl Iterator<Item = &(dyn std::error::Error + 'static)> {
    std::iter::successors(Some(error as &(dyn std::error::Error + 'static)), |e| {
        e.source()
    })
}

/// The kind of HTTP failure behind `error`, if it is one.
fn http_failure(error: &object_store::Error) -> Option<object_store::client::HttpErrorKind> {
    causes(error).find_map(|e| {
        e.downcast_ref::<object_store::client::HttpError>()
            .map(|http| http.kind())
    })
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

/// Whether `error` is the service answering that it is failing or
/// overloaded (5xx, 429) after object_store's retries. object_store 0.14
/// keeps the status in a private type (`RetryError`), so the only place it
/// shows is the text it renders; the test below, against a loopback server
/// that answers 503, catches a change of that text on an upgrade.
pub(super) fn is_server_failure(error: &object_store::Error) -> bool {
    causes(error).any(|e| {
        let text = e.to_string();
        text.split_once("Server returned non-2xx status code: ")
            .is_some_and(|(_, status)| status.starts_with('5') || status.starts_with("429"))
    })
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

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use crate::storage::location::Location;
    use crate::storage::location::StorageError;

    /// An S3 endpoint on loopback that answers every request with `status`.
    fn answering(status: &'static str) -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                let mut request = [0; 4096];
                let _ = stream.read(&mut request);
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
            }
        });
        endpoint
    }

    fn list_at(endpoint: String) -> StorageError {
        let options = [
            ("aws_endpoint", endpoint.as_str()),
            ("aws_allow_http", "true"),
            ("aws_access_key_id", "test"),
            ("aws_secret_access_key", "test"),
            ("aws_region", "us-east-1"),
            ("STORAGE_RETRY_LIMIT", "1"),
        ];
        Location::parse_with(
            "s3://bucket/prefix",
            options.map(|(k, v)| (k.to_string(), v.to_string())),
        )
        .unwrap()
        .list()
        .expect_err("the store fails")
    }

    #[test]
    fn a_store_that_keeps_answering_5xx_or_429_is_unavailable_and_4xx_is_not() {
        for status in [
            "503 Service Unavailable",
            "500 Internal Server Error",
            "429 Too Many Requests",
        ] {
            let error = list_at(answering(status));
            assert!(
                matches!(error, StorageError::Unavailable { .. }),
                "{status}: {error:?}"
            );
        }
        let error = list_at(answering("400 Bad Request"));
        assert!(matches!(error, StorageError::Other { .. }), "{error:?}");
    }
}
