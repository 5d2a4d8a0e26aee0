//! What the chat robots (DingTalk, WeCom, Feishu) have in common: a message's `to` names
//! one of the app's robots, the body is markdown or text, and the answer is a JSON
//! `{code, message}` pair read the same way. Each robot's module keeps its own signing,
//! body layout and documented error codes.

use std::collections::HashMap;

use sha2::Digest;

use crate::apps::RobotAccount;
use crate::delivery::{ErrorClass, ProviderError};

/// The account of the robot named `to` among `robots`: its token, hashed (hex of the first
/// 8 bytes of SHA-256) so it never leaves as a secret; `"default"` for a name the app
/// does not have (the send then fails as `unknown_robot`); `None` without any robot.
pub(crate) fn account(robots: &HashMap<String, RobotAccount>, to: &str) -> Option<String> {
    if robots.is_empty() {
        return None;
    }
    Some(robots.get(to).map_or_else(
        || "default".to_string(),
        |r| hex::encode(&sha2::Sha256::digest(r.token.as_bytes())[..8]),
    ))
}

/// The app's robot named `name` (a message's `to`), or a permanent error.
pub(crate) fn lookup<'a>(
    robots: &'a HashMap<String, RobotAccount>,
    name: &str,
    vendor: &str,
) -> Result<&'a RobotAccount, ProviderError> {
    robots.get(name).ok_or_else(|| {
        ProviderError::new(
            ErrorClass::Permanent,
            "unknown_robot",
            format!("the app has no {vendor} robot named {name:?}"),
        )
    })
}
