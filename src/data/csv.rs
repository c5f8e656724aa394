//! Numeric CSV tables to [`Dataset`]s: comma-separated, one sample per record, one column
//! holding the class label or regression target and every other column a feature. Records are
//! split by the `csv` crate (RFC 4180: quoted fields with embedded commas, quotes and line
//! breaks, CRLF or LF line ends, a UTF-8 byte-order mark); this module owns header detection,
//! label-column lookup, class labels written as text, and the error messages for malformed
//! files (path, 1-based line, the column and its header name where there is one, what was
//! expected). A header row gives the dataset its column names ([`Names`]). An empty feature
//! cell (a missing value) is an error naming its line and column, unless
//! [`CsvOptions::allow_missing`] asks for NaN in its place, for an
//! [`Imputer`](super::Imputer) to fill. Text features are not supported: every feature cell
//! must be a finite number. Spaces around a cell, quoted or not, are ignored.
//!
//! Class labels are integers `0, 1, 2, ...`, or names: when every label cell is text (none
//! reads as a number), the distinct names become classes `0..n` in sorted (byte) order, and
//! the dataset keeps them as [`Names::classes`]. Labels that mix numbers and text are an
//! error naming one of each.
//!
//! Column numbers in messages and in [`LabelColumn::Index`] are 0-based; line numbers are
//! 1-based physical lines of the file, where a record starts (blank lines are skipped but
//! still counted).

use std::path::Path;

use super::{Dataset, Names, Targets, Task};
use crate::{Error, Result};

/// Which column holds the label (classification) or target (regression).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LabelColumn {
    /// The last column.
    Last,
    /// The column at this 0-based index.
    Index(usize),
    /// The column with this header name (needs a header row).
    Name(String),
}

/// Whether the first non-blank line is a header row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderMode {
    /// A header is present iff a cell of the first row is text (neither a number nor
    /// empty), not counting the label column when it is given by position (a class label
    /// may be text).
    Auto,
    Present,
    Absent,
}

/// How to read a CSV file. The default is: label in the last column, header auto-detected,
/// classification, missing values refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CsvOptions {
    pub label_column: LabelColumn,
    pub header: HeaderMode,
    pub task: Task,
    /// Read an empty feature cell as NaN (to be filled by an [`Imputer`](super::Imputer))
    /// instead of refusing it. An empty label or target cell is an error either way.
    pub allow_missing: bool,
}

impl Default for CsvOptions {
    fn default() -> Self {
        CsvOptions {
            label_column: LabelColumn::Last,
            header: HeaderMode::Auto,
            task: Task::Classification,
            allow_missing: false,
        }
    }
}

/// Reads and parses a CSV file (see [`parse_csv`]); the dataset is named after the file stem.
pub fn load_csv(path: &Path, opts: &CsvOptions) -> Result<Dataset> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let text = String::from_utf8(bytes).map_err(|e| Error::Format {
        path: path.to_path_buf(),
        line: None,
        message: format!(
            "not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        ),
    })?;
    parse_csv(&text, path, opts)
}

/// Parses CSV text; `source` is the path named in errors and gives the dataset's name (its
/// file stem). Classification labels are non-negative integers (`3` or `3.0`; the class
/// count is the largest label + 1) or names (see the [module docs](self)). Regression
/// targets become [`Targets::Values`] of width 1. With a header, the dataset's
/// [`Names`] hold the feature columns' names and the label column's.
pub fn parse_csv(text: &str, source: &Path, opts: &CsvOptions) -> Result<Dataset> {
    let format_error = |line: usize, message: String| Error::Format {
        path: source.to_path_buf(),
        line: Some(line),
        message,
    };
    let mut records = Records::new(text, source);

    let Some(first_line) = records.advance()? else {
        return Err(Error::Format {
            path: source.to_path_buf(),
            line: None,
            message: "empty file: no non-blank lines".to_string(),
        });
    };
    let first: Vec<String> = records.cells().map(str::to_string).collect();
    let columns = first.len();
    let has_header = match opts.header {
        HeaderMode::Present => true,
        HeaderMode::Absent => false,
        // A header names the features: one of them is text. A label written as text is
        // data, and an empty cell is a missing number.
        HeaderMode::Auto => {
            let label_at = match &opts.label_column {
                LabelColumn::Last => columns.checked_sub(1),
                LabelColumn::Index(i) => Some(*i),
                LabelColumn::Name(_) => None,
            };
            first.iter().enumerate().any(|(c, cell)| {
                Some(c) != label_at && !cell.is_empty() && cell.parse::<f64>().is_err()
            })
        }
    };
    let names: Option<Vec<String>> =
        has_header.then(|| first.iter().map(|c| c.to_string()).collect());
    if columns < 2 {
        return Err(format_error(
            first_line,
            format!("needs at least 2 columns (features and a label), found {columns}"),
        ));
    }

    let label = match &opts.label_column {
        LabelColumn::Last => columns - 1,
        LabelColumn::Index(i) if *i < columns => *i,
        LabelColumn::Index(i) => {
            return Err(format_error(
                first_line,
                format!("label column index {i} is out of range: the file has {columns} columns (0..{})", columns - 1),
            ))
        }
        LabelColumn::Name(wanted) => match &names {
            None => {
                return Err(format_error(
                    first_line,
                    format!("label column '{wanted}' is given by name, but the file has no header row; give its index instead"),
                ))
            }
            Some(names) => match names.iter().position(|n| n == wanted) {
                Some(i) => i,
                None => {
                    return Err(format_error(
                        first_line,
                        format!(
                            "no column named '{wanted}'; the columns are: {}",
                            names.join(", ")
                        ),
                    ))
                }
            },
        },
    };
    let column_name = |c: usize| match &names {
        Some(names) => format!("column {c} ('{}')", names[c]),
        None => format!("column {c}"),
    };

    let width = columns - 1;
    let mut features: Vec<f32> = Vec::new();
    // Classification labels as written, with their lines; numbers or names, decided once
    // all are read.
    let mut label_cells: Vec<(usize, String)> = Vec::new();
    let mut values: Vec<f32> = Vec::new();
    let mut add_row = |line: usize, row: &[&str]| -> Result<()> {
        if row.len() != columns {
            let origin = if has_header {
                "the header"
            } else {
                "the first row"
            };
            return Err(format_error(
                line,
                format!(
                    "expected {columns} columns (as in {origin}, line {first_line}), got {}",
                    row.len()
                ),
            ));
        }
        for (c, cell) in row.iter().enumerate() {
            if c == label && cell.is_empty() {
                let what = match opts.task {
                    Task::Classification => "class label",
                    Task::Regression => "target",
                };
                return Err(format_error(
                    line,
                    format!(
                        "empty {what} cell in {} (a missing {what} cannot be imputed; drop the row)",
                        column_name(c)
                    ),
                ));
            }
            if c != label && cell.is_empty() && opts.allow_missing {
                features.push(f32::NAN);
                continue;
            }
            let number = |cell: &str| -> Result<f32> {
                let v: f32 = cell.parse().map_err(|_| {
                    let message = if cell.is_empty() {
                        format!(
                            "empty cell in {}: a missing value (--impute mean fills it)",
                            column_name(c)
                        )
                    } else {
                        format!("non-numeric cell \"{cell}\" in {}", column_name(c))
                    };
                    format_error(line, message)
                })?;
                if !v.is_finite() {
                    return Err(format_error(
                        line,
                        format!(
                            "cell \"{cell}\" in {} is not a finite number",
                            column_name(c)
                        ),
                    ));
                }
                Ok(v)
            };
            if c != label {
                features.push(number(cell)?);
            } else if opts.task == Task::Regression {
                values.push(number(cell)?);
            } else {
                label_cells.push((line, cell.to_string()));
            }
        }
        Ok(())
    };
    if !has_header {
        let row: Vec<&str> = first.iter().map(String::as_str).collect();
        add_row(first_line, &row)?;
    }
    while let Some(line) = records.advance()? {
        let row: Vec<&str> = records.cells().collect();
        add_row(line, &row)?;
    }

    let rows = features.len() / width;
    if rows == 0 {
        return Err(format_error(
            first_line,
            "no data rows (only a header)".to_string(),
        ));
    }
    let mut class_names = Vec::new();
    let targets = match opts.task {
        Task::Classification => {
            let (labels, names) = class_labels(&label_cells).map_err(|(line, why)| {
                format_error(line, format!("{why} in {}", column_name(label)))
            })?;
            class_names = names;
            Targets::Classes {
                classes: labels.iter().max().map_or(0, |&m| m as usize + 1),
                labels,
            }
        }
        Task::Regression => Targets::Values { values, width: 1 },
    };
    let name = source
        .file_stem()
        .map_or_else(|| "csv".to_string(), |s| s.to_string_lossy().into_owned());
    let names = Names {
        features: names
            .as_ref()
            .map(|n| {
                n.iter()
                    .enumerate()
                    .filter(|&(c, _)| c != label)
                    .map(|(_, n)| n.clone())
                    .collect()
            })
            .unwrap_or_default(),
        target: names.as_ref().map(|n| n[label].clone()),
        classes: class_names,
    };
    names
        .check(width, targets.classes())
        .map_err(|why| format_error(first_line, format!("header row: {why}")))?;
    Ok(Dataset {
        name,
        features,
        width,
        targets,
        names,
    })
}

/// The class of each label cell `(line, text)`, and the class names: none when every label
/// is an integer, the distinct labels in sorted order when every label is text. The error
/// is `(line, message)`.
fn class_labels(
    cells: &[(usize, String)],
) -> std::result::Result<(Vec<u32>, Vec<String>), (usize, String)> {
    let is_number = |cell: &str| cell.parse::<f64>().is_ok();
    let number = cells.iter().find(|(_, c)| is_number(c));
    let text = cells.iter().find(|(_, c)| !is_number(c));
    match (number, text) {
        (Some((nl, n)), Some((tl, t))) => Err((
            *tl,
            format!(
                "class labels mix numbers (\"{n}\" on line {nl}) and names (\"{t}\" on line {tl}); write every label the same way"
            ),
        )),
        (_, None) => {
            let labels = cells
                .iter()
                .map(|(line, cell)| {
                    class_label(cell)
                        .map_err(|why| (*line, format!("class label \"{cell}\" {why}")))
                })
                .collect::<std::result::Result<Vec<u32>, _>>()?;
            Ok((labels, Vec::new()))
        }
        (None, Some(_)) => {
            let names: Vec<String> = cells
                .iter()
                .map(|(_, c)| c.clone())
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            let index: std::collections::HashMap<&str, u32> = names
                .iter()
                .enumerate()
                .map(|(i, n)| (n.as_str(), i as u32))
                .collect();
            let labels = cells.iter().map(|(_, c)| index[c.as_str()]).collect();
            Ok((labels, names))
        }
    }
}

/// A CSV file's cells as text, for readers that map columns themselves (`soma predict`):
/// the header row when there is one, and each record with the 1-based line it starts on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    pub header: Option<Vec<String>>,
    pub rows: Vec<(usize, Vec<String>)>,
}

impl Table {
    /// The number of columns: the header's, or the first row's (0 for no rows).
    pub fn columns(&self) -> usize {
        match (&self.header, self.rows.first()) {
            (Some(h), _) => h.len(),
            (None, Some((_, cells))) => cells.len(),
            (None, None) => 0,
        }
    }
}

/// Splits CSV text into a [`Table`] (RFC 4180, as [`parse_csv`] reads it; blank lines
/// skipped). With [`HeaderMode::Auto`], the first record is a header when one of its cells
/// is not a number (an empty cell counts as a missing number). `source` names the file in
/// errors.
pub fn read_table(text: &str, source: &Path, header: HeaderMode) -> Result<Table> {
    let mut records = Records::new(text, source);
    let mut rows = Vec::new();
    while let Some(line) = records.advance()? {
        rows.push((
            line,
            records.cells().map(str::to_string).collect::<Vec<_>>(),
        ));
    }
    let has_header = match header {
        HeaderMode::Present => true,
        HeaderMode::Absent => false,
        HeaderMode::Auto => rows.first().is_some_and(|(_, cells)| {
            cells
                .iter()
                .any(|c| !c.is_empty() && c.parse::<f64>().is_err())
        }),
    };
    let header = match has_header && !rows.is_empty() {
        true => Some(rows.remove(0).1),
        false => None,
    };
    Ok(Table { header, rows })
}

/// The non-blank records of a CSV text with the line each starts on. Cells come trimmed,
/// unquoted (`"a ""b"", c"` is `a "b", c`); a quoted cell with spaces outside its quotes
/// (`1, "2" ,3`) loses its quotes too.
struct Records<'a> {
    reader: ::csv::Reader<&'a [u8]>,
    record: ::csv::StringRecord,
    /// The text the reader reads, for line numbers.
    text: &'a [u8],
    source: &'a Path,
}

impl<'a> Records<'a> {
    fn new(text: &'a str, source: &'a Path) -> Self {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let reader = ::csv::ReaderBuilder::new()
            .has_headers(false)
            // Rows of the wrong width get soma's message, naming the header's width.
            .flexible(true)
            .trim(::csv::Trim::All)
            .from_reader(text.as_bytes());
        Records {
            reader,
            record: ::csv::StringRecord::new(),
            text: text.as_bytes(),
            source,
        }
    }

    /// Moves to the next record that is not a blank line; its 1-based line, or `None` at
    /// the end.
    fn advance(&mut self) -> Result<Option<usize>> {
        loop {
            let more = self.reader.read_record(&mut self.record).map_err(|e| {
                // The text is UTF-8 and rows may have any width, so this is not expected;
                // still a clean error.
                Error::Format {
                    path: self.source.to_path_buf(),
                    line: e.position().map(|p| p.line() as usize),
                    message: format!("unreadable CSV: {e}"),
                }
            })?;
            if !more {
                return Ok(None);
            }
            // A line of spaces is one empty cell after trimming: blank.
            if self.record.len() == 1 && self.record[0].is_empty() {
                continue;
            }
            return Ok(Some(self.line()));
        }
    }

    /// The 1-based line the current record starts on. The reader's position is where it
    /// began to look for the record, before the blank lines that it skips; they are counted
    /// here.
    fn line(&self) -> usize {
        let Some(pos) = self.record.position() else {
            return 0;
        };
        let skipped = self
            .text
            .get(pos.byte() as usize..)
            .unwrap_or_default()
            .iter()
            .take_while(|&&b| b == b'\r' || b == b'\n')
            .filter(|&&b| b == b'\n')
            .count();
        pos.line() as usize + skipped
    }

    /// The cells of the current record.
    fn cells(&self) -> impl Iterator<Item = &str> {
        self.record.iter().map(unquote)
    }
}

/// A trimmed cell with one pair of surrounding double quotes removed: `"2"` from `1, "2" ,3`,
/// whose quotes the `csv` crate keeps (a quote opens a quoted field only at its first byte).
fn unquote(cell: &str) -> &str {
    cell.strip_prefix('"')
        .and_then(|c| c.strip_suffix('"'))
        .unwrap_or(cell)
}

/// A class label cell as a `u32`, or why it is not one (completes "class label ... in column ...").
fn class_label(cell: &str) -> std::result::Result<u32, &'static str> {
    let v: f64 = cell
        .parse()
        .map_err(|_| "is not a number (class labels must be integers 0, 1, 2, ...)")?;
    if !v.is_finite() {
        Err("is not a finite number")
    } else if v < 0.0 {
        Err("is negative (class labels must be integers 0, 1, 2, ...)")
    } else if v.fract() != 0.0 {
        Err("is not an integer (for real-valued targets use the regression task)")
    } else if v >= u32::MAX as f64 {
        Err("is too large")
    } else {
        Ok(v as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, opts: &CsvOptions) -> Result<Dataset> {
        parse_csv(text, Path::new("t/test.csv"), opts)
    }

    /// The line and message of a Format error; panics on anything else.
    fn format_err(r: Result<Dataset>) -> (Option<usize>, String) {
        match r {
            Err(Error::Format {
                path,
                line,
                message,
            }) => {
                assert_eq!(path, Path::new("t/test.csv"));
                (line, message)
            }
            other => panic!("expected a Format error, got {other:?}"),
        }
    }

    fn with_label(label_column: LabelColumn) -> CsvOptions {
        CsvOptions {
            label_column,
            ..CsvOptions::default()
        }
    }

    #[test]
    fn header_auto_detection() {
        let with = parse("a,b,y\n1,2,0\n3,4,1\n", &CsvOptions::default()).expect("header");
        assert_eq!(with.len(), 2);
        assert_eq!(with.name, "test");
        let without = parse("1,2,0\n3,4,1\n", &CsvOptions::default()).expect("no header");
        // The same data; only the header names its columns.
        assert_eq!(without.names, Names::default());
        assert_eq!(
            with.names,
            Names {
                features: vec!["a".into(), "b".into()],
                target: Some("y".into()),
                classes: vec![],
            }
        );
        assert_eq!(
            without,
            Dataset {
                names: Names::default(),
                ..with.clone()
            }
        );
        assert_eq!(without.features, vec![1.0, 2.0, 3.0, 4.0]);
        assert_eq!(without.labels(), Some(&[0u32, 1][..]));
        assert_eq!(without.targets.classes(), Some(2));

        // Forced modes override detection.
        let absent = CsvOptions {
            header: HeaderMode::Absent,
            ..CsvOptions::default()
        };
        let (line, m) = format_err(parse("a,b,y\n1,2,0\n", &absent));
        assert_eq!(line, Some(1));
        assert!(m.contains("\"a\"") && m.contains("column 0"), "{m}");
        let present = CsvOptions {
            header: HeaderMode::Present,
            ..CsvOptions::default()
        };
        assert_eq!(
            parse("1,2,0\n5,6,1\n", &present)
                .expect("numeric header")
                .len(),
            1
        );
    }

    #[test]
    fn label_by_last_index_and_name() {
        let text = "y,a,b\n2,1.5,2.5\n0,3,4\n";
        let by_index = parse(text, &with_label(LabelColumn::Index(0))).expect("index");
        let by_name = parse(text, &with_label(LabelColumn::Name("y".into()))).expect("name");
        assert_eq!(by_index, by_name);
        assert_eq!(by_name.features, vec![1.5, 2.5, 3.0, 4.0]);
        assert_eq!(by_name.labels(), Some(&[2u32, 0][..]));
        assert_eq!(by_name.targets.classes(), Some(3));

        let middle =
            parse("a,y,b\n1,1,2\n", &with_label(LabelColumn::Name("y".into()))).expect("middle");
        assert_eq!(middle.features, vec![1.0, 2.0]);

        let last = parse("1,2,3.0\n", &CsvOptions::default()).expect("last");
        assert_eq!(last.labels(), Some(&[3u32][..]));
        assert_eq!(last.targets.classes(), Some(4));

        let (_, m) = format_err(parse("1,2,3\n", &with_label(LabelColumn::Index(3))));
        assert!(m.contains("index 3") && m.contains("3 columns"), "{m}");
    }

    #[test]
    fn unknown_label_name_lists_the_columns() {
        let (line, m) = format_err(parse(
            "a,b,target\n1,2,0\n",
            &with_label(LabelColumn::Name("label".into())),
        ));
        assert_eq!(line, Some(1));
        assert!(m.contains("'label'") && m.contains("a, b, target"), "{m}");
        let (_, m) = format_err(parse("1,2,0\n", &with_label(LabelColumn::Name("y".into()))));
        assert!(m.contains("no header"), "{m}");
    }

    #[test]
    fn wrong_column_count_names_line_and_counts() {
        let (line, m) = format_err(parse("a,b,y\n1,2,0\n\n3,4\n", &CsvOptions::default()));
        assert_eq!(line, Some(4));
        assert!(
            m.contains("expected 3 columns") && m.contains("got 2"),
            "{m}"
        );
        let (line, m) = format_err(parse("1,2,0\n1,2,0,9\n", &CsvOptions::default()));
        assert_eq!(line, Some(2));
        assert!(m.contains("got 4"), "{m}");
    }

    #[test]
    fn non_numeric_cells_are_quoted_with_their_column() {
        let (line, m) = format_err(parse("a,b,y\n1,2,0\n1,abc,1\n", &CsvOptions::default()));
        assert_eq!(line, Some(3));
        assert!(m.contains("\"abc\"") && m.contains("column 1 ('b')"), "{m}");
        let (_, m) = format_err(parse("a,b,y\n1,,1\n", &CsvOptions::default()));
        assert!(m.contains("empty cell") && m.contains("('b')"), "{m}");
        let (_, m) = format_err(parse("a,b,y\n1,inf,1\n", &CsvOptions::default()));
        assert!(m.contains("not a finite number"), "{m}");
        // A label that is text among numbers.
        let (line, m) = format_err(parse("a,b,y\n1,2,0\n1,2,cat\n", &CsvOptions::default()));
        assert_eq!(line, Some(3));
        assert!(
            m.contains("mix numbers (\"0\" on line 2) and names (\"cat\" on line 3)")
                && m.contains("('y')"),
            "{m}"
        );
    }

    #[test]
    fn text_labels_become_classes_in_sorted_order() {
        let text = "x,species\n1,virginica\n2,setosa\n3,\"versicolor\"\n4,setosa\n";
        let ds = parse(text, &CsvOptions::default()).expect("names");
        assert_eq!(ds.labels(), Some(&[2u32, 0, 1, 0][..]));
        assert_eq!(ds.targets.classes(), Some(3));
        assert_eq!(ds.names.classes, ["setosa", "versicolor", "virginica"]);
        assert_eq!(ds.names.features, ["x"]);
        assert_eq!(ds.names.target.as_deref(), Some("species"));
        // Byte order: upper case first; "10" before "9" as text.
        let ds = parse("1,no\n2,Yes\n3,yes\n", &CsvOptions::default()).expect("names");
        assert_eq!(ds.names.classes, ["Yes", "no", "yes"]);
        assert_eq!(ds.labels(), Some(&[1u32, 0, 2][..]));
        // An empty label is an error either way.
        let (line, m) = format_err(parse("x,y\n1,a\n2,\n", &CsvOptions::default()));
        assert_eq!(line, Some(3));
        assert!(
            m.contains("empty class label cell in column 1 ('y')"),
            "{m}"
        );
    }

    #[test]
    fn missing_values_read_as_nan_when_allowed() {
        let opts = CsvOptions {
            allow_missing: true,
            ..CsvOptions::default()
        };
        // A first row with an empty cell is data, not a header.
        let ds = parse(",2,0\n3, ,1\n", &opts).expect("missing");
        assert!(ds.features[0].is_nan() && ds.features[3].is_nan());
        assert_eq!((ds.features[1], ds.features[2]), (2.0, 3.0));
        assert_eq!(ds.names, Names::default());
        // Labels and targets are never missing.
        let (_, m) = format_err(parse("1,2,\n", &opts));
        assert!(m.contains("empty class label cell"), "{m}");
        let reg = CsvOptions {
            task: Task::Regression,
            ..opts
        };
        let (_, m) = format_err(parse("1,2,\n", &reg));
        assert!(m.contains("empty target cell"), "{m}");
    }

    #[test]
    fn a_header_naming_a_column_twice_is_an_error() {
        let (line, m) = format_err(parse("a,a,y\n1,2,0\n", &CsvOptions::default()));
        assert_eq!(line, Some(1));
        assert!(m.contains("'a' appears twice"), "{m}");
    }

    #[test]
    fn read_table_keeps_cells_as_text() {
        let p = Path::new("t/test.csv");
        let t = read_table("b,a\n\n1,\"x,y\"\n2,\n", p, HeaderMode::Auto).unwrap();
        assert_eq!(t.header, Some(vec!["b".to_string(), "a".to_string()]));
        assert_eq!(
            t.rows,
            vec![
                (3, vec!["1".to_string(), "x,y".to_string()]),
                (4, vec!["2".to_string(), String::new()]),
            ]
        );
        let t = read_table("1,\n2,3\n", p, HeaderMode::Auto).unwrap();
        assert_eq!((t.header, t.rows.len()), (None, 2));
    }

    #[test]
    fn bad_class_labels() {
        let (line, m) = format_err(parse("1,2,0\n1,2,-1\n", &CsvOptions::default()));
        assert_eq!(line, Some(2));
        assert!(m.contains("\"-1\"") && m.contains("negative"), "{m}");
        let (_, m) = format_err(parse("1,2,0.5\n", &CsvOptions::default()));
        assert!(m.contains("not an integer"), "{m}");
        // The same values are fine as regression targets.
        let reg = CsvOptions {
            task: Task::Regression,
            ..CsvOptions::default()
        };
        let ds = parse("1,2,0.5\n1,2,-1\n", &reg).expect("regression");
        assert_eq!(
            ds.targets,
            Targets::Values {
                values: vec![0.5, -1.0],
                width: 1
            }
        );
        assert_eq!(ds.task(), Task::Regression);
    }

    #[test]
    fn empty_inputs() {
        for text in ["", "\n\n", "  \r\n\n", "\u{feff}"] {
            let (line, m) = format_err(parse(text, &CsvOptions::default()));
            assert_eq!(line, None);
            assert!(m.contains("empty"), "{m}");
        }
        let (line, m) = format_err(parse("a,b,y\n\n", &CsvOptions::default()));
        assert_eq!(line, Some(1));
        assert!(m.contains("no data rows"), "{m}");
        let (_, m) = format_err(parse("5\n6\n", &CsvOptions::default()));
        assert!(m.contains("at least 2 columns"), "{m}");
    }

    #[test]
    fn crlf_blank_lines_spaces_and_quotes() {
        let text = "\u{feff}\"a\", \"b\" ,y\r\n\r\n 1 , 2 ,0\r\n3,4,1\r";
        let ds = parse(text, &with_label(LabelColumn::Name("y".into()))).expect("crlf");
        assert_eq!(ds.features, vec![1.0, 2.0, 3.0, 4.0]);
        assert_eq!(ds.labels(), Some(&[0u32, 1][..]));
    }

    #[test]
    fn load_csv_reads_files_and_reports_io_errors() {
        let dir = crate::data::test_temp_dir("csv");
        let path = dir.join("small.csv");
        std::fs::write(&path, "x,target\n0.5,1\n").expect("write");
        let ds = load_csv(&path, &CsvOptions::default()).expect("load");
        assert_eq!((ds.name.as_str(), ds.len(), ds.width), ("small", 1, 1));
        std::fs::write(&path, b"x,y\n\xff,1\n").expect("write");
        assert!(matches!(
            load_csv(&path, &CsvOptions::default()),
            Err(Error::Format { line: None, .. })
        ));
        let missing = dir.join("missing.csv");
        match load_csv(&missing, &CsvOptions::default()) {
            Err(Error::Io { path, .. }) => assert_eq!(path, missing),
            other => panic!("expected Io error, got {other:?}"),
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn quoted_fields_keep_commas_quotes_and_line_breaks() {
        // RFC 4180: a quoted field holds commas, doubled quotes and line breaks.
        let text = "\"weight, kg\",\"say \"\"hi\"\"\",y\n\"1.5\",2,\"0\"\n3, \"4\" ,1\n";
        let ds = parse(text, &with_label(LabelColumn::Name("say \"hi\"".into()))).expect("quoted");
        assert_eq!(ds.features, vec![1.5, 0.0, 3.0, 1.0]);
        assert_eq!(ds.labels(), Some(&[2u32, 4][..]));
        let (_, m) = format_err(parse(text, &with_label(LabelColumn::Name("kg".into()))));
        assert!(
            m.contains("the columns are: weight, kg, say \"hi\", y"),
            "{m}"
        );
        // An embedded comma does not split a data cell either: one cell, not a number.
        let (line, m) = format_err(parse("a,y\n\"1,5\",0\n", &CsvOptions::default()));
        assert_eq!(line, Some(2));
        assert!(m.contains("\"1,5\"") && m.contains("column 0 ('a')"), "{m}");
        // A record after a quoted line break starts on the line it starts on.
        let (line, m) = format_err(parse("\"x\nwide\",y\n1,0\n\n2,z\n", &CsvOptions::default()));
        assert_eq!(line, Some(5));
        assert!(m.contains("\"z\"") && m.contains("column 1 ('y')"), "{m}");
    }

    #[test]
    fn byte_order_mark_is_not_part_of_the_first_name() {
        let text = "\u{feff}a,b,y\n1,2,0\n";
        let ds = parse(text, &with_label(LabelColumn::Name("a".into()))).expect("bom");
        assert_eq!(ds.features, vec![2.0, 0.0]);
        assert_eq!(ds.labels(), Some(&[1u32][..]));
        // Without a header, the first cell is a number despite the mark.
        let ds = parse("\u{feff}1,2,0\n", &CsvOptions::default()).expect("bom, no header");
        assert_eq!(ds.features, vec![1.0, 2.0]);
        // Through load_csv, from the file's bytes.
        let dir = crate::data::test_temp_dir("csv-bom");
        let path = dir.join("bom.csv");
        std::fs::write(&path, b"\xef\xbb\xbfa,y\r\n4,1\r\n").expect("write");
        let ds = load_csv(&path, &with_label(LabelColumn::Name("a".into()))).expect("load");
        assert_eq!(ds.features, vec![1.0]);
        assert_eq!(ds.labels(), Some(&[4u32][..]));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn crlf_line_ends() {
        let text = "a,b,y\r\n1,2,0\r\n\r\n3,4,1\r\n";
        let ds = parse(text, &CsvOptions::default()).expect("crlf");
        assert_eq!(ds.features, vec![1.0, 2.0, 3.0, 4.0]);
        assert_eq!(ds.labels(), Some(&[0u32, 1][..]));
        // Line numbers count CRLF lines, the blank one included.
        let (line, m) = format_err(parse(
            "a,b,y\r\n1,2,0\r\n\r\n3,x,1\r\n",
            &CsvOptions::default(),
        ));
        assert_eq!(line, Some(4));
        assert!(m.contains("\"x\"") && m.contains("('b')"), "{m}");
    }

    #[test]
    fn empty_cell_names_file_line_and_column() {
        let err = parse("a,b,y\n1,2,0\n3,,1\n", &CsvOptions::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "t/test.csv:3: empty cell in column 1 ('b'): a missing value (--impute mean fills it)"
        );
        // Without a header, the column's number alone; an empty label likewise.
        let err = parse("1,2,0\n3, ,1\n", &CsvOptions::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "t/test.csv:2: empty cell in column 1: a missing value (--impute mean fills it)"
        );
        let err = parse("a,y\n1,\n", &CsvOptions::default()).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("t/test.csv:2: empty class label cell in column 1 ('y')"),
            "{err}"
        );
    }

    #[test]
    fn error_messages_start_with_file_and_line() {
        let cases: [(&str, CsvOptions, &str); 6] = [
            (
                "a,b,y\n1,2,0\n3,4\n",
                CsvOptions::default(),
                "t/test.csv:3: expected 3 columns",
            ),
            (
                "a,b,y\n1,abc,1\n",
                CsvOptions::default(),
                "t/test.csv:2: non-numeric cell \"abc\"",
            ),
            (
                "1,2,0\n1,2,-1\n",
                CsvOptions::default(),
                "t/test.csv:2: class label \"-1\"",
            ),
            (
                "a,b,y\n1,inf,0\n",
                CsvOptions::default(),
                "t/test.csv:2: cell \"inf\"",
            ),
            (
                "\n5\n",
                CsvOptions::default(),
                "t/test.csv:2: needs at least 2 columns",
            ),
            (
                "a,b\n1,2\n",
                with_label(LabelColumn::Index(7)),
                "t/test.csv:1: label column index 7",
            ),
        ];
        for (text, opts, start) in cases {
            let err = parse(text, &opts).unwrap_err();
            assert!(err.to_string().starts_with(start), "{text:?}: {err}");
        }
    }

    #[test]
    fn shared_wine_file_loads_when_present() {
        let Some(path) = crate::data::shared_data("wine/wine.csv") else {
            return;
        };
        let ds = load_csv(&path, &CsvOptions::default()).expect("wine");
        assert_eq!(
            (ds.len(), ds.width, ds.targets.classes()),
            (178, 13, Some(3))
        );
    }
}
