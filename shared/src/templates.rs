//! Business templates rendered with minijinja at ingest, so a missing variable is a 422
//! naming it rather than a half-rendered message later. Strict undefined; HTML parts are
//! auto-escaped. Templates ship as config (`infra/templates.json`), one variant per channel.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use crate::cache::Bounded;

use minijinja::{AutoEscape, Environment, UndefinedBehavior};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::message::{Channel, Content};
use crate::problem::FieldError;

/// The templates bundled with the build.
pub const BUNDLED: &str = include_str!("../../infra/templates.json");

/// One business template: a variant per channel, plus variables it may go without.
#[derive(Debug, Deserialize)]
struct Definition {
    #[serde(default)]
    optional: Vec<String>,
    #[serde(flatten)]
    channels: HashMap<String, Variant>,
}

#[derive(Debug, Deserialize)]
struct Variant {
    subject: Option<String>,
    text: Option<String>,
    html: Option<String>,
    markdown: Option<String>,
    /// JSON parts: every string inside is a template.
    body: Option<Value>,
    mentions: Option<Value>,
    sms: Option<Value>,
    wechat: Option<Value>,
}

impl Variant {
    fn json_parts(&self) -> [(&'static str, Option<&Value>); 4] {
        [
            ("body", self.body.as_ref()),
            ("mentions", self.mentions.as_ref()),
            ("sms", self.sms.as_ref()),
            ("wechat", self.wechat.as_ref()),
        ]
    }
}

const TEXT_PARTS: [&str; 4] = ["subject", "text", "html", "markdown"];

/// Why a template could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("unknown template {0}")]
    UnknownTemplate(String),
    #[error("template {0} has no {1} variant")]
    NoVariant(String, &'static str),
    #[error("invalid template data")]
    Data(Vec<FieldError>),
    #[error("template set is invalid: {0}")]
    Invalid(String),
    #[error("template store unavailable: {0}")]
    Unavailable(String),
}

/// A compiled set of templates.
pub struct Templates {
    env: Environment<'static>,
    /// template id → channel → variant body (kept for JSON `body` rendering).
    variants: HashMap<String, HashMap<Channel, Variant>>,
    optional: HashMap<String, Vec<String>>,
}

impl Templates {
    /// Parses and compiles a template set, failing on any syntax error.
    pub fn parse(json: &str) -> Result<Self, TemplateError> {
        let raw: HashMap<String, Definition> =
            serde_json::from_str(json).map_err(|e| TemplateError::Invalid(e.to_string()))?;
        let mut env = Environment::new();
        // Printing an undefined value fails; testing one (`{% if carrier %}`) does not,
        // so declared optional variables work.
        env.set_undefined_behavior(UndefinedBehavior::SemiStrict);
        env.set_auto_escape_callback(|name| {
            if name.ends_with(".html") {
                AutoEscape::Html
            } else {
                AutoEscape::None
            }
        });
        let mut variants = HashMap::new();
        let mut optional = HashMap::new();
        for (id, definition) in raw {
            let mut map = HashMap::new();
            optional.insert(id.clone(), definition.optional);
            for (channel_name, variant) in definition.channels {
                let channel = Channel::parse(&channel_name)
                    .ok_or_else(|| TemplateError::Invalid(format!("{id}: unknown channel {channel_name}")))?;
                for (part, source) in [
                    ("subject", &variant.subject),
                    ("text", &variant.text),
                    ("html", &variant.html),
                    ("markdown", &variant.markdown),
                ] {
                    if let Some(src) = source {
                        let name = part_name(&id, channel, part);
                        env.add_template_owned(name, src.clone())
                            .map_err(|e| TemplateError::Invalid(format!("{id}/{channel_name}/{part}: {e}")))?;
                    }
                }
                map.insert(channel, variant);
            }
            variants.insert(id, map);
        }
        Ok(Self {
            env,
            variants,
            optional,
        })
    }

    /// The templates bundled with the build.
    pub fn bundled() -> Result<Self, TemplateError> {
        Self::parse(BUNDLED)
    }

    /// Template ids, sorted.
    pub fn ids(&self) -> Vec<&str> {
        let mut ids: Vec<&str> = self.variants.keys().map(String::as_str).collect();
        ids.sort_unstable();
        ids
    }

    /// Renders template `id` for `channel` with `data`.
    pub fn render(&self, id: &str, channel: Channel, data: &Map<String, Value>) -> Result<Content, TemplateError> {
        let by_channel = self
            .variants
            .get(id)
            .ok_or_else(|| TemplateError::UnknownTemplate(id.to_string()))?;
        let variant = by_channel
            .get(&channel)
            .ok_or_else(|| TemplateError::NoVariant(id.to_string(), channel.as_str()))?;

        // Name every missing variable up front (rendering would stop at the first).
        let optional = self.optional.get(id).map(Vec::as_slice).unwrap_or_default();
        let absent = |v: &String| !data.contains_key(v) && !optional.contains(v);
        let mut missing = BTreeSet::new();
        for part in TEXT_PARTS {
            if let Ok(t) = self.env.get_template(&part_name(id, channel, part)) {
                missing.extend(t.undeclared_variables(false).into_iter().filter(absent));
            }
        }
        for (_, part) in variant.json_parts() {
            let mut sources = Vec::new();
            if let Some(value) = part {
                collect_strings(value, &mut sources);
            }
            for src in sources {
                let t = self
                    .env
                    .template_from_str(src)
                    .map_err(|e| TemplateError::Invalid(e.to_string()))?;
                missing.extend(t.undeclared_variables(false).into_iter().filter(absent));
            }
        }
        if !missing.is_empty() {
            return Err(TemplateError::Data(
                missing
                    .into_iter()
                    .map(|v| FieldError::new(format!("/data/{v}"), format!("template {id} needs variable '{v}'")))
                    .collect(),
            ));
        }

        let ctx = minijinja::Value::from_serialize(data);
        let render = |part: &str| -> Result<Option<String>, TemplateError> {
            match self.env.get_template(&part_name(id, channel, part)) {
                Ok(t) => t.render(&ctx).map(Some).map_err(|e| render_error(e, part)),
                Err(_) => Ok(None),
            }
        };
        let mut json = std::collections::HashMap::new();
        for (name, part) in variant.json_parts() {
            if let Some(value) = part {
                json.insert(name, self.render_json(value, &ctx)?);
            }
        }
        Ok(Content {
            subject: render("subject")?,
            text: render("text")?,
            html: render("html")?,
            markdown: render("markdown")?,
            body: json.get("body").cloned(),
            mentions: decode(id, "mentions", json.get("mentions"))?,
            sms: decode(id, "sms", json.get("sms"))?,
            wechat: decode(id, "wechat", json.get("wechat"))?,
        })
    }

    fn render_json(&self, value: &Value, ctx: &minijinja::Value) -> Result<Value, TemplateError> {
        Ok(match value {
            Value::String(s) => Value::String(self.env.render_str(s, ctx).map_err(|e| render_error(e, "body"))?),
            Value::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|v| self.render_json(v, ctx))
                    .collect::<Result<_, _>>()?,
            ),
            Value::Object(map) => Value::Object(
                map.iter()
                    .map(|(k, v)| Ok((k.clone(), self.render_json(v, ctx)?)))
                    .collect::<Result<_, TemplateError>>()?,
            ),
            other => other.clone(),
        })
    }
}

/// A rendered JSON part as its typed form; a mismatch is the template's fault.
fn decode<T: serde::de::DeserializeOwned>(
    id: &str,
    part: &str,
    value: Option<&Value>,
) -> Result<Option<T>, TemplateError> {
    value
        .map(|v| serde_json::from_value(v.clone()))
        .transpose()
        .map_err(|e| TemplateError::Invalid(format!("{id}: {part}: {e}")))
}

fn part_name(id: &str, channel: Channel, part: &str) -> String {
    // The extension drives auto-escaping: only the html part is escaped.
    let ext = if part == "html" { "html" } else { "txt" };
    format!("{id}/{}/{part}.{ext}", channel.as_str())
}

fn collect_strings<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
    match value {
        Value::String(s) => out.push(s),
        Value::Array(items) => items.iter().for_each(|v| collect_strings(v, out)),
        Value::Object(map) => map.values().for_each(|v| collect_strings(v, out)),
        _ => {}
    }
}

fn render_error(e: minijinja::Error, part: &str) -> TemplateError {
    TemplateError::Data(vec![FieldError::new(
        "/data",
        format!("cannot render {part}: {}", e.kind()),
    )])
}

/// Where ingest gets templates: a DynamoDB table seeded from `infra/templates.json`
/// (`pushgate templates seed`), re-read every `ttl`, or the bundled file when no table is
/// configured.
pub struct TemplateStore {
    source: Source,
    cached: Bounded<Templates>,
}

enum Source {
    Bundled,
    Table {
        client: aws_sdk_dynamodb::Client,
        table: String,
    },
}

impl TemplateStore {
    /// The templates bundled with the build.
    pub fn bundled() -> Self {
        Self {
            source: Source::Bundled,
            cached: Bounded::config(Duration::MAX),
        }
    }

    /// Templates from a DynamoDB table (items `{id, definition}`), cached for `ttl`.
    pub fn table(client: aws_sdk_dynamodb::Client, table: impl Into<String>, ttl: Duration) -> Self {
        Self {
            source: Source::Table {
                client,
                table: table.into(),
            },
            cached: Bounded::config(ttl),
        }
    }

    /// The current template set. A failed refresh keeps serving the last good set, for a
    /// while ([`crate::cache::CONFIG_MAX_STALE`]).
    pub async fn current(&self) -> Result<Arc<Templates>, TemplateError> {
        self.cached
            .get("template", || async {
                match &self.source {
                    Source::Bundled => Templates::bundled(),
                    Source::Table { client, table } => load_table(client, table).await,
                }
            })
            .await
            .map_err(|e| e.into_inner(TemplateError::Unavailable))
    }
}

async fn load_table(client: &aws_sdk_dynamodb::Client, table: &str) -> Result<Templates, TemplateError> {
    let mut definitions = Map::new();
    for (id, definition) in crate::cache::scan_definitions(client, table)
        .await
        .map_err(TemplateError::Unavailable)?
    {
        let value = serde_json::from_str(&definition).map_err(|e| TemplateError::Invalid(format!("{id}: {e}")))?;
        definitions.insert(id, value);
    }
    Templates::parse(&Value::Object(definitions).to_string())
}

/// Writes every template of a set (JSON as in `infra/templates.json`) to the table,
/// after checking that the whole set compiles. Returns how many were written.
pub async fn seed(client: &aws_sdk_dynamodb::Client, table: &str, json: &str) -> Result<usize, TemplateError> {
    use crate::cache::SeedError;
    let check = |json: &str| Templates::parse(json).map(drop);
    // A template's id is its key in the set; its definition is the value under it.
    let entry = |(id, definition): (String, Value)| (id, definition);
    crate::cache::seed_definitions::<Map<String, Value>, _>(
        client,
        table,
        json,
        check,
        entry,
        Some(crate::clock::now_ms()),
    )
    .await
    .map_err(|e| match e {
        SeedError::Check(e) => e,
        SeedError::Invalid(m) => TemplateError::Invalid(m),
        SeedError::Unavailable(m) => TemplateError::Unavailable(m),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn data(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn bundled_templates_compile_and_render() {
        let t = Templates::bundled().unwrap();
        let c = t
            .render(
                "order_shipped",
                Channel::Email,
                &data(json!({"name":"Ann <x>","order_id":"A1"})),
            )
            .unwrap();
        assert_eq!(c.subject.as_deref(), Some("Order A1 has shipped"));
        assert!(c.text.unwrap().contains("Hi Ann <x>,"));
        assert!(c.html.unwrap().contains("Ann &lt;x&gt;"), "html is escaped");
        let w = t
            .render(
                "order_shipped",
                Channel::Webhook,
                &data(json!({"name":"A","order_id":"7"})),
            )
            .unwrap();
        assert_eq!(w.body, Some(json!({"event":"order_shipped","order_id":"7"})));
    }

    #[test]
    fn missing_variables_are_all_named() {
        let t = Templates::bundled().unwrap();
        let Err(TemplateError::Data(errors)) = t.render("welcome", Channel::Email, &Map::new()) else {
            panic!("expected data errors");
        };
        let pointers: Vec<_> = errors.iter().map(|e| e.pointer.as_str()).collect();
        assert_eq!(pointers, vec!["/data/name", "/data/product"]);
        assert!(matches!(
            t.render("nope", Channel::Email, &Map::new()),
            Err(TemplateError::UnknownTemplate(_))
        ));
    }
}
