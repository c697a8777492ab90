//! Operations shared by the HTTP API and the command line, so both do
//! exactly the same thing (and are tested once).

use crate::domain::{new_id, now_millis};
use crate::secrets::{random_token, token_hash, MasterKey};
use crate::store::{AppRow, Store, StoreError};
use crate::webpush::{Contact, VapidKey};

/// API keys start with this, so the auth layer knows what to look up.
pub const API_KEY_PREFIX: &str = "hk_";

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Crypto(String),
}

/// A new app and its API key, which is shown only here.
pub struct CreatedApp {
    pub app: AppRow,
    pub api_key: String,
}

pub fn validate_name(name: &str) -> Result<&str, ServiceError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(ServiceError::Invalid {
            field: "name",
            message: "name must be 1 to 100 characters".into(),
        });
    }
    Ok(name)
}

pub fn validate_contact(contact: &str) -> Result<Contact, ServiceError> {
    Contact::parse(contact.trim()).map_err(|e| ServiceError::Invalid {
        field: "contact",
        message: e.to_string(),
    })
}

fn new_vapid(master: &MasterKey, app_id: &str) -> Result<(String, Vec<u8>), ServiceError> {
    let key = VapidKey::generate().map_err(|e| ServiceError::Crypto(e.to_string()))?;
    Ok((
        key.public_key_base64(),
        master.seal(app_id, &key.to_pkcs8()),
    ))
}

pub async fn create_app(
    store: &Store,
    master: &MasterKey,
    name: &str,
    contact: &str,
    max_concurrency: u32,
) -> Result<CreatedApp, ServiceError> {
    let name = validate_name(name)?;
    let contact = validate_contact(contact)?;
    let id = new_id();
    let api_key = random_token(API_KEY_PREFIX);
    let (public, sealed) = new_vapid(master, &id)?;
    let app = AppRow {
        id,
        name: name.to_string(),
        contact: contact.as_str().to_string(),
        api_key_hash: token_hash(&api_key),
        vapid_public_key: public,
        vapid_private_sealed: sealed,
        vapid_generation: 1,
        max_concurrency: max_concurrency as i64,
        last_config_error: None,
        last_config_error_at: None,
        created_at: now_millis(),
    };
    store.app_insert(&app).await?;
    Ok(CreatedApp { app, api_key })
}

pub struct Regenerated {
    pub vapid_public_key: String,
    pub subscriptions_removed: u64,
    pub deliveries_removed: u64,
}

/// New VAPID credentials; `None` for an unknown app.
pub async fn regenerate_credentials(
    store: &Store,
    master: &MasterKey,
    app_id: &str,
) -> Result<Option<Regenerated>, ServiceError> {
    let (public, sealed) = new_vapid(master, app_id)?;
    Ok(store.app_regenerate(app_id, &public, &sealed).await?.map(
        |(subscriptions_removed, deliveries_removed)| Regenerated {
            vapid_public_key: public,
            subscriptions_removed,
            deliveries_removed,
        },
    ))
}
