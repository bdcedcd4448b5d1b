//! Configuration errors: what is wrong and where, printed ripgrep-style as
//! `file:line:col: message`, one per line, all of them.
//!
//! Loading never stops at the first problem: every error found in every file is collected
//! into one [`ConfigErrors`], sorted by file, line and column, so that `celeriac check` can
//! show the whole list at once.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

/// A position in a configuration file: 1-based line and column.
///
/// Columns count characters (Unicode scalar values), not bytes, so that a column matches
/// what an editor shows for a line that contains non-ASCII text.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Location {
    pub file: Arc<Path>,
    pub line: u32,
    pub col: u32,
}

impl Location {
    pub fn new(file: Arc<Path>, line: u32, col: u32) -> Self {
        Location { file, line, col }
    }

    /// The same file and line, `chars` characters further right.
    pub fn shifted(&self, chars: u32) -> Location {
        Location {
            file: self.file.clone(),
            line: self.line,
            col: self.col.saturating_add(chars),
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.col)
    }
}

/// One problem in the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Where the problem is, when it has a position in a file.
    pub loc: Option<Location>,
    /// The file or directory concerned when there is no position (unreadable file, empty
    /// directory, ...). `None` when `loc` is set.
    pub path: Option<Arc<Path>>,
    /// What is wrong, e.g. "unknown key `retires`; did you mean `retry`?".
    pub message: String,
    /// Other places the message refers to, e.g. the first definition of a name defined twice.
    pub related: Vec<Location>,
}

impl ConfigError {
    /// An error at a position in a file.
    pub fn at(loc: &Location, message: impl Into<String>) -> Self {
        ConfigError {
            loc: Some(loc.clone()),
            path: None,
            message: message.into(),
            related: Vec::new(),
        }
    }

    /// An error about a whole file or directory.
    pub fn in_path(path: impl Into<Arc<Path>>, message: impl Into<String>) -> Self {
        ConfigError {
            loc: None,
            path: Some(path.into()),
            message: message.into(),
            related: Vec::new(),
        }
    }

    /// Adds another location that the message refers to.
    pub fn with_related(mut self, loc: &Location) -> Self {
        self.related.push(loc.clone());
        self
    }

    /// The file (or directory) the error is in, if any.
    pub fn file(&self) -> Option<&Path> {
        match (&self.loc, &self.path) {
            (Some(loc), _) => Some(&loc.file),
            (None, Some(path)) => Some(path),
            (None, None) => None,
        }
    }

    fn sort_key(&self) -> (Option<&Path>, u32, u32) {
        let (line, col) = self.loc.as_ref().map_or((0, 0), |l| (l.line, l.col));
        (self.file(), line, col)
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.loc, &self.path) {
            (Some(loc), _) => write!(f, "{loc}: {}", self.message),
            (None, Some(path)) => write!(f, "{}: {}", path.display(), self.message),
            (None, None) => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Every problem found while loading a configuration, sorted by file, line and column.
///
/// Displays as one `file:line:col: message` line per error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors {
    errors: Vec<ConfigError>,
}

impl ConfigErrors {
    /// Sorts the errors by file, line and column (stable: errors at the same position keep
    /// the order in which they were found).
    pub fn new(mut errors: Vec<ConfigError>) -> Self {
        errors.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
        ConfigErrors { errors }
    }

    pub fn len(&self) -> usize {
        self.errors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, ConfigError> {
        self.errors.iter()
    }

    pub fn as_slice(&self) -> &[ConfigError] {
        &self.errors
    }

    pub fn into_vec(self) -> Vec<ConfigError> {
        self.errors
    }

    /// Configuration errors are never transient: loading the same files again gives the
    /// same errors. (A file caught half-written during a hot reload is reloaded on the next
    /// change event, not retried.)
    pub fn is_transient(&self) -> bool {
        false
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl IntoIterator for ConfigErrors {
    type Item = ConfigError;
    type IntoIter = std::vec::IntoIter<ConfigError>;

    fn into_iter(self) -> Self::IntoIter {
        self.errors.into_iter()
    }
}

impl<'a> IntoIterator for &'a ConfigErrors {
    type Item = &'a ConfigError;
    type IntoIter = std::slice::Iter<'a, ConfigError>;

    fn into_iter(self) -> Self::IntoIter {
        self.errors.iter()
    }
}

impl From<ConfigError> for ConfigErrors {
    fn from(error: ConfigError) -> Self {
        ConfigErrors::new(vec![error])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(file: &str, line: u32, col: u32) -> Location {
        Location::new(Arc::from(Path::new(file)), line, col)
    }

    #[test]
    fn location_displays_as_file_line_col() {
        assert_eq!(loc("a.yaml", 3, 7).to_string(), "a.yaml:3:7");
    }

    #[test]
    fn errors_are_sorted_by_file_line_and_column_one_per_line() {
        let errors = ConfigErrors::new(vec![
            ConfigError::at(&loc("b.yaml", 1, 1), "third"),
            ConfigError::at(&loc("a.yaml", 2, 5), "second"),
            ConfigError::at(&loc("a.yaml", 2, 1), "first"),
            ConfigError::in_path(Path::new("a.yaml"), "whole file"),
        ]);
        assert_eq!(
            errors.to_string(),
            "a.yaml: whole file\na.yaml:2:1: first\na.yaml:2:5: second\nb.yaml:1:1: third"
        );
        assert!(!errors.is_transient());
    }
}
