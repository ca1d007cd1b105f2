//! kcat-style output templates for `sluice consume -f`: `%t` topic, `%p`
//! partition, `%o` offset, `%k` key, `%v` (or kcat's `%s`) value, `%T`
//! timestamp in ms, `%h` headers as `k=v,k=v`, `%K`/`%S` key and value
//! lengths (-1 for null), `%%` a percent sign; `\n`, `\t`, `\r`, `\\`
//! escapes.

use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Token {
    Text(Vec<u8>),
    Topic,
    Partition,
    Offset,
    Key,
    Value,
    Timestamp,
    Headers,
    KeyLen,
    ValueLen,
}

#[derive(Debug, PartialEq, Eq)]
pub struct TemplateError {
    pub position: usize,
    pub what: String,
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "malformed format template: {} at character {}; use %t %p %o %k %v %T %h %K %S %% and \\n \\t \\\\",
            self.what,
            self.position + 1
        )
    }
}

impl std::error::Error for TemplateError {}

/// A parsed template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template(pub Vec<Token>);

/// One record, as the template sees it.
pub struct Record<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub timestamp: Option<i64>,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub headers: Vec<(&'a str, Option<&'a [u8]>)>,
}

impl Template {
    pub fn parse(s: &str) -> Result<Template, TemplateError> {
        let mut out = vec![];
        let mut text = vec![];
        let mut chars = s.char_indices().peekable();
        let err = |position, what: String| TemplateError { position, what };
        while let Some((i, c)) = chars.next() {
            match c {
                '%' => {
                    let Some((_, d)) = chars.next() else {
                        return Err(err(i, "a lone % at the end".into()));
                    };
                    let token = match d {
                        '%' => {
                            text.push(b'%');
                            continue;
                        }
                        't' => Token::Topic,
                        'p' => Token::Partition,
                        'o' => Token::Offset,
                        'k' => Token::Key,
                        'v' | 's' => Token::Value,
                        'T' => Token::Timestamp,
                        'h' => Token::Headers,
                        'K' => Token::KeyLen,
                        'S' => Token::ValueLen,
                        other => return Err(err(i, format!("unknown %{other}"))),
                    };
                    if !text.is_empty() {
                        out.push(Token::Text(std::mem::take(&mut text)));
                    }
                    out.push(token);
                }
                '\\' => {
                    let Some((_, d)) = chars.next() else {
                        return Err(err(i, "a lone \\ at the end".into()));
                    };
                    match d {
                        'n' => text.push(b'\n'),
                        't' => text.push(b'\t'),
                        'r' => text.push(b'\r'),
                        '\\' => text.push(b'\\'),
                        other => return Err(err(i, format!("unknown escape \\{other}"))),
                    }
                }
                c => {
                    let mut b = [0u8; 4];
                    text.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
                }
            }
        }
        if !text.is_empty() {
            out.push(Token::Text(text));
        }
        Ok(Template(out))
    }

    pub fn render(&self, r: &Record, out: &mut Vec<u8>) {
        use std::io::Write;
        for t in &self.0 {
            match t {
                Token::Text(b) => out.extend_from_slice(b),
                Token::Topic => out.extend_from_slice(r.topic.as_bytes()),
                Token::Partition => {
                    let _ = write!(out, "{}", r.partition);
                }
                Token::Offset => {
                    let _ = write!(out, "{}", r.offset);
                }
                Token::Key => out.extend_from_slice(r.key.unwrap_or_default()),
                Token::Value => out.extend_from_slice(r.value.unwrap_or_default()),
                Token::Timestamp => {
                    let _ = write!(out, "{}", r.timestamp.unwrap_or(-1));
                }
                Token::Headers => {
                    for (i, (k, v)) in r.headers.iter().enumerate() {
                        if i > 0 {
                            out.push(b',');
                        }
                        out.extend_from_slice(k.as_bytes());
                        out.push(b'=');
                        out.extend_from_slice(v.unwrap_or_default());
                    }
                }
                Token::KeyLen => {
                    let _ = write!(out, "{}", r.key.map_or(-1, |k| k.len() as i64));
                }
                Token::ValueLen => {
                    let _ = write!(out, "{}", r.value.map_or(-1, |v| v.len() as i64));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record() -> Record<'static> {
        Record {
            topic: "t",
            partition: 2,
            offset: 41,
            timestamp: Some(1_700_000_000_000),
            key: Some(b"user1"),
            value: Some(b"hello"),
            headers: vec![("source", Some(b"readme")), ("n", None)],
        }
    }

    fn show(t: &str) -> String {
        let mut out = vec![];
        Template::parse(t).unwrap().render(&record(), &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn every_token_renders_as_kcat_does() {
        assert_eq!(
            show("%t %p %o %k %v %s %T %h %K %S 100%%\\n"),
            "t 2 41 user1 hello hello 1700000000000 source=readme,n= 5 5 100%\n"
        );
    }

    #[test]
    fn malformed_templates_say_where() {
        let e = Template::parse("%k %x").unwrap_err();
        assert_eq!(e.position, 3);
        assert!(e.to_string().contains("unknown %x at character 4"), "{e}");
        assert!(Template::parse("abc %")
            .unwrap_err()
            .what
            .contains("lone %"));
        assert!(Template::parse("\\q").is_err());
    }

    proptest! {
        #[test]
        fn text_without_specials_renders_as_itself(s in "[^%\\\\]*") {
            prop_assert_eq!(show(&s), s);
        }

        #[test]
        fn parsing_never_panics(s in ".*") {
            let _ = Template::parse(&s);
        }
    }
}
