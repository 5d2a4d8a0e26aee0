//! Routing rules as data: per app and business key, which providers serve each channel
//! (in order: failover), which channels to fall back through, and what to do on which
//! errors. Pure data and decisions; the routes table adapter (`store::routes`, seeded
//! from `infra/routes.json` with `pushgate routes seed`) loads and caches them.
//!
//! ```json
//! [{"app": "demo", "key": "order_shipped",
//!   "providers": {"sms": ["aliyun", "tencent"], "email": ["ses", "smtp"]},
//!   "channels": ["wechat", "sms", "email"],
//!   "rules": [{"when": {"provider": "aliyun", "code": "isv.MOBILE_NUMBER_ILLEGAL"}, "action": "switch_channel"},
//!             {"when": {"class": "retryable"}, "action": "switch_provider"}]}]
//! ```
//! `key` `*` is the app's default route. Without a route, the app's own provider order
//! (`sms_order`, `email_order`) applies, with the default actions of [`default_action`].

use std::collections::HashMap;
use std::sync::Arc;

use serde::Deserialize;

use crate::delivery::{ErrorClass, ProviderError};
use crate::message::Channel;

#[derive(Debug, thiserror::Error)]
pub enum RoutingError {
    #[error("routes unavailable: {0}")]
    Unavailable(String),
    #[error("invalid route: {0}")]
    Invalid(String),
}

/// What to do after a failed send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Try the same provider again later (exponential backoff).
    Retry,
    /// Give up on this provider for this message; try the channel's next provider.
    SwitchProvider,
    /// Give up on this channel; try the next channel of the fallback sequence.
    SwitchChannel,
    /// End `failed` now.
    Fail,
}

/// When a rule applies: to a send's answer (the default), or to a delivery receipt that
/// reported the message failed after it was sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scene {
    #[default]
    Send,
    /// A failed receipt: the provider accepted the message, then reported it undelivered.
    /// Such a failure is of class `permanent` with the vendor's code (Aliyun `err_code`,
    /// Twilio `ErrorCode`, …); only `switch_provider`, `switch_channel` and `fail` apply.
    Receipt,
}

/// Conditions of a rule; every one given must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct When {
    #[serde(default)]
    pub scene: Scene,
    #[serde(default)]
    pub class: Option<ErrorClass>,
    #[serde(default)]
    pub provider: Option<String>,
    /// The provider's error code; a trailing `*` matches a prefix (`isv.*`).
    #[serde(default)]
    pub code: Option<String>,
}

impl When {
    fn matches(&self, provider: &str, e: &ProviderError) -> bool {
        self.class.is_none_or(|c| c == e.class)
            && self.provider.as_deref().is_none_or(|p| p == provider)
            && self.code.as_deref().is_none_or(|c| match c.strip_suffix('*') {
                Some(prefix) => e.code.starts_with(prefix),
                None => e.code == c,
            })
    }
}

/// One rule: the first whose `when` matches decides.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    #[serde(default)]
    pub when: When,
    pub action: Action,
}

/// How one app's messages of one business key travel.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Providers per channel, in order of preference.
    #[serde(default)]
    pub providers: HashMap<Channel, Vec<String>>,
    /// The channel fallback sequence; a message falls back only to channels it has a
    /// recipient for (`fallback` in the request). Empty: the request's own order.
    #[serde(default)]
    pub channels: Vec<Channel>,
    #[serde(default)]
    pub rules: Vec<Rule>,
}

/// The action when no rule matches. Deferrable and ambiguous errors never get here:
/// throttles defer, ambiguous sends follow the provider's ambiguity policy.
pub fn default_action(class: ErrorClass) -> Action {
    match class {
        ErrorClass::Retryable | ErrorClass::Ambiguous | ErrorClass::Deferrable => Action::Retry,
        // The account is spent: another provider may still send.
        ErrorClass::Quota => Action::SwitchProvider,
        ErrorClass::Permanent => Action::Fail,
    }
}

impl Route {
    /// What to do after `provider` failed with `e` when sending.
    pub fn decide(&self, provider: &str, e: &ProviderError) -> Action {
        self.rules
            .iter()
            .filter(|r| r.when.scene == Scene::Send)
            .find(|r| r.when.matches(provider, e))
            .map(|r| r.action)
            .unwrap_or_else(|| default_action(e.class))
    }

    /// What to do after `provider`'s receipt reported the message failed with the
    /// vendor's `code`: the first receipt rule that matches, else nothing (the message
    /// stays `failed`).
    pub fn on_failed_receipt(&self, provider: &str, code: &str) -> Option<Action> {
        let e = ProviderError::new(ErrorClass::Permanent, code, "failed receipt");
        self.rules
            .iter()
            .filter(|r| r.when.scene == Scene::Receipt)
            .find(|r| r.when.matches(provider, &e))
            .map(|r| r.action)
    }

    /// Whether any rule acts on failed receipts (else a failed receipt costs nothing more).
    pub fn has_receipt_rules(&self) -> bool {
        self.rules.iter().any(|r| r.when.scene == Scene::Receipt)
    }

    /// The channels to try, in order: `primary` first, then the fallback channels the
    /// message has recipients for, in the route's order (else the message's order).
    pub fn legs(&self, primary: Channel, available: &[Channel]) -> Vec<Channel> {
        let mut out = vec![primary];
        let order: Vec<Channel> = if self.channels.is_empty() {
            available.to_vec()
        } else {
            self.channels.clone()
        };
        for c in order {
            if c != primary && available.contains(&c) && !out.contains(&c) {
                out.push(c);
            }
        }
        out
    }
}

/// One entry of a routes file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteDoc {
    app: String,
    key: String,
    #[serde(default)]
    providers: HashMap<Channel, Vec<String>>,
    #[serde(default)]
    channels: Vec<Channel>,
    #[serde(default)]
    rules: Vec<Rule>,
}

/// Every route, by app and key.
#[derive(Debug, Clone, Default)]
pub struct Routes(HashMap<(String, String), Arc<Route>>);

impl Routes {
    /// Parses a routes file (a JSON array of `{app, key, providers, channels, rules}`).
    /// A receipt rule (`"scene": "receipt"`) that could never match (a class other than
    /// `permanent`) or asks for what a receipt cannot do (`retry`) is refused.
    pub fn parse(json: &str) -> Result<Routes, RoutingError> {
        let docs: Vec<RouteDoc> = serde_json::from_str(json).map_err(|e| RoutingError::Invalid(e.to_string()))?;
        for d in &docs {
            for (i, r) in d.rules.iter().enumerate() {
                if r.when.scene != Scene::Receipt {
                    continue;
                }
                let at = format!("{}/{} rule {i}", d.app, d.key);
                if r.when.class.is_some_and(|c| c != ErrorClass::Permanent) {
                    return Err(RoutingError::Invalid(format!(
                        "{at}: a failed receipt is of class permanent"
                    )));
                }
                if r.action == Action::Retry {
                    return Err(RoutingError::Invalid(format!(
                        "{at}: a failed receipt cannot be retried on the provider that reported it"
                    )));
                }
            }
        }
        Ok(Routes(
            docs.into_iter()
                .map(|d| {
                    let route = Route {
                        providers: d.providers,
                        channels: d.channels,
                        rules: d.rules,
                    };
                    ((d.app, d.key), Arc::new(route))
                })
                .collect(),
        ))
    }

    /// Every route as (app, key, route), sorted.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str, &Route)> {
        let mut all: Vec<_> = self
            .0
            .iter()
            .map(|((a, k), r)| (a.as_str(), k.as_str(), r.as_ref()))
            .collect();
        all.sort_by(|x, y| (x.0, x.1).cmp(&(y.0, y.1)));
        all.into_iter()
    }

    /// Whether any route of `app` (any app's, for `None`) acts on failed receipts.
    pub fn any_receipt_rules(&self, app: Option<&str>) -> bool {
        self.0
            .iter()
            .any(|((a, _), r)| app.is_none_or(|app| a == app) && r.has_receipt_rules())
    }

    /// The route for `app` and business `key`: the key's own, else the app's `*`.
    pub fn find(&self, app: &str, key: Option<&str>) -> Option<Arc<Route>> {
        key.and_then(|k| self.0.get(&(app.to_string(), k.to_string())))
            .or_else(|| self.0.get(&(app.to_string(), "*".to_string())))
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(class: ErrorClass, code: &str) -> ProviderError {
        ProviderError::new(class, code, "x")
    }

    #[test]
    fn the_first_matching_rule_decides_and_defaults_follow_the_error_class() {
        let routes = Routes::parse(
            r#"[{"app":"a","key":"*","rules":[
                {"when":{"provider":"aliyun","code":"isv.MOBILE*"},"action":"switch_channel"},
                {"when":{"class":"retryable"},"action":"switch_provider"},
                {"when":{"code":"isv.MOBILE_NUMBER_ILLEGAL"},"action":"retry"}]}]"#,
        )
        .unwrap();
        let r = routes.find("a", Some("anything")).unwrap();
        assert_eq!(
            r.decide("aliyun", &err(ErrorClass::Permanent, "isv.MOBILE_NUMBER_ILLEGAL")),
            Action::SwitchChannel
        );
        assert_eq!(
            r.decide("tencent", &err(ErrorClass::Permanent, "isv.MOBILE_NUMBER_ILLEGAL")),
            Action::Retry
        );
        assert_eq!(
            r.decide("tencent", &err(ErrorClass::Retryable, "500")),
            Action::SwitchProvider
        );
        assert_eq!(
            r.decide("tencent", &err(ErrorClass::Quota, "q")),
            Action::SwitchProvider
        );
        assert_eq!(r.decide("tencent", &err(ErrorClass::Permanent, "p")), Action::Fail);
        assert!(routes.find("b", None).is_none());
    }

    #[test]
    fn a_key_route_wins_over_the_app_default_and_legs_follow_the_route_order() {
        let routes = Routes::parse(
            r#"[{"app":"a","key":"*","channels":["email"]},
                {"app":"a","key":"otp","channels":["wechat","sms","email"]}]"#,
        )
        .unwrap();
        let otp = routes.find("a", Some("otp")).unwrap();
        assert_eq!(
            otp.legs(Channel::Wechat, &[Channel::Email, Channel::Sms]),
            vec![Channel::Wechat, Channel::Sms, Channel::Email]
        );
        // Only channels with a recipient, and never the primary twice.
        assert_eq!(
            otp.legs(Channel::Sms, &[Channel::Email]),
            vec![Channel::Sms, Channel::Email]
        );
        assert_eq!(routes.find("a", Some("other")).unwrap().channels, vec![Channel::Email]);
        assert_eq!(
            Route::default().legs(Channel::Sms, &[Channel::Email, Channel::Webhook]),
            vec![Channel::Sms, Channel::Email, Channel::Webhook]
        );
    }

    #[test]
    fn receipt_rules_apply_to_failed_receipts_only_and_send_rules_only_to_sends() {
        let routes = Routes::parse(
            r#"[{"app":"a","key":"*","rules":[
                {"when":{"scene":"receipt","provider":"aliyun","code":"MN:0001"},"action":"fail"},
                {"when":{"scene":"receipt","class":"permanent"},"action":"switch_channel"},
                {"when":{"class":"permanent"},"action":"switch_provider"}]},
                {"app":"b","key":"*","rules":[{"when":{"class":"permanent"},"action":"switch_channel"}]}]"#,
        )
        .unwrap();
        let a = routes.find("a", None).unwrap();
        let cases = [
            ("aliyun", "MN:0001", Some(Action::Fail)),
            ("aliyun", "DELIVRD", Some(Action::SwitchChannel)),
            ("twilio", "30003", Some(Action::SwitchChannel)),
        ];
        for (provider, code, want) in cases {
            assert_eq!(a.on_failed_receipt(provider, code), want, "{provider} {code}");
        }
        // A send's permanent error ignores the receipt rules.
        assert_eq!(
            a.decide("aliyun", &err(ErrorClass::Permanent, "MN:0001")),
            Action::SwitchProvider
        );
        // Send rules never act on receipts.
        let b = routes.find("b", None).unwrap();
        assert_eq!(b.on_failed_receipt("aliyun", "x"), None);
        assert!(routes.any_receipt_rules(Some("a")) && routes.any_receipt_rules(None));
        assert!(!routes.any_receipt_rules(Some("b")) && !routes.any_receipt_rules(Some("c")));
    }

    #[test]
    fn receipt_rules_that_could_never_act_are_refused() {
        for rule in [
            r#"{"when":{"scene":"receipt","class":"retryable"},"action":"switch_channel"}"#,
            r#"{"when":{"scene":"receipt"},"action":"retry"}"#,
            r#"{"when":{"scene":"later"},"action":"fail"}"#,
        ] {
            let json = format!(r#"[{{"app":"a","key":"*","rules":[{rule}]}}]"#);
            assert!(Routes::parse(&json).is_err(), "{rule}");
        }
    }

    #[test]
    fn the_repo_routes_file_parses() {
        let routes = Routes::parse(include_str!("../../infra/routes.json")).unwrap();
        assert!(routes.find("dev-app", Some("order_shipped")).is_some());
    }

    #[test]
    fn unknown_fields_and_actions_are_refused() {
        assert!(Routes::parse(r#"[{"app":"a","key":"*","rulez":[]}]"#).is_err());
        assert!(Routes::parse(r#"[{"app":"a","key":"*","rules":[{"action":"explode"}]}]"#).is_err());
        assert!(Routes::parse(r#"[{"app":"a","key":"*","providers":{"fax":["x"]}}]"#).is_err());
    }
}
