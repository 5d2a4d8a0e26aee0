//! A send request as a client writes it, and its validation: every bad field is
//! named by its JSON Pointer, and recipients are normalised (E.164, lower-case email).

use serde_json::{Map, Value};

use crate::message::{Channel, Content};
use crate::problem::FieldError;
/// A validated send request, before rendering.
#[derive(Debug, Clone, PartialEq)]
pub struct SendRequest {
    pub channel: Channel,
    pub to: String,
    pub body: RequestBody,
    /// Business key choosing the routing rule (default: the template id).
    pub key: Option<String>,
    /// Other channels' recipients, for a route's channel fallback, in the client's order.
    pub fallback: Vec<(Channel, String)>,
    /// When to send (unix ms), if not at once; its range is checked against the clock by
    /// [`crate::schedule::when`].
    pub send_at: Option<i64>,
}

/// Either a template with data or inline content.
#[derive(Debug, Clone, PartialEq)]
pub enum RequestBody {
    Template { id: String, data: Map<String, Value> },
    Inline(Box<Content>),
}

/// How deep a request body may nest (the body object is level 1). A message is stored
/// with up to three more levels around a request's values (`alternates`, a fallback's
/// entry, its `content`), and DynamoDB refuses items nested deeper than 32: so a body
/// within this limit can always be stored, and one beyond it is a 422 naming the spot.
pub const MAX_JSON_DEPTH: usize = 24;
/// At most this many storage errors are listed (a huge body could have thousands).
const MAX_STORAGE_ERRORS: usize = 20;

const TOP_LEVEL_FIELDS: [&str; 8] = [
    "channel", "to", "template", "data", "content", "key", "fallback", "send_at",
];
/// At most this many fallback recipients (one per other channel is plenty).
const MAX_FALLBACKS: usize = 3;

/// Validates a parsed JSON body, collecting every field error (JSON Pointers) rather than
/// stopping at the first. `allow_private_webhooks` admits loopback/private webhook targets.
pub fn validate(value: &Value, allow_private_webhooks: bool) -> Result<SendRequest, Vec<FieldError>> {
    let mut errors = Vec::new();
    let Some(obj) = value.as_object() else {
        return Err(vec![FieldError::new("", "the body must be a JSON object")]);
    };
    check_storable(value, &mut String::new(), 1, &mut errors);
    if !errors.is_empty() {
        // The rest of validation would only repeat these values' pointers.
        return Err(errors);
    }
    for key in obj.keys() {
        if !TOP_LEVEL_FIELDS.contains(&key.as_str()) {
            errors.push(FieldError::new(format!("/{}", escape(key)), "unknown field"));
        }
    }

    let channel = match obj.get("channel") {
        None => {
            errors.push(FieldError::new("/channel", "is required"));
            None
        }
        Some(Value::String(s)) => match Channel::parse(s) {
            Some(c) => Some(c),
            None => {
                errors.push(FieldError::new(
                    "/channel",
                    "must be one of: email, webhook, sms, dingtalk, wecom, feishu, wechat",
                ));
                None
            }
        },
        Some(_) => {
            errors.push(FieldError::new("/channel", "must be a string"));
            None
        }
    };

    let to = match obj.get("to") {
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Some(Value::String(_)) => {
            errors.push(FieldError::new("/to", "must not be empty"));
            None
        }
        Some(_) => {
            errors.push(FieldError::new("/to", "must be a string"));
            None
        }
        None => {
            errors.push(FieldError::new("/to", "is required"));
            None
        }
    };
    let to = match (channel, to) {
        (Some(channel), Some(to)) => match normalize_recipient(channel, &to, allow_private_webhooks) {
            Ok(normal) => Some(normal),
            Err(why) => {
                errors.push(FieldError::new("/to", why));
                None
            }
        },
        (_, to) => to,
    };

    let body = match (obj.get("template"), obj.get("content")) {
        (Some(_), Some(_)) => {
            errors.push(FieldError::new("/content", "give either template or content, not both"));
            None
        }
        (None, None) => {
            errors.push(FieldError::new("/template", "either template or content is required"));
            None
        }
        (Some(t), None) => {
            let id = match t {
                Value::String(s) if valid_template_id(s) => Some(s.clone()),
                _ => {
                    errors.push(FieldError::new(
                        "/template",
                        "must be a template id ([a-z0-9_.-], 1-64 chars)",
                    ));
                    None
                }
            };
            let data = match obj.get("data") {
                None => Some(Map::new()),
                Some(Value::Object(m)) => Some(m.clone()),
                Some(_) => {
                    errors.push(FieldError::new("/data", "must be an object"));
                    None
                }
            };
            match (id, data) {
                (Some(id), Some(data)) => Some(RequestBody::Template { id, data }),
                _ => None,
            }
        }
        (None, Some(c)) => {
            if obj.contains_key("data") {
                errors.push(FieldError::new("/data", "only allowed with template"));
            }
            validate_content(c, channel, &mut errors).map(|c| RequestBody::Inline(Box::new(c)))
        }
    };

    let key = match obj.get("key") {
        None => None,
        Some(Value::String(s)) if valid_template_id(s) => Some(s.clone()),
        Some(_) => {
            errors.push(FieldError::new(
                "/key",
                "must be a business key ([a-z0-9_.-], 1-64 chars)",
            ));
            None
        }
    };
    let fallback = validate_fallback(obj.get("fallback"), channel, allow_private_webhooks, &mut errors);
    let send_at = match obj.get("send_at") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => match crate::schedule::parse_send_at(s) {
            Some(at) => Some(at),
            None => {
                errors.push(FieldError::new(
                    "/send_at",
                    "must be an RFC 3339 date-time with an offset, e.g. 2026-01-01T09:00:00+08:00",
                ));
                None
            }
        },
        Some(_) => {
            errors.push(FieldError::new("/send_at", "must be a string (RFC 3339 date-time)"));
            None
        }
    };

    match (channel, to, body) {
        (Some(channel), Some(to), Some(body)) if errors.is_empty() => Ok(SendRequest {
            channel,
            to,
            body,
            key,
            fallback,
            send_at,
        }),
        _ => Err(errors),
    }
}

/// `fallback`: `[{"channel": "sms", "to": "+86…"}, …]`, one entry per other channel.
fn validate_fallback(
    value: Option<&Value>,
    primary: Option<Channel>,
    allow_private: bool,
    errors: &mut Vec<FieldError>,
) -> Vec<(Channel, String)> {
    let Some(value) = value else { return Vec::new() };
    let Some(items) = value.as_array() else {
        errors.push(FieldError::new("/fallback", "must be an array of {channel, to}"));
        return Vec::new();
    };
    if items.len() > MAX_FALLBACKS {
        errors.push(FieldError::new("/fallback", format!("at most {MAX_FALLBACKS} entries")));
        return Vec::new();
    }
    let mut out: Vec<(Channel, String)> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let at = |f: &str| format!("/fallback/{i}{f}");
        let Some(o) = item.as_object() else {
            errors.push(FieldError::new(at(""), "must be an object {channel, to}"));
            continue;
        };
        if let Some(k) = o.keys().find(|k| !matches!(k.as_str(), "channel" | "to")) {
            errors.push(FieldError::new(at(&format!("/{}", escape(k))), "unknown field"));
        }
        let channel = match o.get("channel").and_then(Value::as_str).map(Channel::parse) {
            Some(Some(c)) if Some(c) == primary || out.iter().any(|(d, _)| *d == c) => {
                errors.push(FieldError::new(
                    at("/channel"),
                    "each channel may appear once, other than `channel`",
                ));
                continue;
            }
            Some(Some(c)) => c,
            _ => {
                errors.push(FieldError::new(
                    at("/channel"),
                    "must be one of: email, webhook, sms, dingtalk, wecom, feishu, wechat",
                ));
                continue;
            }
        };
        match o.get("to").and_then(Value::as_str).map(str::trim) {
            Some(to) if !to.is_empty() => match normalize_recipient(channel, to, allow_private) {
                Ok(to) => out.push((channel, to)),
                Err(why) => errors.push(FieldError::new(at("/to"), why)),
            },
            _ => errors.push(FieldError::new(at("/to"), "is required (a non-empty string)")),
        }
    }
    out
}

const CONTENT_FIELDS: [&str; 8] = [
    "subject", "text", "html", "body", "markdown", "mentions", "sms", "wechat",
];

fn typed_field<T: serde::de::DeserializeOwned>(
    obj: &Map<String, Value>,
    name: &str,
    errors: &mut Vec<FieldError>,
) -> Option<T> {
    match obj.get(name) {
        None | Some(Value::Null) => None,
        Some(v) => match serde_json::from_value(v.clone()) {
            Ok(t) => Some(t),
            Err(e) => {
                errors.push(FieldError::new(format!("/content/{name}"), e.to_string()));
                None
            }
        },
    }
}

fn validate_content(value: &Value, channel: Option<Channel>, errors: &mut Vec<FieldError>) -> Option<Content> {
    let Some(obj) = value.as_object() else {
        errors.push(FieldError::new("/content", "must be an object"));
        return None;
    };
    let before = errors.len();
    let mut text_field = |name: &str| -> Option<String> {
        match obj.get(name) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => {
                errors.push(FieldError::new(format!("/content/{name}"), "must be a string"));
                None
            }
        }
    };
    let subject = text_field("subject");
    let text = text_field("text");
    let html = text_field("html");
    let markdown = text_field("markdown");
    let content = Content {
        subject,
        text,
        html,
        markdown,
        body: obj.get("body").cloned(),
        mentions: typed_field(obj, "mentions", errors),
        sms: typed_field(obj, "sms", errors),
        wechat: typed_field(obj, "wechat", errors),
    };
    for key in obj.keys() {
        if !CONTENT_FIELDS.contains(&key.as_str()) {
            errors.push(FieldError::new(format!("/content/{}", escape(key)), "unknown field"));
        }
    }
    // Channel rules only make sense once every field parsed.
    if let (Some(channel), true) = (channel, errors.len() == before) {
        errors.extend(check_content(channel, &content, "/content"));
    }
    (errors.len() == before).then_some(content)
}

/// Channel rules for content, shared by inline content and rendered templates.
pub fn check_content(channel: Channel, content: &Content, at: &str) -> Vec<FieldError> {
    let mut errors = Vec::new();
    match channel {
        Channel::Email => {
            if content.subject.as_deref().is_none_or(|s| s.trim().is_empty()) {
                errors.push(FieldError::new(format!("{at}/subject"), "email needs a subject"));
            }
            // A subject is a mail header: a line break in it could start another header.
            if content
                .subject
                .as_deref()
                .is_some_and(|s| s.chars().any(char::is_control))
            {
                errors.push(FieldError::new(
                    format!("{at}/subject"),
                    "must be one line without control characters",
                ));
            }
            if content.text.is_none() && content.html.is_none() {
                errors.push(FieldError::new(format!("{at}/text"), "email needs text or html"));
            }
            if content.body.is_some() {
                errors.push(FieldError::new(format!("{at}/body"), "not used by email"));
            }
        }
        Channel::Webhook => {
            if content == &Content::default() {
                errors.push(FieldError::new(
                    at.to_string(),
                    "needs at least one of subject, text, html, body",
                ));
            }
        }
        Channel::Sms => {
            if content.text.is_none() && content.sms.is_none() {
                errors.push(FieldError::new(
                    format!("{at}/sms"),
                    "sms needs provider templates (sms) or text",
                ));
            }
        }
        Channel::Dingtalk | Channel::Wecom | Channel::Feishu => {
            if content.text.is_none() && content.markdown.is_none() {
                errors.push(FieldError::new(
                    format!("{at}/text"),
                    "a robot message needs text or markdown",
                ));
            }
        }
        Channel::Wechat => {
            if content.wechat.is_none() {
                errors.push(FieldError::new(
                    format!("{at}/wechat"),
                    "wechat needs template_id and data",
                ));
            }
        }
    }
    errors
}

/// Checks a recipient for its channel and returns its normal form (E.164 for phones).
fn normalize_recipient(channel: Channel, to: &str, allow_private: bool) -> Result<String, String> {
    match channel {
        Channel::Sms => normalize_phone(to),
        Channel::Dingtalk | Channel::Wecom | Channel::Feishu => {
            if valid_name(to, 64) {
                Ok(to.to_string())
            } else {
                Err("must name one of the app's robots ([A-Za-z0-9_-], 1-64 chars)".into())
            }
        }
        Channel::Wechat => {
            if valid_name(to, 128) {
                Ok(to.to_string())
            } else {
                Err("must be an OpenID".into())
            }
        }
        _ => validate_recipient(channel, to, allow_private).map(|_| to.to_string()),
    }
}

/// Parses a phone number in international form and returns it as E.164.
pub fn normalize_phone(raw: &str) -> Result<String, String> {
    let why = || "must be a valid phone number in international form, e.g. +8613800138000".to_string();
    if !raw.trim_start().starts_with('+') {
        return Err(why());
    }
    // Only what a written phone number holds, and not much of it: the parser is not
    // ours, and it need not see anything else.
    if raw.len() > MAX_PHONE_CHARS
        || !raw
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'+' | b' ' | b'-' | b'(' | b')' | b'.'))
    {
        return Err(why());
    }
    let number = phonenumber::parse(None, raw).map_err(|_| why())?;
    if !phonenumber::is_valid(&number) {
        return Err(why());
    }
    Ok(number.format().mode(phonenumber::Mode::E164).to_string())
}

/// The longest written phone number accepted (E.164 has at most 15 digits; the rest is
/// room for spaces, dashes and parentheses).
const MAX_PHONE_CHARS: usize = 40;

fn valid_name(s: &str, max: usize) -> bool {
    !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn validate_recipient(channel: Channel, to: &str, allow_private: bool) -> Result<(), String> {
    match channel {
        Channel::Email => {
            let valid = to.len() <= 254
                && to.split_once('@').is_some_and(|(local, domain)| {
                    !local.is_empty()
                        && domain.contains('.')
                        && !domain.starts_with('.')
                        && !domain.ends_with('.')
                        && !to
                            .chars()
                            .any(|c| c.is_whitespace() || c.is_control() || c == '<' || c == '>' || c == ',')
                        && domain.matches('@').count() == 0
                });
            if valid {
                Ok(())
            } else {
                Err("must be an email address".into())
            }
        }
        Channel::Webhook => crate::net::check_webhook_url(to, allow_private).map(|_| ()),
        _ => Ok(()),
    }
}

fn valid_template_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.' || b == b'-')
}

/// Whether a number can be a DynamoDB `N`: zero, or a finite magnitude within
/// 1E-130 ..= 9.99…E+125 (f64 has fewer than DynamoDB's 38 significant digits).
pub fn storable_number(f: f64) -> bool {
    f == 0.0 || (f.is_finite() && (1e-130..1e126).contains(&f.abs()))
}

/// Finds values DynamoDB cannot store, naming each by JSON Pointer: numbers outside its
/// range (magnitudes below 1E-130 or from 1E+126) and nesting beyond [`MAX_JSON_DEPTH`].
/// Without this such a request failed at the write and was answered 503, so clients
/// retried it forever. `depth` is the nesting level of `value` (the body is 1).
fn check_storable(value: &Value, pointer: &mut String, depth: usize, errors: &mut Vec<FieldError>) {
    if errors.len() >= MAX_STORAGE_ERRORS {
        return;
    }
    match value {
        Value::Number(n) if !n.as_f64().is_some_and(storable_number) => {
            errors.push(FieldError::new(
                pointer.clone(),
                "number out of range (its magnitude must be 0 or between 1e-130 and 9.9e125)",
            ));
        }
        Value::Array(_) | Value::Object(_) if depth > MAX_JSON_DEPTH => {
            errors.push(FieldError::new(
                pointer.clone(),
                format!("nested too deep (at most {MAX_JSON_DEPTH} levels of objects and arrays)"),
            ));
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let len = pointer.len();
                pointer.push_str(&format!("/{i}"));
                check_storable(item, pointer, depth + 1, errors);
                pointer.truncate(len);
            }
        }
        Value::Object(map) => {
            for (k, item) in map {
                let len = pointer.len();
                pointer.push('/');
                pointer.push_str(&escape(k));
                if k.is_empty() {
                    // DynamoDB keeps no map entry under an empty name.
                    errors.push(FieldError::new(pointer.clone(), "object keys must not be empty"));
                } else {
                    check_storable(item, pointer, depth + 1, errors);
                }
                pointer.truncate(len);
            }
        }
        _ => {}
    }
}

/// JSON Pointer escaping (RFC 6901).
fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pointers(v: Value) -> Vec<String> {
        validate(&v, false)
            .unwrap_err()
            .into_iter()
            .map(|e| e.pointer)
            .collect()
    }

    #[test]
    fn inline_email_is_valid() {
        let req = validate(
            &json!({"channel":"email","to":"a@example.com","content":{"subject":"Hi","text":"Hello"}}),
            false,
        )
        .unwrap();
        assert_eq!(req.channel, Channel::Email);
        assert!(matches!(req.body, RequestBody::Inline(ref c) if c.subject.as_deref() == Some("Hi")));
    }

    #[test]
    fn every_bad_field_is_named() {
        assert_eq!(
            pointers(json!({"channel":"fax","to":3,"content":{"subject":1}})),
            vec!["/channel", "/to", "/content/subject"]
        );
        assert_eq!(
            pointers(json!({"channel":"email","to":"not-an-email","template":"x"})),
            vec!["/to"]
        );
        assert_eq!(pointers(json!({"channel":"email","to":"a@b.co"})), vec!["/template"]);
        assert_eq!(
            pointers(json!({"channel":"email","to":"a@b.co","content":{"text":"x"},"extra":1})),
            vec!["/extra", "/content/subject"]
        );
        assert_eq!(pointers(json!({"channel":"sms","to":"+1","template":"t"})), vec!["/to"]);
        assert_eq!(
            pointers(json!({"channel":"sms","to":"+8613800138000","content":{"html":"x"}})),
            vec!["/content/sms"]
        );
        assert_eq!(
            pointers(json!({"channel":"dingtalk","to":"ops robot","content":{"text":"x"}})),
            vec!["/to"]
        );
        assert_eq!(
            pointers(json!({"channel":"wechat","to":"oABC","content":{"wechat":{"template_id":1}}})),
            vec!["/content/wechat"]
        );
        assert_eq!(pointers(json!([1])), vec![""]);
    }

    #[test]
    fn phone_numbers_become_e164() {
        assert_eq!(normalize_phone("+86 138 0013 8000").unwrap(), "+8613800138000");
        assert_eq!(normalize_phone("+1 (415) 555-2671").unwrap(), "+14155552671");
        assert!(normalize_phone("13800138000").is_err(), "no country code");
        assert!(normalize_phone("+1 555").is_err());
        let req = validate(
            &json!({"channel":"sms","to":"+44 7911 123456","content":{"text":"hi"}}),
            false,
        )
        .unwrap();
        assert_eq!(req.to, "+447911123456");
    }

    #[test]
    fn webhook_targets_on_private_addresses_are_refused() {
        for url in [
            "http://127.0.0.1/x",
            "http://localhost:8080/",
            "http://169.254.169.254/latest",
            "http://10.0.0.1/",
            "ftp://example.com/",
        ] {
            let v = json!({"channel":"webhook","to":url,"content":{"text":"x"}});
            assert_eq!(pointers(v.clone()), vec!["/to"], "{url}");
            assert!(validate(&v, true).is_ok() || url.starts_with("ftp"), "{url}");
        }
    }

    #[test]
    fn unstorable_numbers_and_nesting_are_named() {
        assert_eq!(
            pointers(
                json!({"channel":"webhook","to":"https://example.com/h","content":{"body":{"a":[1e200, 1e-200, 0, 1e125]}}})
            ),
            vec!["/content/body/a/0", "/content/body/a/1"]
        );
        assert_eq!(
            pointers(json!({"channel":"email","to":"a@b.co","template":"t","data":{"x~/y": -1e130}})),
            vec!["/data/x~0~1y"]
        );
        // Control characters are no part of an address.
        assert_eq!(
            pointers(json!({"channel":"email","to":"a\u{0}@example.com","content":{"subject":"s","text":"t"}})),
            vec!["/to"]
        );
        // A line break in a subject could start another mail header.
        assert_eq!(
            pointers(
                json!({"channel":"email","to":"a@b.co","content":{"subject":"hi\r\nBcc: x@evil.test","text":"t"}})
            ),
            vec!["/content/subject"]
        );
        // An empty key: DynamoDB keeps no map entry under an empty name.
        assert_eq!(
            pointers(json!({"channel":"webhook","to":"https://example.com/h","content":{"body":{"":1,"ok":{"":2}}}})),
            vec!["/content/body/", "/content/body/ok/"]
        );
        let mut deep = json!(1);
        for _ in 0..30 {
            deep = json!([deep]);
        }
        let errors = pointers(json!({"channel":"webhook","to":"https://example.com/h","content":{"body": deep}}));
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0], format!("/content/body{}", "/0".repeat(MAX_JSON_DEPTH - 2)));
        for ok in [0.0, 1e-130, -1e-130, 9.99e125, 5.0, -1.5e100] {
            assert!(storable_number(ok), "{ok}");
        }
        for bad in [1e126, 1e-131, f64::MAX, f64::MIN_POSITIVE, f64::NAN, f64::INFINITY] {
            assert!(!storable_number(bad), "{bad}");
        }
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn key() -> impl Strategy<Value = String> {
            prop_oneof![
                prop::sample::select(vec![
                    "channel",
                    "to",
                    "template",
                    "data",
                    "content",
                    "key",
                    "fallback",
                    "subject",
                    "text",
                    "html",
                    "body",
                    "markdown",
                    "mentions",
                    "sms",
                    "wechat",
                    "aliyun",
                    "template_id",
                ])
                .prop_map(str::to_string),
                "\\PC{0,8}",
            ]
        }

        fn leaf() -> impl Strategy<Value = Value> {
            prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(Value::from),
                any::<u64>().prop_map(Value::from),
                any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f).map(Value::Number)),
                prop::sample::select(vec![
                    1e200,
                    -1e-200,
                    1e126,
                    9.9e125,
                    1e-130,
                    1e-131,
                    f64::MAX,
                    f64::MIN_POSITIVE
                ])
                .prop_map(|f| json!(f)),
                "\\PC{0,16}".prop_map(Value::String),
                prop::sample::select(vec![
                    "email",
                    "webhook",
                    "sms",
                    "dingtalk",
                    "wechat",
                    "a@b.co",
                    "+8613800138000",
                    "https://example.com/x",
                    "welcome",
                    "ops",
                ])
                .prop_map(|s| json!(s)),
            ]
        }

        fn value() -> impl Strategy<Value = Value> {
            leaf().prop_recursive(6, 64, 6, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                    prop::collection::btree_map(key(), inner, 0..6)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        /// Whether every number in `v` is storable and it nests at most `max` levels.
        fn storable(v: &Value, depth: usize, max: usize) -> bool {
            match v {
                Value::Number(n) => n.as_f64().is_some_and(storable_number),
                Value::Array(a) => depth <= max && a.iter().all(|x| storable(x, depth + 1, max)),
                Value::Object(o) => depth <= max && o.values().all(|x| storable(x, depth + 1, max)),
                _ => true,
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            /// Any JSON value: an answer, never a panic; what is accepted can be stored.
            #[test]
            fn validate_never_panics_on_any_json(v in value(), private in any::<bool>()) {
                if validate(&v, private).is_ok() {
                    prop_assert!(storable(&v, 1, MAX_JSON_DEPTH));
                }
            }

            /// Plausible requests around any content body, nested up to far beyond the
            /// limit: deep ones are refused, none panics.
            #[test]
            fn deep_and_odd_bodies_are_answered(body in value(), levels in 0usize..200, channel in prop::sample::select(vec!["webhook", "email", "sms"])) {
                let mut nested = body;
                for _ in 0..levels {
                    nested = json!({"d": nested});
                }
                let v = json!({"channel": channel, "to": "https://example.com/h", "content": {"body": nested, "text": "t"}});
                let result = validate(&v, false);
                if result.is_ok() {
                    prop_assert!(storable(&v, 1, MAX_JSON_DEPTH));
                }
            }

            /// Any string as a phone number: E.164 or refused, and E.164 is a fixed point.
            #[test]
            fn phone_normalisation_is_total_and_idempotent(raw in "\\PC{0,40}|\\+[0-9 ()\\-.]{0,45}") {
                if let Ok(e164) = normalize_phone(&raw) {
                    prop_assert!(e164.starts_with('+'));
                    prop_assert!(e164[1..].bytes().all(|b| b.is_ascii_digit()));
                    prop_assert!(e164.len() <= 16);
                    prop_assert_eq!(normalize_phone(&e164), Ok(e164.clone()));
                }
            }

            /// Any string as an email recipient: refused, or one address without spaces.
            #[test]
            fn email_recipients_are_total(raw in "\\PC{0,40}|[a-z.+]{0,10}@[a-z.\\-]{0,12}") {
                if let Ok(to) = normalize_recipient(Channel::Email, raw.trim(), false) {
                    prop_assert_eq!(to.matches('@').count(), 1);
                    prop_assert!(!to.chars().any(char::is_whitespace));
                    prop_assert!(to.len() <= 254);
                }
            }
        }
    }
}
