//! How results are shown: a table on a terminal, aligned plain text when
//! piped, or JSON.

use std::io::IsTerminal;

use comfy_table::{presets, Attribute, Cell, ContentArrangement, Table as Comfy};
use serde_json::{Map, Value};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Borders and a bold header: stdout is a terminal.
    Table,
    /// Aligned columns, no colour or borders: stdout is a pipe or a file.
    Plain,
    Json,
}

impl Format {
    pub fn choose(json: bool, plain: bool) -> Format {
        if json {
            Format::Json
        } else if plain || !std::io::stdout().is_terminal() {
            Format::Plain
        } else {
            Format::Table
        }
    }
}

/// Rows under named columns, shown in any [`Format`].
pub struct Table {
    pub title: Option<String>,
    pub headers: Vec<&'static str>,
    pub rows: Vec<Vec<Value>>,
}

impl Table {
    pub fn new(headers: &[&'static str]) -> Table {
        Table {
            title: None,
            headers: headers.to_vec(),
            rows: vec![],
        }
    }

    pub fn titled(mut self, title: impl Into<String>) -> Table {
        self.title = Some(title.into());
        self
    }

    pub fn row(&mut self, cells: Vec<Value>) {
        self.rows.push(cells);
    }

    /// The rows as JSON objects keyed by column name (lower case, `_` for
    /// spaces and dashes).
    pub fn json(&self) -> Value {
        Value::Array(
            self.rows
                .iter()
                .map(|r| {
                    let mut m = Map::new();
                    for (h, v) in self.headers.iter().zip(r) {
                        m.insert(json_key(h), v.clone());
                    }
                    Value::Object(m)
                })
                .collect(),
        )
    }

    /// The table as text (no trailing newline) for a terminal or a pipe.
    pub fn render(&self, format: Format) -> String {
        let mut t = Comfy::new();
        match format {
            Format::Table => {
                t.load_preset(presets::UTF8_FULL_CONDENSED)
                    .set_content_arrangement(ContentArrangement::Dynamic);
                t.set_header(
                    self.headers
                        .iter()
                        .map(|h| Cell::new(h).add_attribute(Attribute::Bold)),
                );
            }
            _ => {
                t.load_preset(presets::NOTHING).force_no_tty();
                t.set_header(self.headers.iter().map(|h| h.to_uppercase()));
            }
        }
        for r in &self.rows {
            t.add_row(r.iter().map(cell_text));
        }
        let body = t
            .lines()
            .map(|l| {
                if format == Format::Table {
                    l
                } else {
                    l.trim_end().to_string()
                }
            })
            .map(|l| l.strip_prefix(' ').map(str::to_string).unwrap_or(l))
            .collect::<Vec<_>>()
            .join("\n");
        match (&self.title, format) {
            (Some(title), Format::Table) => format!("\x1b[1m{title}\x1b[0m\n{body}"),
            (Some(title), _) => format!("{title}\n{body}"),
            (None, _) => body,
        }
    }
}

fn json_key(h: &str) -> String {
    h.to_lowercase().replace([' ', '-'], "_")
}

pub fn cell_text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(cell_text).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// Prints tables (with a blank line between them), or one JSON document
/// built by `json` when the format is JSON.
pub fn print(format: Format, tables: &[Table], json: impl FnOnce() -> Value) {
    if format == Format::Json {
        println!("{}", json());
        return;
    }
    let text: Vec<String> = tables
        .iter()
        .filter(|t| !t.rows.is_empty() || t.title.is_none())
        .map(|t| t.render(format))
        .collect();
    println!("{}", text.join("\n\n"));
}

/// `text` in the given ANSI colour on a terminal, as it is otherwise.
pub fn paint(format: Format, text: &str, colour: u8) -> String {
    if format == Format::Table {
        format!("\x1b[1;{colour}m{text}\x1b[0m")
    } else {
        text.to_string()
    }
}

pub const GREEN: u8 = 32;
pub const RED: u8 = 31;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn plain_tables_align_without_escapes_and_json_keys_columns() {
        let mut t = Table::new(&["Topic", "Log end"]);
        t.row(vec![json!("a"), json!(10)]);
        t.row(vec![json!("longer-name"), Value::Null]);
        let plain = t.render(Format::Plain);
        assert!(!plain.contains('\x1b'));
        let lines: Vec<&str> = plain.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("TOPIC"));
        assert_eq!(lines[0].find("LOG END"), lines[1].find("10"));
        assert_eq!(
            t.json(),
            json!([{"topic": "a", "log_end": 10}, {"topic": "longer-name", "log_end": null}])
        );
    }
}
