//! Per-app sensitive-word filter (Aho-Corasick over the rendered text): an app either
//! rejects a message naming the matched term (422) or has the terms masked.
//!
//! Terms and text are compared folded ([`fold`]): Unicode compatibility forms (full-width
//! `ｃａｓｉｎｏ`, ligatures, circled letters) as their plain letters, any case as lower
//! case, accents and other combining marks dropped (`cásino`), and invisible characters
//! ignored (zero-width and bidi controls, soft hyphen, variation selectors, tag
//! characters, fillers: Unicode's default-ignorable code points), so such spellings
//! cannot slip a term past the filter. Not folded: look-alike letters of other scripts
//! (Cyrillic `а`), spaces inside a term, traditional/simplified Chinese variants, and
//! markup inside a word in `html`; list such spellings as terms of their own. Every text a message carries is
//! checked: subject, text, html, markdown, SMS template parameters, WeChat template
//! data, and every JSON string value of a webhook `body`.

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use serde::Deserialize;
use unicode_normalization::UnicodeNormalization;

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

/// Invisible characters (Unicode's default-ignorable code points), ignored when matching:
/// inserted between a term's letters they change nothing a reader sees.
fn is_ignorable(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}'..='\u{1160}' | '\u{17B4}'..='\u{17B5}'
        | '\u{180B}'..='\u{180F}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{206F}' | '\u{3164}' | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}' | '\u{FFA0}'
        | '\u{1BCA0}'..='\u{1BCA3}' | '\u{1D173}'..='\u{1D17A}' | '\u{E0000}'..='\u{E0FFF}')
}

/// One character folded for matching: its compatibility decomposition (NFKD; the
/// decomposition is per character, so every folded character maps back to the one it came
/// from, which masking needs) without its combining marks, lower-cased; nothing for an
/// invisible character.
fn fold_char(c: char, out: &mut String) {
    if is_ignorable(c) {
        return;
    }
    for d in std::iter::once(c).nfkd() {
        if !unicode_normalization::char::is_combining_mark(d) {
            out.extend(d.to_lowercase());
        }
    }
}

/// `text` folded for matching (see the module doc).
pub fn fold(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    text.chars().for_each(|c| fold_char(c, &mut out));
    out
}

/// `text` folded, with, for each byte of the folded text, the byte range of the original
/// character it came from.
fn fold_mapped(text: &str) -> (String, Vec<(usize, usize)>) {
    let mut out = String::with_capacity(text.len());
    let mut origin = Vec::with_capacity(text.len());
    for (at, c) in text.char_indices() {
        fold_char(c, &mut out);
        origin.resize(out.len(), (at, at + c.len_utf8()));
    }
    (out, origin)
}

impl Filter {
    /// Compiles a configuration (terms folded like the text, longest match first).
    pub fn new(config: &FilterConfig) -> Result<Self, aho_corasick::BuildError> {
        let terms: Vec<String> = config.terms.iter().filter(|t| !fold(t).is_empty()).cloned().collect();
        let folded: Vec<String> = terms.iter().map(|t| fold(t)).collect();
        let matcher = AhoCorasickBuilder::new()
            .match_kind(MatchKind::LeftmostLongest)
            .build(&folded)?;
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
                if let Some(m) = self.matcher.find(fold(text).as_str()) {
                    let term = &self.terms[m.pattern().as_usize()];
                    errors.push(FieldError::new(
                        format!("{at}/{part}"),
                        format!("contains the sensitive term '{term}'"),
                    ));
                }
            }
            FilterAction::Mask => {
                if let Some(masked) = self.mask(text) {
                    *text = masked;
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
        if let Some(body) = content.body.as_mut() {
            visit_json("body".to_string(), body, &mut visit);
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// `text` with every character of each match (zero-width ones between its letters
    /// included) replaced by `*`; `None` when nothing matches.
    fn mask(&self, text: &str) -> Option<String> {
        let (folded, origin) = fold_mapped(text);
        let mut out = String::with_capacity(text.len());
        let mut last = 0;
        let mut matched = false;
        for m in self.matcher.find_iter(folded.as_str()) {
            matched = true;
            let (start, end) = (origin[m.start()].0, origin[m.end() - 1].1);
            if start < last {
                continue; // Two matches within one original character: masked already.
            }
            out.push_str(&text[last..start]);
            out.extend(text[start..end].chars().map(|_| '*'));
            last = end;
        }
        if !matched {
            return None;
        }
        out.push_str(&text[last..]);
        Some(out)
    }
}

/// Calls `visit` on every string in a JSON value (object values and array items, at any
/// depth; keys are the sender's field names, not text), naming each by its JSON pointer
/// below `at`.
fn visit_json(at: String, value: &mut serde_json::Value, visit: &mut impl FnMut(String, &mut String)) {
    match value {
        serde_json::Value::String(s) => visit(at, s),
        serde_json::Value::Array(items) => {
            for (i, v) in items.iter_mut().enumerate() {
                visit_json(format!("{at}/{i}"), v, visit);
            }
        }
        serde_json::Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                let key = k.replace('~', "~0").replace('/', "~1");
                visit_json(format!("{at}/{key}"), v, visit);
            }
        }
        _ => {}
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

    fn casino(action: FilterAction) -> Filter {
        Filter::new(&FilterConfig {
            terms: vec!["casino".into()],
            action,
        })
        .unwrap()
    }

    /// Spellings a reader sees as the term: full width, other case, zero-width characters
    /// between the letters, compatibility forms.
    #[test]
    fn width_case_and_zero_width_characters_do_not_hide_a_term() {
        let f = casino(FilterAction::Reject);
        for text in [
            "ｃａｓｉｎｏ",
            "ＣＡＳＩＮＯ night",
            "ca\u{200b}sino",
            "c\u{200c}a\u{200d}s\u{2060}i\u{feff}no",
            "CaSiNo",
            "ⓒⓐⓢⓘⓝⓞ",
            "Ｃa\u{200b}ＳＩno",
            "cas\u{00ad}ino",
            "c\u{034f}asino",
            "ca\u{2062}sino",
            "casi\u{fe0f}no",
            "cas\u{e0069}ino",
            "ca\u{200e}si\u{202e}no",
            "c\u{3164}asino",
            "c\u{0301}asino",
            "cásino",
            "CAŠÍNÒ",
        ] {
            let errors = f.apply(&mut content(text), "/content").unwrap_err();
            assert_eq!(errors[0].pointer, "/content/text", "{text:?}");
        }
        assert!(f.apply(&mut content("casin o"), "/content").is_ok());
        // A term configured in full width matches the plain spelling too.
        let wide = Filter::new(&FilterConfig {
            terms: vec!["ｂａｄ".into()],
            action: FilterAction::Reject,
        })
        .unwrap();
        assert!(wide.apply(&mut content("so bad"), "/content").is_err());
    }

    #[test]
    fn masking_covers_the_original_characters_of_a_folded_match() {
        let f = casino(FilterAction::Mask);
        let mut c = content("go ｃａｓｉｎｏ and ca\u{200b}sino, CASINO");
        f.apply(&mut c, "/content").unwrap();
        assert_eq!(c.text.as_deref(), Some("go ****** and *******, ******"));
    }

    /// Every JSON string of a webhook body is text the receiver shows, at any depth.
    #[test]
    fn webhook_body_strings_and_wechat_data_are_checked() {
        let f = casino(FilterAction::Reject);
        let mut c = Content {
            body: Some(serde_json::json!({
                "title": "ok",
                "items": [{"name": "ｃａｓｉｎｏ"}, 3, null],
                "a/b": "casino",
            })),
            ..Content::default()
        };
        let errors = f.apply(&mut c, "/content").unwrap_err();
        let mut pointers: Vec<&str> = errors.iter().map(|e| e.pointer.as_str()).collect();
        pointers.sort_unstable();
        assert_eq!(pointers, ["/content/body/a~1b", "/content/body/items/0/name"]);

        let mut w: Content = serde_json::from_value(serde_json::json!({
            "wechat": {"template_id": "t", "data": {"first": "ca\u{200b}sino"}}
        }))
        .unwrap();
        let errors = f.apply(&mut w, "/content").unwrap_err();
        assert_eq!(errors[0].pointer, "/content/wechat/data/first");

        let m = casino(FilterAction::Mask);
        let mut c = Content {
            body: Some(serde_json::json!({"deep": {"list": ["CASINO!", 1]}})),
            ..Content::default()
        };
        m.apply(&mut c, "/content").unwrap();
        assert_eq!(c.body, Some(serde_json::json!({"deep": {"list": ["******!", 1]}})));
    }
}
