//! A small CSV reader (RFC 4180: quoted fields, `""` escapes, CRLF, a UTF-8 BOM) that keeps the
//! line number of every record, so that errors can name it.

use std::path::{Path, PathBuf};

use super::DatasetError;

/// One data record.
#[derive(Debug)]
pub(crate) struct Row {
    /// 1-based line where the record starts (the header is line 1).
    pub line: usize,
    pub fields: Vec<String>,
}

/// A parsed CSV file with a header row.
#[derive(Debug)]
pub(crate) struct Table {
    pub path: PathBuf,
    /// Column names, trimmed.
    pub header: Vec<String>,
    pub rows: Vec<Row>,
}

impl Table {
    pub fn read(path: &Path) -> Result<Table, DatasetError> {
        let bytes = std::fs::read(path).map_err(|source| DatasetError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let text = String::from_utf8(bytes).map_err(|e| DatasetError::Manifest {
            path: path.to_path_buf(),
            line: line_of_offset(e.as_bytes(), e.utf8_error().valid_up_to()),
            message: "not UTF-8 text".into(),
        })?;
        let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
        let records = parse(text).map_err(|(line, message)| DatasetError::Manifest {
            path: path.to_path_buf(),
            line,
            message,
        })?;
        let mut records = records.into_iter();
        let Some(header) = records.next() else {
            return Err(DatasetError::Manifest {
                path: path.to_path_buf(),
                line: 1,
                message: "the file is empty; expected a header row with column names".into(),
            });
        };
        let header: Vec<String> = header.fields.iter().map(|h| h.trim().to_string()).collect();
        let mut rows = Vec::new();
        for r in records {
            if r.fields.len() == 1 && r.fields[0].trim().is_empty() {
                continue; // blank line
            }
            if r.fields.len() != header.len() {
                return Err(DatasetError::Manifest {
                    path: path.to_path_buf(),
                    line: r.line,
                    message: format!(
                        "{} fields, but the header has {} columns ({})",
                        r.fields.len(),
                        header.len(),
                        header.join(",")
                    ),
                });
            }
            rows.push(r);
        }
        Ok(Table {
            path: path.to_path_buf(),
            header,
            rows,
        })
    }

    /// The index of a column: exact (trimmed) name first, then ignoring case.
    pub fn column(&self, name: &str, option: &str) -> Result<usize, DatasetError> {
        let name = name.trim();
        let exact: Vec<usize> = (0..self.header.len())
            .filter(|&i| self.header[i] == name)
            .collect();
        let found = if exact.is_empty() {
            (0..self.header.len())
                .filter(|&i| self.header[i].eq_ignore_ascii_case(name))
                .collect()
        } else {
            exact
        };
        match found.as_slice() {
            [i] => Ok(*i),
            [] => Err(DatasetError::MissingColumn {
                path: self.path.clone(),
                column: name.to_string(),
                option: option.to_string(),
                available: self.header.clone(),
            }),
            _ => Err(DatasetError::Manifest {
                path: self.path.clone(),
                line: 1,
                message: format!("the header has more than one column named \"{name}\""),
            }),
        }
    }
}

fn line_of_offset(bytes: &[u8], offset: usize) -> usize {
    1 + bytes[..offset.min(bytes.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
}

/// Splits text into records; `Err((line, message))` on an unclosed or misplaced quote.
fn parse(text: &str) -> Result<Vec<Row>, (usize, String)> {
    let mut rows = Vec::new();
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut line = 1usize;
    let mut start_line = 1usize;
    let mut in_quotes = false;
    let mut quote_line = 0usize;
    // Whether the current field was quoted and its closing quote seen.
    let mut closed_quote = false;
    let mut chars = text.chars().peekable();
    let mut any = false;
    while let Some(c) = chars.next() {
        any = true;
        if in_quotes {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => {
                    in_quotes = false;
                    closed_quote = true;
                }
                '\n' => {
                    line += 1;
                    field.push('\n');
                }
                c => field.push(c),
            }
            continue;
        }
        match c {
            '"' if field.trim().is_empty() && !closed_quote => {
                field.clear();
                in_quotes = true;
                quote_line = line;
            }
            '"' => {
                return Err((
                    line,
                    "a double quote inside an unquoted field (quote the whole field and double \
                     the quote)"
                        .into(),
                ))
            }
            ',' => {
                fields.push(std::mem::take(&mut field));
                closed_quote = false;
            }
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => {
                fields.push(std::mem::take(&mut field));
                closed_quote = false;
                rows.push(Row {
                    line: start_line,
                    fields: std::mem::take(&mut fields),
                });
                line += 1;
                start_line = line;
                any = false;
            }
            c => {
                if closed_quote && !c.is_whitespace() {
                    return Err((
                        line,
                        "text after the closing quote of a quoted field".into(),
                    ));
                }
                if !closed_quote {
                    field.push(c);
                }
            }
        }
    }
    if in_quotes {
        return Err((quote_line, "a quoted field is never closed".into()));
    }
    if any {
        fields.push(field);
        rows.push(Row {
            line: start_line,
            fields,
        });
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn quotes_lines_and_crlf() {
        let rows = parse("a, b\r\n1,\"x,\"\"y\"\"\"\n\n2,\"multi\nline\"\n3,z").unwrap();
        let f: Vec<(usize, Vec<&str>)> = rows
            .iter()
            .map(|r| (r.line, r.fields.iter().map(|s| s.as_str()).collect()))
            .collect();
        assert_eq!(
            f,
            vec![
                (1, vec!["a", " b"]),
                (2, vec!["1", "x,\"y\""]),
                (3, vec![""]),
                (4, vec!["2", "multi\nline"]),
                (6, vec!["3", "z"]),
            ]
        );
        assert_eq!(parse("a,\"b\n").unwrap_err().0, 1);
        assert_eq!(parse("a,b\"c\n").unwrap_err().0, 1);
    }
}
