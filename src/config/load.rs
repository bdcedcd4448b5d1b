//! Finding and reading configuration files: one file, or a directory of them.
//!
//! A directory is read non-recursively: its `*.yaml` and `*.yml` files, sorted by name.
//! Hidden files and editor leftovers (`.foo.yaml.swp`, `foo.yaml~`, `#foo.yaml#`,
//! `.#foo.yaml`) are skipped, so that a hot reload does not pick up half-edited copies.
//! Empty files (or files with only comments) are fine and contribute nothing.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::error::{ConfigError, ConfigErrors};
use super::model::Config;
use super::validate::{self, SourceFile};
use super::yaml::{self, MAX_FILE_SIZE};

/// Loads and validates the configuration at `path`: a YAML file, or a directory whose
/// YAML files are merged. Returns every problem found, not only the first.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let metadata = fs::metadata(path).map_err(|e| cannot_read(path, &e))?;
    let files = if metadata.is_dir() {
        let files = config_files(path)?;
        if files.is_empty() {
            return Err(ConfigError::in_path(
                path,
                "no configuration files (*.yaml or *.yml) in this directory",
            )
            .into());
        }
        files
    } else {
        vec![path.to_path_buf()]
    };
    let mut errors = Vec::new();
    let mut sources = Vec::with_capacity(files.len());
    for result in read_and_parse_all(files) {
        match result {
            Ok((source, parse_errors)) => {
                errors.extend(parse_errors);
                sources.push(source);
            }
            Err(error) => errors.push(error),
        }
    }
    validate::build(sources, errors)
}

type ParseResult = Result<(SourceFile, Vec<ConfigError>), ConfigError>;

/// Reads and parses files, several at a time when there are several (a big configuration
/// is usually split into many files), returning the results in the files' order.
fn read_and_parse_all(files: Vec<PathBuf>) -> Vec<ParseResult> {
    let read_and_parse = |file: &PathBuf| -> ParseResult {
        let file: Arc<Path> = Arc::from(file.as_path());
        let text = read(&file)?;
        let parsed = yaml::parse(&text, &file);
        Ok((SourceFile::new(file, text, parsed.root), parsed.errors))
    };
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(files.len());
    if workers <= 1 {
        return files.iter().map(read_and_parse).collect();
    }
    let mut results: Vec<Option<ParseResult>> = (0..files.len()).map(|_| None).collect();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|worker| {
                let files = &files;
                scope.spawn(move || {
                    (worker..files.len())
                        .step_by(workers)
                        .map(|i| (i, read_and_parse(&files[i])))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for handle in handles {
            // A panic in a worker is a bug; re-raise it on the caller's thread.
            let done = handle
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            for (i, result) in done {
                results[i] = Some(result);
            }
        }
    });
    results.into_iter().flatten().collect()
}

/// Loads a configuration from text, as if read from `path` (which is only used in
/// locations and is not read). For tests and for configurations that do not live in files.
pub fn load_str(text: &str, path: &Path) -> Result<Config, ConfigErrors> {
    let file: Arc<Path> = Arc::from(path);
    let text = text.strip_prefix('\u{FEFF}').unwrap_or(text);
    let parsed = yaml::parse(text, &file);
    let sources = vec![SourceFile::new(file, text.to_string(), parsed.root)];
    validate::build(sources, parsed.errors)
}

/// Whether a directory entry with this name is a configuration file.
pub fn is_config_file_name(name: &str) -> bool {
    let is_yaml = name.ends_with(".yaml") || name.ends_with(".yml");
    let hidden_or_temporary = name.starts_with('.') || name.starts_with('#') || name.ends_with('~');
    is_yaml && !hidden_or_temporary
}

/// The configuration files in a directory, sorted by name.
fn config_files(dir: &Path) -> Result<Vec<PathBuf>, ConfigErrors> {
    let entries = fs::read_dir(dir).map_err(|e| cannot_read(dir, &e))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| cannot_read(dir, &e))?;
        let name = entry.file_name();
        if !is_config_file_name(&name.to_string_lossy()) {
            continue;
        }
        let path = entry.path();
        // Follows symbolic links; a dangling link is reported when it is read.
        if fs::metadata(&path).is_ok_and(|m| m.is_dir()) {
            continue;
        }
        files.push(path);
    }
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    Ok(files)
}

fn read(file: &Arc<Path>) -> Result<String, ConfigError> {
    let metadata = fs::metadata(file).map_err(|e| cannot_read(file, &e))?;
    // Checked before reading, so that a huge file is not read into memory at all.
    if metadata.len() > MAX_FILE_SIZE {
        return Err(yaml::too_large(metadata.len(), file));
    }
    let bytes = fs::read(file).map_err(|e| cannot_read(file, &e))?;
    yaml::decode(bytes, file)
}

fn cannot_read(path: &Path, error: &std::io::Error) -> ConfigError {
    ConfigError::in_path(path, format!("cannot read: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognizes_config_file_names() {
        for name in ["a.yaml", "b.yml", "00-base.yaml"] {
            assert!(is_config_file_name(name), "{name}");
        }
        for name in [
            ".hidden.yaml",
            ".a.yaml.swp",
            "a.yaml~",
            "#a.yaml#",
            ".#a.yaml",
            "a.json",
            "a.yaml.bak",
            "yaml",
        ] {
            assert!(!is_config_file_name(name), "{name}");
        }
    }
}
