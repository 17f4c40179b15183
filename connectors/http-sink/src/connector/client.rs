//! The HTTP client and the fixed request headers, built from the configuration: proxy,
//! redirects, the SSRF guard's resolver, TLS roots and client identity, auth.

use std::sync::Arc;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use url::Url;

use danube_connect_common::tls::ClientTls;

use crate::config::{AuthConfig, HttpSinkConfig};
use crate::error::BuildError;
use crate::ssrf::{GuardedResolver, TargetPolicy};

/// The HTTP client for `config`, its requests checked by the SSRF guard's `policy`.
pub(crate) fn http_client(config: &HttpSinkConfig, policy: &Arc<TargetPolicy>) -> Result<reqwest::Client, BuildError> {
    let mut builder = reqwest::Client::builder()
        .timeout(config.timeout)
        .connect_timeout(config.connect_timeout)
        .pool_max_idle_per_host(config.max_in_flight)
        .user_agent(concat!("danube-http-sink/", env!("CARGO_PKG_VERSION")));
    let proxy_host = match &config.proxy {
        Some(proxy) => {
            let url = Url::parse(proxy.expose()).map_err(|_| BuildError::Proxy(None))?;
            builder = builder.proxy(reqwest::Proxy::all(url.as_str()).map_err(|e| BuildError::Proxy(Some(e)))?);
            url.host_str().map(|h| h.trim_start_matches('[').trim_end_matches(']').to_string())
        }
        // No proxy from HTTP_PROXY and the like: the guard must know which host is
        // the proxy and which the target.
        None => {
            builder = builder.no_proxy();
            None
        }
    };
    let proxied = config.proxy.is_some();
    let redirect_policy = policy.clone();
    builder = builder.redirect(if config.follow_redirects {
        reqwest::redirect::Policy::custom(move |attempt| {
            let refused = attempt.url().host().is_some_and(|h| redirect_policy.check_host(&h.to_owned()).is_err());
            // Through a proxy a redirect's host name cannot be resolved here (this
            // callback is synchronous): follow only to the same host, or to a
            // literal address the guard permits.
            let unchecked = proxied
                && !redirect_policy.allows_all()
                && matches!(attempt.url().host(), Some(url::Host::Domain(_)))
                && attempt.previous().last().map(Url::host_str) != Some(attempt.url().host_str());
            if attempt.previous().len() >= 5 || refused || unchecked {
                attempt.stop()
            } else {
                attempt.follow()
            }
        })
    } else {
        reqwest::redirect::Policy::none()
    });
    if !policy.allows_all() {
        builder = builder.dns_resolver(Arc::new(GuardedResolver::new(policy.clone(), proxy_host)));
    }
    // `connector.tls` set: rustls as configured (the trusted roots, the identity);
    // otherwise reqwest's own rustls with the built-in roots.
    if config.tls != ClientTls::default() {
        builder = builder.use_preconfigured_tls(config.tls.rustls_config("connector.tls")?);
    }
    builder.build().map_err(BuildError::Client)
}

/// The headers sent with every request: `connector.headers` and `connector.auth`.
pub(crate) fn fixed_headers(config: &HttpSinkConfig) -> Result<HeaderMap, BuildError> {
    let mut headers = HeaderMap::new();
    for (name, value) in &config.headers {
        let field = format!("connector.headers.{name}");
        headers.insert(header_name(&field, name)?, header_value(&field, value.expose(), true)?);
    }
    match &config.auth {
        None => {}
        Some(AuthConfig::Bearer { token }) => {
            let value = format!("Bearer {}", token.expose());
            headers.insert(reqwest::header::AUTHORIZATION, header_value("connector.auth.token", &value, true)?);
        }
        Some(AuthConfig::Basic { username, password }) => {
            use base64::Engine;
            let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{username}:{}", password.expose()));
            headers.insert(
                reqwest::header::AUTHORIZATION,
                header_value("connector.auth.password", &format!("Basic {encoded}"), true)?,
            );
        }
        Some(AuthConfig::Header { name, value }) => {
            headers.insert(
                header_name("connector.auth.name", name)?,
                header_value("connector.auth.value", value.expose(), true)?,
            );
        }
    }
    Ok(headers)
}

/// A header name for `field`.
pub(crate) fn header_name(field: &str, name: &str) -> Result<HeaderName, BuildError> {
    HeaderName::from_bytes(name.as_bytes()).map_err(|_| BuildError::Header { field: field.to_string() })
}

/// A header value for `field`, marked sensitive (left out of debug output) when asked.
fn header_value(field: &str, value: &str, sensitive: bool) -> Result<HeaderValue, BuildError> {
    let mut value = HeaderValue::from_str(value).map_err(|_| BuildError::Header { field: field.to_string() })?;
    value.set_sensitive(sensitive);
    Ok(value)
}
