//! Output for people (aligned tables, colour only on a terminal) and for scripts (`-o json`: one
//! JSON object per line).

use std::io::{self, IsTerminal, Write};

use clap::ValueEnum;

/// `-o/--output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns for people.
    Table,
    /// One JSON object per line, for scripts and streams.
    Json,
}

/// `--color`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ColorChoice {
    /// Colour when stdout is a terminal and `NO_COLOR` is not set.
    Auto,
    /// Always colour.
    Always,
    /// Never colour.
    Never,
}

/// Where and how a command prints.
#[derive(Debug, Clone, Copy)]
pub struct Printer {
    /// Table or JSON.
    pub format: OutputFormat,
    /// Whether to use ANSI colours.
    pub color: bool,
}

impl Printer {
    /// A printer for stdout.
    #[must_use]
    pub fn new(format: OutputFormat, color: ColorChoice) -> Self {
        let color = match color {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => {
                io::stdout().is_terminal()
                    && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
            }
        };
        Printer { format, color }
    }

    /// Whether output is JSON.
    #[must_use]
    pub fn json(&self) -> bool {
        self.format == OutputFormat::Json
    }

    /// Prints one JSON value on one line and flushes (streams are read line by line).
    pub fn json_line(&self, value: &serde_json::Value) {
        let mut out = io::stdout().lock();
        // A closed pipe (`| head`) is not an error worth a message.
        let _ = writeln!(out, "{value}");
        let _ = out.flush();
    }

    /// Prints text as it is (a rendered table) and flushes.
    pub fn text(&self, text: &str) {
        let mut out = io::stdout().lock();
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
    }

    /// Prints a line of text and flushes, saying whether it could: a stream (`watch`) stops
    /// when its reader has gone (`waypost watch | head -3`).
    ///
    /// # Errors
    /// The write error (a closed pipe: `BrokenPipe`).
    pub fn try_line(&self, text: &str) -> io::Result<()> {
        let mut out = io::stdout().lock();
        writeln!(out, "{text}")?;
        out.flush()
    }

    /// Prints a line of text and flushes.
    pub fn line(&self, text: &str) {
        let mut out = io::stdout().lock();
        let _ = writeln!(out, "{text}");
        let _ = out.flush();
    }
}

/// Writes bytes to stdout as they are and flushes; a closed pipe is ignored.
pub fn write_stdout(bytes: &[u8]) {
    let mut out = io::stdout().lock();
    let _ = out.write_all(bytes);
    let _ = out.flush();
}

/// An aligned table: a header row and rows of cells, columns padded to their widest cell.
#[derive(Debug, Default)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers.
    #[must_use]
    pub fn new<I, S>(headers: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Table {
            headers: headers.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells are empty, extra cells are dropped.
    pub fn row<I, S>(&mut self, cells: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut row: Vec<String> = cells.into_iter().map(Into::into).collect();
        row.resize(self.headers.len(), String::new());
        self.rows.push(row);
    }

    /// The number of rows.
    #[must_use]
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether there is no row.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table as text: a header line then one line per row, columns separated by two spaces,
    /// trailing spaces trimmed.
    #[must_use]
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| visible_width(h)).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(visible_width(cell));
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.headers).chain(&self.rows) {
            let mut line = String::new();
            for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                line.push_str(cell);
                line.extend(std::iter::repeat_n(' ', w - visible_width(cell)));
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// The characters of `cell` a terminal shows: ANSI colour sequences (`ESC [ … m`) take no room.
fn visible_width(cell: &str) -> usize {
    let mut width = 0;
    let mut chars = cell.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            width += 1;
        }
    }
    width
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coloured_cells_are_padded_by_what_the_terminal_shows() {
        let mut t = Table::new(["ID", "HEALTH", "X"]);
        t.row(["a", "\u{1b}[32mhealthy\u{1b}[0m", "1"]);
        t.row(["b", "down", "2"]);
        let text = t.render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "ID  HEALTH   X");
        assert_eq!(lines[1], "a   \u{1b}[32mhealthy\u{1b}[0m  1");
        assert_eq!(lines[2], "b   down     2");
    }

    #[test]
    fn a_table_pads_columns_to_the_widest_cell_and_trims_line_ends() {
        let mut t = Table::new(["ID", "ADDRESS", "PORT"]);
        t.row(["a", "10.0.0.1", "80"]);
        t.row(["user-service-2", "h", "8080"]);
        assert_eq!(
            t.render(),
            "ID              ADDRESS   PORT\n\
             a               10.0.0.1  80\n\
             user-service-2  h         8080\n"
        );
    }
}
