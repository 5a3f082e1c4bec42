//! Chat templates rendered in the environment `transformers` gives them
//! (`apply_chat_template`): blocks trimmed and left-stripped, `tojson` as Python's
//! `json.dumps`, `{% break %}`/`{% continue %}`, `raise_exception`, `strftime_now`,
//! Python string methods. Templates are written against that environment, so a
//! template's whitespace and errors here are the ones users see in Python.

use std::io;
use std::time::{SystemTime, UNIX_EPOCH};

use minijinja::value::{Kwargs, Value as JinjaValue};
use minijinja::{context, Environment, Error as JinjaError, ErrorKind};
use serde::Serialize;

use super::{ChatMessage, TokenizerError};

/// What a template is rendered with besides the messages.
pub struct ChatContext<'a> {
    pub add_generation_prompt: bool,
    pub bos_token: &'a str,
    pub eos_token: &'a str,
    /// OpenAI's `tools` (function schemas), passed through as transformers does.
    pub tools: Option<&'a serde_json::Value>,
    /// RAG `documents`, passed through likewise.
    pub documents: Option<&'a serde_json::Value>,
}

/// Python's `json.dumps` separators without `indent`: `", "` and `": "`.
struct PythonCompact;

impl serde_json::ser::Formatter for PythonCompact {
    fn begin_array_value<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }

    fn begin_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(b": ")
    }
}

/// transformers' `tojson(x, ensure_ascii=False, indent=None, separators=None,
/// sort_keys=False)`: non-ASCII kept, Python's separators, `indent` honoured.
fn tojson(value: JinjaValue, kwargs: Kwargs) -> Result<String, JinjaError> {
    let indent: Option<usize> = kwargs.get("indent")?;
    kwargs.assert_all_used()?;
    let mut out = Vec::new();
    let written = match indent {
        Some(n) => {
            let spaces = vec![b' '; n];
            let fmt = serde_json::ser::PrettyFormatter::with_indent(&spaces);
            value.serialize(&mut serde_json::Serializer::with_formatter(&mut out, fmt))
        }
        None => value.serialize(&mut serde_json::Serializer::with_formatter(
            &mut out,
            PythonCompact,
        )),
    };
    written.map_err(|e| JinjaError::new(ErrorKind::InvalidOperation, e.to_string()))?;
    String::from_utf8(out).map_err(|e| JinjaError::new(ErrorKind::InvalidOperation, e.to_string()))
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = [
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
];

/// Python's `datetime.now().strftime(format)` for the directives chat templates use
/// (Llama 3.x writes today's date into its system prompt), in UTC.
pub fn strftime(format: &str, unix_seconds: i64) -> Result<String, JinjaError> {
    let days = unix_seconds.div_euclid(86_400);
    let secs = unix_seconds.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let weekday = WEEKDAYS[days.rem_euclid(7) as usize];
    let month_name = MONTHS[(month - 1) as usize];
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut directive = chars.next();
        // glibc's `%-d`: no padding.
        let unpadded = directive == Some('-');
        if unpadded {
            directive = chars.next();
        }
        let num = |n: i64, width: usize| {
            if unpadded {
                n.to_string()
            } else {
                format!("{n:0width$}")
            }
        };
        match directive {
            Some('d') => out.push_str(&num(i64::from(day), 2)),
            Some('m') => out.push_str(&num(i64::from(month), 2)),
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&num(year.rem_euclid(100), 2)),
            Some('B') => out.push_str(month_name),
            Some('b') => out.push_str(&month_name[..3]),
            Some('A') => out.push_str(weekday),
            Some('a') => out.push_str(&weekday[..3]),
            Some('H') => out.push_str(&num(secs / 3600, 2)),
            Some('M') => out.push_str(&num(secs / 60 % 60, 2)),
            Some('S') => out.push_str(&num(secs % 60, 2)),
            Some('%') => out.push('%'),
            other => {
                return Err(JinjaError::new(
                    ErrorKind::InvalidOperation,
                    format!(
                        "strftime_now: unsupported directive %{}",
                        other.unwrap_or(' ')
                    ),
                ))
            }
        }
    }
    Ok(out)
}

/// The environment `transformers` renders chat templates in.
fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    // HF templates call Python string methods (.strip(), .startswith(), ...).
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_filter("tojson", tojson);
    env.add_function(
        "raise_exception",
        |msg: String| -> Result<String, JinjaError> {
            Err(JinjaError::new(ErrorKind::InvalidOperation, msg))
        },
    );
    env.add_function("strftime_now", |format: String| {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        strftime(&format, now)
    });
    env
}

/// Renders `template` over `messages`.
pub fn render(
    template: &str,
    messages: &[ChatMessage],
    ctx: &ChatContext<'_>,
) -> Result<String, TokenizerError> {
    let mut env = environment();
    env.add_template("chat", template)
        .map_err(|e| TokenizerError::Template(e.to_string()))?;
    let tmpl = env
        .get_template("chat")
        .map_err(|e| TokenizerError::Template(e.to_string()))?;
    tmpl.render(context! {
        messages => messages,
        add_generation_prompt => ctx.add_generation_prompt,
        bos_token => ctx.bos_token,
        eos_token => ctx.eos_token,
        tools => ctx.tools.map(JinjaValue::from_serialize),
        documents => ctx.documents.map(JinjaValue::from_serialize),
    })
    .map_err(|e| {
        // A template's own `raise_exception` message is what the user should read.
        let message = match e.kind() {
            ErrorKind::InvalidOperation => e.detail().unwrap_or("").to_string(),
            _ => e.to_string(),
        };
        TokenizerError::Template(message)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(template: &str, messages: &[ChatMessage]) -> Result<String, TokenizerError> {
        let ctx = ChatContext {
            add_generation_prompt: true,
            bos_token: "<s>",
            eos_token: "</s>",
            tools: None,
            documents: None,
        };
        render(template, messages, &ctx)
    }

    #[test]
    fn blocks_are_trimmed_and_left_stripped_as_in_transformers() {
        let t = "{% for m in messages %}\n    {% if m.role == 'user' %}\n[{{ m.content }}]\n    {% endif %}\n{% endfor %}";
        let msgs = [ChatMessage::new("user", "a"), ChatMessage::new("user", "b")];
        assert_eq!(run(t, &msgs).unwrap(), "[a]\n[b]\n");
    }

    #[test]
    fn tojson_writes_what_python_json_dumps_writes() {
        let t = "{{ {'a': [1, 2], 'b': 'é<>'} | tojson }}|{{ [1] | tojson(indent=2) }}";
        assert_eq!(
            run(t, &[]).unwrap(),
            "{\"a\": [1, 2], \"b\": \"é<>\"}|[\n  1\n]"
        );
    }

    #[test]
    fn loop_controls_and_raise_exception() {
        let t = "{% for m in messages %}{% if loop.index0 == 1 %}{% break %}{% endif %}{{ m.content }}{% endfor %}";
        let msgs = [ChatMessage::new("user", "a"), ChatMessage::new("user", "b")];
        assert_eq!(run(t, &msgs).unwrap(), "a");
        let t = "{% if messages[0].role != 'user' %}{{ raise_exception('Conversation roles must alternate user/assistant') }}{% endif %}";
        let err = run(t, &[ChatMessage::new("system", "x")])
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "chat template: Conversation roles must alternate user/assistant"
        );
    }

    #[test]
    fn strftime_renders_the_directives_llama_templates_use() {
        // 2024-07-23 (Tuesday) 13:05:09 UTC.
        let t = 1_721_739_909;
        assert_eq!(strftime("%d %b %Y", t).unwrap(), "23 Jul 2024");
        assert_eq!(
            strftime("%A %-d %B %y %H:%M:%S %%", t).unwrap(),
            "Tuesday 23 July 24 13:05:09 %"
        );
        assert_eq!(strftime("%d %m", 0).unwrap(), "01 01");
        assert!(strftime("%Q", t).is_err());
        let rendered = run("{{ strftime_now('%Y') }}", &[]).unwrap();
        assert_eq!(rendered.len(), 4);
    }
}
