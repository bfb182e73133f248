//! Problems found in a config file, each with its place (file:line:column) and what to do
//! about it; every one is reported, not only the first.

use std::fmt;

use serde_saphyr::Location;

/// One problem in a config file, with its place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub file: String,
    /// 1-based; 0 when the problem has no place in the file.
    pub line: u64,
    pub column: u64,
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "{}:{}:{}: {}", self.file, self.line, self.column, self.message)
        } else {
            write!(f, "{}: {}", self.file, self.message)
        }
    }
}

/// Every problem found in a config file.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    pub problems: Vec<ConfigProblem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// Collects problems with their places while a config is checked.
pub(crate) struct Problems {
    file: String,
    list: Vec<ConfigProblem>,
}

impl Problems {
    pub(crate) fn new(file: &str) -> Self {
        Problems {
            file: file.to_owned(),
            list: Vec::new(),
        }
    }

    pub(crate) fn at(&mut self, loc: Location, message: impl Into<String>) {
        self.list.push(ConfigProblem {
            file: self.file.clone(),
            line: loc.line(),
            column: loc.column(),
            message: message.into(),
        });
    }

    pub(crate) fn into_list(self) -> Vec<ConfigProblem> {
        self.list
    }

    pub(crate) fn into_result(self) -> Result<(), ConfigError> {
        if self.list.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { problems: self.list })
        }
    }
}

/// The first line of serde-saphyr's rendered message, without the place it already names
/// (we print the place ourselves, as file:line:column).
pub(super) fn parse_message(e: &serde_saphyr::Error) -> String {
    let text = e.to_string();
    let mut msg = text.lines().next().unwrap_or("invalid YAML").trim();
    msg = msg.strip_prefix("error: ").unwrap_or(msg);
    if let Some((_, after)) = msg.strip_prefix("line ").and_then(|rest| rest.split_once(": ")) {
        msg = after;
    }
    msg.to_owned()
}
