//! Per-app sensitive-word filter (Aho-Corasick over the rendered text): an app either
//! rejects a message naming the matched term (422) or has the terms masked.

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use serde::Deserialize;

use crate::message::Content;
use crate::problem::FieldError;

/// What to do on a match.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FilterAction {
    /// Refuse the message with 422 naming the term.
    #[default]
    Reject,
    /// Replace each matched character with `*`.
    Mask,
}

/// An app's filter configuration (`sensitive_words` in the service secret).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    pub terms: Vec<String>,
    #[serde(default)]
    pub action: FilterAction,
}

/// A compiled filter.
pub struct Filter {
    matcher: AhoCorasick,
    terms: Vec<String>,
    action: FilterAction,
}

impl Filter {
    /// Compiles a configuration (case-insensitive for ASCII, longest match first).
    pub fn new(config: &FilterConfig) -> Result<Self, aho_corasick::BuildError> {
        let terms: Vec<String> = config.terms.iter().filter(|t| !t.is_empty()).cloned().collect();
        let matcher = AhoCorasickBuilder::new()
            .ascii_case_insensitive(true)
            .match_kind(MatchKind::LeftmostLongest)
            .build(&terms)?;
        Ok(Self {
            matcher,
            terms,
            action: config.action,
        })
    }

    /// Checks (and, for `mask`, rewrites) every text part of `content`. With `reject`,
    /// returns one error per part naming the first matched term.
    pub fn apply(&self, content: &mut Content, at: &str) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        let mut visit = |part: String, text: &mut String| match self.action {
            FilterAction::Reject => {
                if let Some(m) = self.matcher.find(text.as_str()) {
                    let term = &self.terms[m.pattern().as_usize()];
                    errors.push(FieldError::new(
                        format!("{at}/{part}"),
                        format!("contains the sensitive term '{term}'"),
                    ));
                }
            }
            FilterAction::Mask => {
                if self.matcher.is_match(text.as_str()) {
                    *text = self.mask(text);
                }
            }
        };
        for (name, field) in [
            ("subject", &mut content.subject),
            ("text", &mut content.text),
            ("html", &mut content.html),
            ("markdown", &mut content.markdown),
        ] {
            if let Some(text) = field.as_mut() {
                visit(name.to_string(), text);
            }
        }
        if let Some(sms) = content.sms.as_mut() {
            if let Some(a) = sms.aliyun.as_mut() {
                for (k, v) in a.params.iter_mut() {
                    visit(format!("sms/aliyun/params/{k}"), v);
                }
            }
            if let Some(t) = sms.tencent.as_mut() {
                for (i, v) in t.params.iter_mut().enumerate() {
                    visit(format!("sms/tencent/params/{i}"), v);
                }
            }
        }
        if let Some(w) = content.wechat.as_mut() {
            for (k, v) in w.data.iter_mut() {
                visit(format!("wechat/data/{k}"), v);
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    fn mask(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut last = 0;
        for m in self.matcher.find_iter(text) {
            out.push_str(&text[last..m.start()]);
            out.extend(text[m.start()..m.end()].chars().map(|_| '*'));
            last = m.end();
        }
        out.push_str(&text[last..]);
        out
    }
}

/// Compiled filters per app, rebuilt when an app's configuration changes.
#[derive(Default)]
pub struct FilterCache(std::sync::Mutex<std::collections::HashMap<String, (FilterConfig, std::sync::Arc<Filter>)>>);

impl FilterCache {
    /// The compiled filter for `app`'s current `config`.
    pub fn get(&self, app: &str, config: &FilterConfig) -> Result<std::sync::Arc<Filter>, aho_corasick::BuildError> {
        let mut cache = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((cached, filter)) = cache.get(app) {
            if cached == config {
                return Ok(filter.clone());
            }
        }
        let filter = std::sync::Arc::new(Filter::new(config)?);
        cache.insert(app.to_string(), (config.clone(), filter.clone()));
        Ok(filter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content(text: &str) -> Content {
        Content {
            subject: Some("Hello".into()),
            text: Some(text.into()),
            ..Content::default()
        }
    }

    #[test]
    fn reject_names_the_term_and_the_field() {
        let f = Filter::new(&FilterConfig {
            terms: vec!["casino".into(), "赌博".into()],
            action: FilterAction::Reject,
        })
        .unwrap();
        let errors = f
            .apply(&mut content("Win at the CASINO today"), "/content")
            .unwrap_err();
        assert_eq!(
            errors,
            vec![FieldError::new("/content/text", "contains the sensitive term 'casino'")]
        );
        let errors = f.apply(&mut content("不要赌博"), "/content").unwrap_err();
        assert!(errors[0].detail.contains("赌博"));
        assert!(f.apply(&mut content("clean"), "/content").is_ok());
    }

    #[test]
    fn mask_replaces_each_character() {
        let f = Filter::new(&FilterConfig {
            terms: vec!["bad".into(), "赌博".into()],
            action: FilterAction::Mask,
        })
        .unwrap();
        let mut c = content("a BAD idea: 赌博!");
        f.apply(&mut c, "/content").unwrap();
        assert_eq!(c.text.as_deref(), Some("a *** idea: **!"));
    }
}
