//! Where the client's credentials come from: a long-term key (given, or read from a credentials
//! file), or the instance's RAM role, whose STS credentials (key, secret, security token and
//! expiration) the instance metadata service serves at
//! `/latest/meta-data/ram/security-credentials/<role>`. Role credentials are fetched when first
//! needed, fetched again before they expire (and at once when the service calls the token
//! expired), and never logged: `Debug` of every type here redacts the secret and the token.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;

use crate::error::{CloudError, Result};
use crate::model::Credentials;
use crate::signing;

/// The metadata service of an ECS instance, as its software reaches it.
pub const INSTANCE_METADATA_URL: &str = "http://100.100.100.200/latest/meta-data";
/// Role credentials are fetched again when less than this share of their lifetime is left (and
/// at most [`MAX_REFRESH_MARGIN`] before they expire). The metadata service hands out new ones
/// from half their lifetime on, so the fetch finds fresh credentials.
pub const REFRESH_AT_REMAINING_SHARE: f64 = 1.0 / 3.0;
pub const MAX_REFRESH_MARGIN: Duration = Duration::from_secs(15 * 60);

/// How a binary's config names its credentials (`cloud.credentials_source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// A long-term key in `cloud.credentials_file`.
    #[default]
    File,
    /// The instance's RAM role, from the metadata service at `cloud.metadata_url`.
    RamRole,
}

/// Where a client's credentials come from.
#[derive(Clone, PartialEq, Eq)]
pub enum Source {
    /// A long-term key.
    Static(Credentials),
    /// The RAM role `role` (empty: the one role the instance has) from the metadata service whose
    /// `/latest/meta-data` is at `metadata_url`.
    RamRole { metadata_url: String, role: String },
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Static(c) => f.debug_tuple("Static").field(c).finish(),
            Source::RamRole { metadata_url, role } => f.debug_struct("RamRole").field("metadata_url", metadata_url).field("role", role).finish(),
        }
    }
}

impl From<Credentials> for Source {
    fn from(c: Credentials) -> Self {
        Source::Static(c)
    }
}

impl Source {
    /// The source a binary's `[cloud]` settings name: the credentials file is read now (a bad
    /// file fails here); a RAM role needs an http(s) metadata URL. Errors name the setting.
    pub fn from_settings(kind: SourceKind, credentials_file: &std::path::Path, metadata_url: &str, ram_role: &str) -> Result<Source> {
        let bad = |setting: &str, reason: String| CloudError::Setting { setting: setting.to_string(), reason };
        match kind {
            SourceKind::File => {
                if !ram_role.is_empty() {
                    return Err(bad("cloud.ram_role", format!("\"{ram_role}\" is set but cloud.credentials_source is \"file\"; set cloud.credentials_source = \"ram_role\" or drop cloud.ram_role")));
                }
                crate::client::load_credentials(credentials_file).map(Source::Static)
            }
            SourceKind::RamRole => {
                let url = metadata_url.trim_end_matches('/');
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(bad("cloud.metadata_url", format!("\"{metadata_url}\" is not an http(s) URL; the instance's is {INSTANCE_METADATA_URL}")));
                }
                if ram_role.contains('/') {
                    return Err(bad("cloud.ram_role", format!("\"{ram_role}\" is not a RAM role name (no '/')")));
                }
                Ok(Source::RamRole { metadata_url: url.to_string(), role: ram_role.to_string() })
            }
        }
    }
}

/// The credentials one request is signed with.
#[derive(Clone)]
pub struct Session {
    pub access_key_id: String,
    pub access_key_secret: String,
    /// Sent as `SecurityToken` (v1) or `x-acs-security-token` (v3).
    pub security_token: Option<String>,
    /// Seconds since the Unix epoch; `None` for a long-term key.
    pub expires_at: Option<u64>,
    fetched_at: u64,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("access_key_id", &self.access_key_id)
            .field("access_key_secret", &"<redacted>")
            .field("security_token", &self.security_token.as_ref().map(|_| "<redacted>"))
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

impl Session {
    /// Whether it should be fetched again at `now`: a share of its lifetime is left, or less.
    pub fn needs_refresh(&self, now: u64) -> bool {
        let Some(expires) = self.expires_at else { return false };
        let lifetime = expires.saturating_sub(self.fetched_at);
        let margin = ((lifetime as f64 * REFRESH_AT_REMAINING_SHARE) as u64).min(MAX_REFRESH_MARGIN.as_secs());
        now + margin >= expires
    }
}

/// The body of `ram/security-credentials/<role>`.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RoleCredentials {
    #[serde(default)]
    code: String,
    access_key_id: String,
    access_key_secret: String,
    security_token: String,
    expiration: String,
}

/// Parses a role-credentials document as the metadata service writes it; `fetched_at` is now.
pub fn parse_role_credentials(role: &str, body: &str, fetched_at: u64) -> Result<Session> {
    let fail = |reason: String| CloudError::Credentials { path: format!("ram/security-credentials/{role}"), reason };
    let c: RoleCredentials = serde_json::from_str(body).map_err(|e| fail(format!("not a credentials document: {e}")))?;
    if !c.code.is_empty() && c.code != "Success" {
        return Err(fail(format!("the metadata service answered Code \"{}\"", c.code)));
    }
    let expires_at = signing::parse_timestamp(&c.expiration).ok_or_else(|| fail(format!("Expiration \"{}\" is not YYYY-MM-DDThh:mm:ssZ", c.expiration)))?;
    if c.access_key_id.is_empty() || c.access_key_secret.is_empty() || c.security_token.is_empty() {
        return Err(fail("AccessKeyId, AccessKeySecret and SecurityToken must all be set".into()));
    }
    Ok(Session { access_key_id: c.access_key_id, access_key_secret: c.access_key_secret, security_token: Some(c.security_token), expires_at: Some(expires_at), fetched_at })
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Hands out the current credentials of a [`Source`], fetching role credentials when needed.
pub struct Provider {
    source: Source,
    current: tokio::sync::Mutex<Option<Arc<Session>>>,
    /// The role the metadata service listed, when the source names none (asked once).
    discovered_role: std::sync::Mutex<Option<String>>,
    fetches: AtomicU64,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider").field("source", &self.source).finish_non_exhaustive()
    }
}

impl Provider {
    pub fn new(source: Source) -> Self {
        Provider { source, current: tokio::sync::Mutex::new(None), discovered_role: std::sync::Mutex::new(None), fetches: AtomicU64::new(0) }
    }

    /// How many times role credentials were fetched from the metadata service (the one listing
    /// of roles, when no role is named, not counted).
    pub fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// The credentials to sign with now.
    pub async fn current(&self, http: &reqwest::Client) -> Result<Arc<Session>> {
        let (metadata_url, role) = match &self.source {
            Source::Static(c) => {
                return Ok(Arc::new(Session {
                    access_key_id: c.access_key_id.clone(),
                    access_key_secret: c.access_key_secret.clone(),
                    security_token: None,
                    expires_at: None,
                    fetched_at: 0,
                }));
            }
            Source::RamRole { metadata_url, role } => (metadata_url, role),
        };
        let mut current = self.current.lock().await;
        let now = now_secs();
        match current.as_ref() {
            Some(s) if !s.needs_refresh(now) => return Ok(s.clone()),
            _ => {}
        }
        match self.fetch(http, metadata_url, role, now).await {
            Ok(s) => {
                let s = Arc::new(s);
                tracing::info!(access_key_id = %s.access_key_id, expires = %signing::format_timestamp(s.expires_at.unwrap_or_default()), "fetched RAM role credentials");
                *current = Some(s.clone());
                Ok(s)
            }
            // Credentials that are still valid serve while the metadata service does not answer.
            Err(e) => match current.as_ref() {
                Some(s) if s.expires_at.is_some_and(|x| x > now) => {
                    tracing::warn!(error = %e, "cannot refresh RAM role credentials; using the current ones until they expire");
                    Ok(s.clone())
                }
                _ => Err(e),
            },
        }
    }

    /// Drops the current role credentials (the service called their token expired): the next
    /// [`Provider::current`] fetches new ones. Only `used` is dropped, not newer ones.
    pub async fn invalidate(&self, used: &Session) {
        let mut current = self.current.lock().await;
        if current.as_ref().is_some_and(|c| c.access_key_id == used.access_key_id) {
            *current = None;
        }
    }

    pub fn refreshes(&self) -> bool {
        matches!(self.source, Source::RamRole { .. })
    }

    async fn fetch(&self, http: &reqwest::Client, metadata_url: &str, role: &str, now: u64) -> Result<Session> {
        let base = format!("{metadata_url}/ram/security-credentials/");
        let get = |url: String| async move {
            let fail = |reason: String| CloudError::Credentials { path: url.clone(), reason };
            let r = http.get(&url).timeout(Duration::from_secs(5)).send().await.map_err(|e| fail(format!("the metadata service does not answer: {e}")))?;
            let status = r.status();
            let body = r.text().await.map_err(|e| fail(e.to_string()))?;
            if !status.is_success() {
                return Err(fail(format!("HTTP {status}: is a RAM role attached to this instance? (cloud.ram_role names it)")));
            }
            Ok(body)
        };
        let known = self.discovered_role.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let role = if !role.is_empty() {
            role.to_string()
        } else if let Some(r) = known {
            r
        } else {
            let listed = get(base.clone()).await?;
            let roles: Vec<&str> = listed.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
            let one = match roles.as_slice() {
                [one] => one.to_string(),
                [] => return Err(CloudError::Credentials { path: base, reason: "the instance has no RAM role; attach one or use cloud.credentials_file".into() }),
                many => return Err(CloudError::Credentials { path: base, reason: format!("the instance lists roles {many:?}; name one in cloud.ram_role") }),
            };
            *self.discovered_role.lock().unwrap_or_else(|e| e.into_inner()) = Some(one.clone());
            one
        };
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let body = get(format!("{base}{role}")).await?;
        parse_role_credentials(&role, &body, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = r#"{"AccessKeyId":"STS.abc","AccessKeySecret":"secret-9f3","Expiration":"2026-11-25T06:00:00Z","SecurityToken":"token-7c1","LastUpdated":"2026-11-25T00:00:00Z","Code":"Success"}"#;

    #[test]
    fn role_credentials_parse_and_refresh_before_they_expire() {
        let t0 = signing::parse_timestamp("2026-11-25T00:00:00Z").unwrap();
        let s = parse_role_credentials("r", DOC, t0).unwrap();
        assert_eq!((s.access_key_id.as_str(), s.security_token.as_deref()), ("STS.abc", Some("token-7c1")));
        // Six hours: refreshed 15 minutes before the end (the margin's cap), not earlier.
        let expires = t0 + 6 * 3600;
        assert!(!s.needs_refresh(expires - 16 * 60));
        assert!(s.needs_refresh(expires - 15 * 60));
        // A short lifetime: refreshed with a third of it left.
        let short = Session { expires_at: Some(t0 + 9), fetched_at: t0, ..s.clone() };
        assert!(!short.needs_refresh(t0 + 5));
        assert!(short.needs_refresh(t0 + 6));
    }

    #[test]
    fn secrets_never_show_in_debug() {
        let s = parse_role_credentials("r", DOC, 0).unwrap();
        let shown = format!("{s:?}");
        assert!(!shown.contains("secret-9f3") && !shown.contains("token-7c1") && shown.contains("STS.abc"), "{shown}");
    }

    #[test]
    fn bad_documents_and_settings_are_refused_by_name() {
        assert!(parse_role_credentials("r", r#"{"Code":"Failed","AccessKeyId":"","AccessKeySecret":"","SecurityToken":"","Expiration":""}"#, 0).unwrap_err().to_string().contains("Failed"));
        assert!(parse_role_credentials("r", "{}", 0).is_err());
        let e = Source::from_settings(SourceKind::RamRole, std::path::Path::new("/nope"), "100.100.100.200", "").unwrap_err().to_string();
        assert!(e.contains("cloud.metadata_url"), "{e}");
        let e = Source::from_settings(SourceKind::File, std::path::Path::new("/nope"), INSTANCE_METADATA_URL, "role").unwrap_err().to_string();
        assert!(e.contains("cloud.ram_role"), "{e}");
        let ok = Source::from_settings(SourceKind::RamRole, std::path::Path::new("/nope"), "http://m/latest/meta-data/", "r").unwrap();
        assert_eq!(ok, Source::RamRole { metadata_url: "http://m/latest/meta-data".into(), role: "r".into() });
    }
}
