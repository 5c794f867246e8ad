//! Opening a store for a URL: object_store's builders with this project's
//! retry settings (`STORAGE_RETRY_LIMIT`, `STORAGE_RETRY_TIMEOUT`).

use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::ObjectStore;

/// Retries of one cloud request: within 3 minutes (object_store's default),
/// at most 30 times. object_store's own limit of 10 retries, with its jittered
/// backoff, can give up after two seconds of a store that restarts.
const DEFAULT_RETRY_LIMIT: usize = 30;
const DEFAULT_RETRY_TIMEOUT_SECS: f64 = 180.0;

/// How cloud requests are retried, from `STORAGE_RETRY_LIMIT` and
/// `STORAGE_RETRY_TIMEOUT` (seconds) among `options` (any case; the last
/// wins): a store that restarts or drops connections is waited for with
/// exponential backoff (from 100 ms, jittered, at most 15 s apart), then the
/// call fails as [`StorageError::Unavailable`].
pub(super) fn retry_config(
    options: &[(String, String)],
) -> Result<object_store::RetryConfig, String> {
    let setting = |name: &str| {
        options
            .iter()
            .rev()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.trim().to_string())
    };
    fn parsed<T: std::str::FromStr>(
        name: &str,
        text: Option<String>,
        default: T,
    ) -> Result<T, String> {
        match text {
            Some(text) => text
                .parse()
                .map_err(|_| format!("{name}={text:?} is not a number")),
            None => Ok(default),
        }
    }
    let (timeout_name, limit_name) = ("STORAGE_RETRY_TIMEOUT", "STORAGE_RETRY_LIMIT");
    let timeout: f64 = parsed(
        timeout_name,
        setting(timeout_name),
        DEFAULT_RETRY_TIMEOUT_SECS,
    )?;
    let retry_timeout = std::time::Duration::try_from_secs_f64(timeout)
        .map_err(|_| format!("{timeout_name}={timeout} is not a number of seconds"))?;
    Ok(object_store::RetryConfig {
        max_retries: parsed(limit_name, setting(limit_name), DEFAULT_RETRY_LIMIT)?,
        retry_timeout,
        backoff: object_store::BackoffConfig::default(),
    })
}

/// The store and prefix of `url`, as `object_store::parse_url_opts` makes
/// them (`options` are config keys, any case; others are ignored), with `retry`.
pub(super) fn open_store(
    url: &url::Url,
    options: impl IntoIterator<Item = (String, String)>,
    retry: object_store::RetryConfig,
) -> Result<(Box<dyn ObjectStore>, Path), object_store::Error> {
    use object_store::{aws, azure, gcp, ObjectStoreScheme};
    let (scheme, prefix) = ObjectStoreScheme::parse(url)?;
    let options: Vec<(String, String)> = options
        .into_iter()
        .map(|(key, value)| (key.to_ascii_lowercase(), value))
        .collect();
    macro_rules! cloud {
        ($builder:ty) => {{
            let builder = options.iter().fold(
                <$builder>::new().with_url(url.as_str()).with_retry(retry),
                |builder, (key, value)| match key.parse() {
                    Ok(key) => builder.with_config(key, value),
                    Err(_) => builder,
                },
            );
            Box::new(builder.build()?) as Box<dyn ObjectStore>
        }};
    }
    let store = match scheme {
        ObjectStoreScheme::Local => Box::new(LocalFileSystem::new()) as Box<dyn ObjectStore>,
        ObjectStoreScheme::Memory => Box::new(object_store::memory::InMemory::new()),
        ObjectStoreScheme::AmazonS3 => cloud!(aws::AmazonS3Builder),
        ObjectStoreScheme::GoogleCloudStorage => cloud!(gcp::GoogleCloudStorageBuilder),
        ObjectStoreScheme::MicrosoftAzure => cloud!(azure::MicrosoftAzureBuilder),
        other => {
            return Err(object_store::Error::Generic {
                store: "prio-processor",
                source: format!("{other:?} URLs are not supported").into(),
            })
        }
    };
    Ok((store, prefix))
}
