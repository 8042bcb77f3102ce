//! The Prometheus text exposition format, version 0.0.4: `# HELP` and `# TYPE` lines, then
//! every sample of that family. Small enough to write here rather than pull in a registry
//! built for long-lived metric objects: the daemon renders a snapshot of its state on each
//! scrape, so there is nothing to register.

use std::fmt::Write;

/// The media type of what [`Exposition`] writes.
pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    Gauge,
    Counter,
}

/// A document being written. Each [`Exposition::family`] must be followed by all of that
/// family's samples (the format wants them together).
#[derive(Debug, Default)]
pub(crate) struct Exposition {
    out: String,
}

impl Exposition {
    /// Opens a family: its help text (escaped as the format says) and its type.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let kind = match kind {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
        };
        // Writing to a String cannot fail.
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    /// One sample of the family just opened.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Value) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (label, text)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{label}=\"{}\"", escape_label(text));
            }
            self.out.push('}');
        }
        self.out.push(' ');
        value.write_to(&mut self.out);
        self.out.push('\n');
    }

    pub fn finish(self) -> String {
        self.out
    }
}

/// A sample's value: integers print exactly, floats as Rust prints them (which the format
/// accepts: `1.5`, `0`, `1e100`).
pub(crate) trait Value {
    fn write_to(&self, out: &mut String);
}

impl Value for u64 {
    fn write_to(&self, out: &mut String) {
        let _ = write!(out, "{self}");
    }
}

impl Value for f64 {
    fn write_to(&self, out: &mut String) {
        if self.is_finite() {
            let _ = write!(out, "{self}");
        } else if self.is_nan() {
            out.push_str("NaN");
        } else if *self > 0.0 {
            out.push_str("+Inf");
        } else {
            out.push_str("-Inf");
        }
    }
}

/// A label value: backslash, double quote and line feed are escaped (`\\`, `\"`, `\n`);
/// everything else, any UTF-8, is written as it is.
pub(crate) fn escape_label(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Help text: backslash and line feed are escaped (a quote needs none there).
fn escape_help(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape_label("two\nlines"), "two\\nlines");
        assert_eq!(escape_label("plain é"), "plain é");
    }

    #[test]
    fn a_family_and_its_samples() {
        let mut x = Exposition::default();
        x.family("arsnet_x_bytes", Kind::Gauge, "Bytes.\nWith \\ a newline.");
        x.sample("arsnet_x_bytes", &[("job_id", "1"), ("name", "a\"b")], 5u64);
        x.sample("arsnet_x_bytes", &[], 0.25f64);
        x.sample("arsnet_x_bytes", &[], f64::INFINITY);
        assert_eq!(
            x.finish(),
            "# HELP arsnet_x_bytes Bytes.\\nWith \\\\ a newline.\n\
             # TYPE arsnet_x_bytes gauge\n\
             arsnet_x_bytes{job_id=\"1\",name=\"a\\\"b\"} 5\n\
             arsnet_x_bytes 0.25\n\
             arsnet_x_bytes +Inf\n"
        );
    }
}
