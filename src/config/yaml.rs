//! YAML with positions: every key and value keeps the file, line and column it came from.
//!
//! yaml-rust2's own `Yaml` tree forgets where things are, so we drive its event parser
//! ourselves and build a small tree of [`Node`]s. Doing it here (and not in the validator)
//! also gives one place for the guards a config loader needs against hostile or broken
//! input:
//!
//! - the input must be UTF-8 text without control characters (binary files are rejected
//!   with the position of the first bad byte);
//! - one document per file; nesting at most [`MAX_DEPTH`] levels;
//! - duplicate keys in a mapping are errors; complex (non-scalar) keys are rejected;
//! - aliases are expanded, but the number of nodes they may produce is capped
//!   ([`MAX_ALIAS_NODES`]) so that a "billion laughs" file fails fast instead of eating
//!   the machine's memory;
//! - plain scalars are resolved with the YAML 1.2 core schema (`true`, `null`, `~`, `12`,
//!   `0x1f`, `1.5e3`, `.inf`, ...); quoted and block scalars are always strings.
//!
//! The tree is built iteratively (no recursion over the input), so deep input cannot
//! overflow the stack.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use yaml_rust2::parser::{Event, Parser, Tag};
use yaml_rust2::scanner::{Marker, ScanError, TScalarStyle};

use super::error::{ConfigError, Location};

/// Deepest allowed nesting of sequences and mappings.
pub const MAX_DEPTH: usize = 64;

/// Largest configuration file we read (256 MiB; a 100,000-schedule file is about 20 MiB).
pub const MAX_FILE_SIZE: u64 = 256 * 1024 * 1024;

/// Most nodes that alias expansion (`*name`) may create in one file.
pub const MAX_ALIAS_NODES: usize = 1_000_000;

/// A YAML value and where it starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub value: NodeValue,
    pub loc: Location,
}

/// A YAML value, resolved with the core schema.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeValue {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    /// Entries in file order; keys are always scalars and never repeat.
    Map(Vec<(Node, Node)>),
}

impl NodeValue {
    /// What this kind of value is called in error messages: "a string", "a list", ...
    pub fn kind(&self) -> &'static str {
        match self {
            NodeValue::Null => "nothing (null)",
            NodeValue::Bool(_) => "a boolean",
            NodeValue::Int(_) => "an integer",
            NodeValue::Float(_) => "a float",
            NodeValue::Str(_) => "a string",
            NodeValue::Seq(_) => "a list",
            NodeValue::Map(_) => "a mapping",
        }
    }

    /// A short rendering of a scalar for messages (`7`, `true`, `abc`); `None` for
    /// collections.
    pub fn scalar_text(&self) -> Option<String> {
        Some(match self {
            NodeValue::Null => "null".to_string(),
            NodeValue::Bool(b) => b.to_string(),
            NodeValue::Int(i) => i.to_string(),
            NodeValue::Float(f) => format_float(*f),
            NodeValue::Str(s) => s.clone(),
            NodeValue::Seq(_) | NodeValue::Map(_) => return None,
        })
    }
}

impl Node {
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            NodeValue::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_map(&self) -> Option<&[(Node, Node)]> {
        match &self.value {
            NodeValue::Map(entries) => Some(entries),
            _ => None,
        }
    }

    pub fn as_seq(&self) -> Option<&[Node]> {
        match &self.value {
            NodeValue::Seq(items) => Some(items),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self.value, NodeValue::Null)
    }

    /// The value of the entry whose key is the string `key`, in a mapping.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.as_map()?
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v)
    }
}

fn format_float(f: f64) -> String {
    if f.is_nan() {
        ".nan".to_string()
    } else if f.is_infinite() {
        if f > 0.0 { ".inf" } else { "-.inf" }.to_string()
    } else {
        f.to_string()
    }
}

/// The result of parsing one file.
#[derive(Debug)]
pub struct Parsed {
    /// The document's root; `None` when the file holds no document (empty or only
    /// comments) or when a fatal error (syntax, nesting, ...) stopped parsing.
    pub root: Option<Node>,
    /// Problems found. Duplicate keys do not stop parsing (the first entry is kept);
    /// anything else does, and then `root` is `None`.
    pub errors: Vec<ConfigError>,
}

/// Parses raw file contents: [`decode`], then [`parse`].
pub fn parse_bytes(bytes: Vec<u8>, file: &Arc<Path>) -> Parsed {
    match decode(bytes, file) {
        Ok(text) => parse(&text, file),
        Err(error) => Parsed {
            root: None,
            errors: vec![error],
        },
    }
}

/// Checks the size and the encoding of raw file contents and returns the text (without a
/// byte order mark).
pub fn decode(bytes: Vec<u8>, file: &Arc<Path>) -> Result<String, ConfigError> {
    if bytes.len() as u64 > MAX_FILE_SIZE {
        return Err(too_large(bytes.len() as u64, file));
    }
    if bytes.starts_with(&[0xFF, 0xFE]) || bytes.starts_with(&[0xFE, 0xFF]) {
        return Err(ConfigError::in_path(
            file.clone(),
            "file is UTF-16 encoded; configuration files must be UTF-8",
        ));
    }
    match String::from_utf8(bytes) {
        Ok(mut text) => {
            if text.starts_with('\u{FEFF}') {
                text.drain(..'\u{FEFF}'.len_utf8());
            }
            Ok(text)
        }
        Err(e) => {
            let bytes = e.as_bytes();
            let good = e.utf8_error().valid_up_to();
            // Everything before `good` is valid UTF-8, so the position is computable.
            let prefix = std::str::from_utf8(&bytes[..good]).unwrap_or_default();
            let loc = location_of_offset(prefix, good, file);
            Err(ConfigError::at(
                &loc,
                format!(
                    "file is not valid UTF-8 (byte 0x{:02X}); is it a binary file?",
                    bytes[good]
                ),
            ))
        }
    }
}

/// The error for a file over [`MAX_FILE_SIZE`].
pub fn too_large(size: u64, file: &Arc<Path>) -> ConfigError {
    ConfigError::in_path(
        file.clone(),
        format!(
            "file is too large ({} MiB; the limit is {} MiB)",
            size.div_ceil(1024 * 1024),
            MAX_FILE_SIZE / (1024 * 1024)
        ),
    )
}

/// Parses YAML text into a [`Node`] tree with locations in `file`.
pub fn parse(text: &str, file: &Arc<Path>) -> Parsed {
    if text.len() as u64 > MAX_FILE_SIZE {
        return Parsed {
            root: None,
            errors: vec![too_large(text.len() as u64, file)],
        };
    }
    let text = text.strip_prefix('\u{FEFF}').unwrap_or(text);
    if let Err(error) = check_characters(text, file) {
        return Parsed {
            root: None,
            errors: vec![error],
        };
    }
    let mut builder = Builder::new(file.clone());
    let mut parser = Parser::new_from_str(text);
    loop {
        match parser.next_token() {
            Ok((Event::StreamEnd, _)) => break,
            Ok((event, mark)) => {
                // A block mapping's start event is marked after the start of its first
                // key; the key's own mark is where the mapping starts.
                let mark = match (&event, parser.peek()) {
                    (Event::MappingStart(..), Ok((_, next))) if next.index() < mark.index() => {
                        *next
                    }
                    _ => mark,
                };
                if let Err(error) = builder.event(event, mark) {
                    builder.errors.push(error);
                    return builder.fail();
                }
            }
            Err(e) => {
                let error = syntax_error(&e, text, file);
                builder.errors.push(error);
                return builder.fail();
            }
        }
    }
    Parsed {
        root: builder.root,
        errors: builder.errors,
    }
}

/// Location of byte `offset` in `text` (whose prefix up to `offset` must be valid).
fn location_of_offset(text: &str, offset: usize, file: &Arc<Path>) -> Location {
    let before = &text[..offset.min(text.len())];
    let line = before.bytes().filter(|&b| b == b'\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before[line_start..].chars().count() + 1;
    Location::new(file.clone(), to_u32(line), to_u32(col))
}

fn to_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Rejects characters YAML does not allow anywhere (YAML 1.2 `c-printable`): C0 and C1
/// control characters other than tab, newline and carriage return (and NEL), DEL, and the
/// non-characters U+FFFE / U+FFFF. A NUL is the usual sign of a binary file.
fn check_characters(text: &str, file: &Arc<Path>) -> Result<(), ConfigError> {
    let bad = text.char_indices().find(|&(_, c)| {
        let c = c as u32;
        (c < 0x20 && c != 0x09 && c != 0x0A && c != 0x0D)
            || c == 0x7F
            || ((0x80..=0x9F).contains(&c) && c != 0x85)
            || c == 0xFFFE
            || c == 0xFFFF
    });
    match bad {
        None => Ok(()),
        Some((offset, c)) => {
            let loc = location_of_offset(text, offset, file);
            let message = if c == '\0' {
                "file contains a NUL byte; is it a binary file?".to_string()
            } else {
                format!(
                    "invalid character U+{:04X} (control characters are not allowed in YAML)",
                    c as u32
                )
            };
            Err(ConfigError::at(&loc, message))
        }
    }
}

fn syntax_error(e: &ScanError, text: &str, file: &Arc<Path>) -> ConfigError {
    let mut loc = marker_location(e.marker(), file);
    let info = e.info();
    if info.contains("recursion limit exceeded") {
        return ConfigError::at(
            &loc,
            format!("nesting is too deep (more than {MAX_DEPTH} levels)"),
        );
    }
    let line = text
        .lines()
        .nth(e.marker().line().saturating_sub(1))
        .unwrap_or("");
    let mut hint = "";
    if info.contains("anchor") {
        // `cron: */5 * * * *` reads as an alias; the scanner may complain about the
        // first `*` or a later one, depending on how far it looked ahead.
        if let Some(col) = unquoted_value_starting_with(line, '*') {
            loc.col = col;
            hint = "; a value starting with `*` (such as the cron expression `*/5 * * * *`) \
                    must be quoted";
        }
    } else if info.contains("unexpected character") {
        if let Some(col) = unquoted_value_starting_with(line, '@') {
            loc.col = col;
            hint = "; a value starting with `@` (such as the cron macro `@daily`) must be quoted";
        } else if let Some(col) = unquoted_value_starting_with(line, '`') {
            loc.col = col;
            hint = "; a value starting with a backtick must be quoted";
        }
    }
    ConfigError::at(&loc, format!("invalid YAML: {info}{hint}"))
}

/// The 1-based column of the first plain value on `line` that starts with `c`, i.e. `c`
/// right after `key: `, `- `, `[` or `, `.
fn unquoted_value_starting_with(line: &str, c: char) -> Option<u32> {
    let chars: Vec<char> = line.chars().collect();
    (0..chars.len()).find_map(|i| {
        if chars[i] != c {
            return None;
        }
        let before = chars[..i].iter().rev().find(|ch| !ch.is_whitespace());
        let spaced = i == 0 || chars[i - 1].is_whitespace();
        let starts_value = match before {
            None => true,
            Some(':' | '-' | ',') => spaced,
            Some('[' | '{') => true,
            Some(_) => false,
        };
        starts_value.then(|| to_u32(i + 1))
    })
}

fn marker_location(mark: &Marker, file: &Arc<Path>) -> Location {
    // yaml-rust2 lines are 1-based, columns 0-based (both in characters).
    Location::new(
        file.clone(),
        to_u32(mark.line().max(1)),
        to_u32(mark.col() + 1),
    )
}

/// A collection being built.
enum Frame {
    Seq {
        loc: Location,
        anchor: usize,
        items: Vec<Node>,
    },
    Map {
        loc: Location,
        anchor: usize,
        entries: Vec<(Node, Node)>,
        /// A key waiting for its value; `false` when the key is invalid and the entry
        /// is to be dropped.
        pending_key: Option<(Node, bool)>,
        /// Key -> index in `entries`, built once the mapping is large enough that a
        /// linear duplicate check would be slow (the `schedules:` of a big file).
        index: Option<HashMap<KeyRepr, usize>>,
    },
}

/// A scalar key, hashable (floats by their bits).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum KeyRepr {
    Null,
    Bool(bool),
    Int(i64),
    Float(u64),
    Str(String),
}

impl KeyRepr {
    fn of(value: &NodeValue) -> Option<KeyRepr> {
        Some(match value {
            NodeValue::Null => KeyRepr::Null,
            NodeValue::Bool(b) => KeyRepr::Bool(*b),
            NodeValue::Int(i) => KeyRepr::Int(*i),
            NodeValue::Float(f) => KeyRepr::Float(f.to_bits()),
            NodeValue::Str(s) => KeyRepr::Str(s.clone()),
            NodeValue::Seq(_) | NodeValue::Map(_) => return None,
        })
    }
}

fn same_scalar(a: &NodeValue, b: &NodeValue) -> bool {
    match (a, b) {
        (NodeValue::Float(x), NodeValue::Float(y)) => x.to_bits() == y.to_bits(),
        _ => a == b,
    }
}

/// Mappings with at least this many entries get a hash index for the duplicate check.
const INDEX_THRESHOLD: usize = 16;

/// An anchored node, ready to be copied by aliases.
struct Anchored {
    node: Node,
    /// Number of nodes in `node` (what one expansion costs).
    size: usize,
    /// Nesting levels inside `node` (0 for a scalar).
    height: usize,
}

struct Builder {
    file: Arc<Path>,
    stack: Vec<Frame>,
    anchors: HashMap<usize, Anchored>,
    alias_nodes: usize,
    documents: usize,
    root: Option<Node>,
    errors: Vec<ConfigError>,
}

impl Builder {
    fn new(file: Arc<Path>) -> Self {
        Builder {
            file,
            stack: Vec::new(),
            anchors: HashMap::new(),
            alias_nodes: 0,
            documents: 0,
            root: None,
            errors: Vec::new(),
        }
    }

    fn fail(self) -> Parsed {
        Parsed {
            root: None,
            errors: self.errors,
        }
    }

    fn loc(&self, mark: Marker) -> Location {
        marker_location(&mark, &self.file)
    }

    /// Handles one parser event; an `Err` is fatal.
    fn event(&mut self, event: Event, mark: Marker) -> Result<(), ConfigError> {
        match event {
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => {}
            Event::DocumentStart => {
                self.documents += 1;
                if self.documents > 1 {
                    return Err(ConfigError::at(
                        &self.loc(mark),
                        "a second YAML document (`---`); a configuration file must hold \
                         exactly one document (split it into several files in a directory)",
                    ));
                }
            }
            Event::Alias(id) => {
                let loc = self.loc(mark);
                let node = self.expand_alias(id, &loc)?;
                self.complete(node);
            }
            Event::Scalar(text, style, anchor, tag) => {
                let mut loc = self.loc(mark);
                // An omitted value (`key:` and nothing) is marked where the next token
                // starts, possibly lines later; the key is the better place to point at.
                if text.is_empty()
                    && style == TScalarStyle::Plain
                    && tag.is_none()
                    && let Some(Frame::Map {
                        pending_key: Some((key, _)),
                        ..
                    }) = self.stack.last()
                {
                    loc = key.loc.clone();
                }
                let value = resolve_scalar(text, style, tag.as_ref())
                    .map_err(|message| ConfigError::at(&loc, message))?;
                let node = Node { value, loc };
                self.register_anchor(anchor, &node);
                self.complete(node);
            }
            Event::SequenceStart(anchor, tag) => {
                let loc = self.loc(mark);
                check_collection_tag(tag.as_ref(), "seq", &loc)?;
                self.check_depth(&loc, 1)?;
                self.stack.push(Frame::Seq {
                    loc,
                    anchor,
                    items: Vec::new(),
                });
            }
            Event::MappingStart(anchor, tag) => {
                let loc = self.loc(mark);
                check_collection_tag(tag.as_ref(), "map", &loc)?;
                self.check_depth(&loc, 1)?;
                self.stack.push(Frame::Map {
                    loc,
                    anchor,
                    entries: Vec::new(),
                    pending_key: None,
                    index: None,
                });
            }
            Event::SequenceEnd | Event::MappingEnd => {
                // Collections are kept exactly their size: a file of 100,000 small mappings
                // would otherwise hold twice the room it uses until it is dropped.
                let (node, anchor) = match self.stack.pop() {
                    Some(Frame::Seq {
                        loc,
                        anchor,
                        mut items,
                    }) => (
                        Node {
                            value: NodeValue::Seq({
                                items.shrink_to_fit();
                                items
                            }),
                            loc,
                        },
                        anchor,
                    ),
                    Some(Frame::Map {
                        loc,
                        anchor,
                        mut entries,
                        ..
                    }) => (
                        Node {
                            value: NodeValue::Map({
                                entries.shrink_to_fit();
                                entries
                            }),
                            loc,
                        },
                        anchor,
                    ),
                    None => {
                        return Err(ConfigError::at(
                            &self.loc(mark),
                            "invalid YAML: unbalanced end of collection",
                        ));
                    }
                };
                self.register_anchor(anchor, &node);
                self.complete(node);
            }
        }
        Ok(())
    }

    /// Fails when `levels` more levels of nesting would exceed [`MAX_DEPTH`].
    fn check_depth(&self, loc: &Location, levels: usize) -> Result<(), ConfigError> {
        if self.stack.len() + levels > MAX_DEPTH {
            return Err(ConfigError::at(
                loc,
                format!("nesting is too deep (more than {MAX_DEPTH} levels)"),
            ));
        }
        Ok(())
    }

    fn register_anchor(&mut self, anchor: usize, node: &Node) {
        if anchor == 0 {
            return;
        }
        let (size, height) = measure(node);
        self.anchors.insert(
            anchor,
            Anchored {
                node: node.clone(),
                size,
                height,
            },
        );
    }

    fn expand_alias(&mut self, id: usize, loc: &Location) -> Result<Node, ConfigError> {
        let Some(anchored) = self.anchors.get(&id) else {
            // The parser knows the anchor, so its node is still being built: the alias
            // is inside the node it refers to.
            return Err(ConfigError::at(
                loc,
                "recursive alias: the alias refers to a node that contains it",
            ));
        };
        self.alias_nodes = self.alias_nodes.saturating_add(anchored.size);
        if self.alias_nodes > MAX_ALIAS_NODES {
            return Err(ConfigError::at(
                loc,
                format!(
                    "aliases expand to too many nodes (more than {MAX_ALIAS_NODES}); \
                     is this a \"billion laughs\" file?"
                ),
            ));
        }
        if anchored.height > 0 {
            self.check_depth(loc, anchored.height)?;
        }
        let mut node = anchored.node.clone();
        node.loc = loc.clone();
        Ok(node)
    }

    /// Attaches a finished node to its parent (or makes it the root).
    fn complete(&mut self, node: Node) {
        let Some(frame) = self.stack.last_mut() else {
            self.root = Some(node);
            return;
        };
        match frame {
            Frame::Seq { items, .. } => items.push(node),
            Frame::Map {
                entries,
                pending_key,
                index,
                ..
            } => match pending_key.take() {
                None => {
                    let valid = match node.value {
                        NodeValue::Seq(_) | NodeValue::Map(_) => {
                            self.errors.push(ConfigError::at(
                                &node.loc,
                                format!(
                                    "{} cannot be a mapping key; keys must be plain values",
                                    node.value.kind()
                                ),
                            ));
                            false
                        }
                        _ => true,
                    };
                    *pending_key = Some((node, valid));
                }
                Some((key, false)) => drop((key, node)),
                Some((key, true)) => {
                    if let Some(first) = find_key(entries, index, &key.value) {
                        let first_loc = &entries[first].0.loc;
                        let name = key.value.scalar_text().unwrap_or_default();
                        self.errors.push(
                            ConfigError::at(
                                &key.loc,
                                format!(
                                    "duplicate key `{name}` (first defined on line {})",
                                    first_loc.line
                                ),
                            )
                            .with_related(first_loc),
                        );
                        return;
                    }
                    entries.push((key, node));
                    let last = entries.len() - 1;
                    if let Some(index) = index {
                        if let Some(repr) = KeyRepr::of(&entries[last].0.value) {
                            index.insert(repr, last);
                        }
                    } else if entries.len() >= INDEX_THRESHOLD {
                        *index = Some(
                            entries
                                .iter()
                                .enumerate()
                                .filter_map(|(i, (k, _))| Some((KeyRepr::of(&k.value)?, i)))
                                .collect(),
                        );
                    }
                }
            },
        }
    }
}

fn find_key(
    entries: &[(Node, Node)],
    index: &Option<HashMap<KeyRepr, usize>>,
    key: &NodeValue,
) -> Option<usize> {
    match index {
        Some(index) => index.get(&KeyRepr::of(key)?).copied(),
        None => entries.iter().position(|(k, _)| same_scalar(&k.value, key)),
    }
}

/// (number of nodes, nesting height) of a finished node. Bounded by [`MAX_DEPTH`].
fn measure(node: &Node) -> (usize, usize) {
    match &node.value {
        NodeValue::Seq(items) => items.iter().fold((1, 1), |(size, height), item| {
            let (s, h) = measure(item);
            (size + s, height.max(h + 1))
        }),
        NodeValue::Map(entries) => entries.iter().fold((1, 1), |(size, height), (_, v)| {
            let (s, h) = measure(v);
            (size + 1 + s, height.max(h + 1))
        }),
        _ => (1, 0),
    }
}

const CORE_TAG_PREFIX: &str = "tag:yaml.org,2002:";

/// The full name of a tag: `tag:yaml.org,2002:str` for `!!str`, `!` for the
/// non-specific tag, `!foo` for a local tag.
fn tag_name(tag: &Tag) -> String {
    format!("{}{}", tag.handle, tag.suffix)
}

fn check_collection_tag(tag: Option<&Tag>, kind: &str, loc: &Location) -> Result<(), ConfigError> {
    let Some(tag) = tag else { return Ok(()) };
    let name = tag_name(tag);
    if name == "!" || name.strip_prefix(CORE_TAG_PREFIX) == Some(kind) {
        return Ok(());
    }
    Err(ConfigError::at(loc, unsupported_tag(&name)))
}

fn unsupported_tag(name: &str) -> String {
    let shown = match name.strip_prefix(CORE_TAG_PREFIX) {
        Some(core) => format!("!!{core}"),
        None => name.to_string(),
    };
    format!("unsupported YAML tag `{shown}`")
}

/// Resolves a scalar's value: plain scalars by the YAML 1.2 core schema, quoted and block
/// scalars as strings, explicitly tagged ones (`!!str 5`) as their tag says.
fn resolve_scalar(
    text: String,
    style: TScalarStyle,
    tag: Option<&Tag>,
) -> Result<NodeValue, String> {
    let Some(tag) = tag else {
        return Ok(if style == TScalarStyle::Plain {
            resolve_plain(text)
        } else {
            NodeValue::Str(text)
        });
    };
    let name = tag_name(tag);
    if name == "!" {
        return Ok(NodeValue::Str(text));
    }
    let wrong = |kind: &str| format!("`{text}` is not a valid {kind}");
    match name.strip_prefix(CORE_TAG_PREFIX) {
        Some("str") => Ok(NodeValue::Str(text)),
        Some("null") => match resolve_plain(text.clone()) {
            NodeValue::Null => Ok(NodeValue::Null),
            _ => Err(wrong("null")),
        },
        Some("bool") => match resolve_plain(text.clone()) {
            v @ NodeValue::Bool(_) => Ok(v),
            _ => Err(wrong("boolean")),
        },
        Some("int") => match resolve_plain(text.clone()) {
            v @ NodeValue::Int(_) => Ok(v),
            _ => Err(wrong("integer")),
        },
        Some("float") => match resolve_plain(text.clone()) {
            NodeValue::Int(i) => Ok(NodeValue::Float(i as f64)),
            v @ NodeValue::Float(_) => Ok(v),
            _ => Err(wrong("float")),
        },
        _ => Err(unsupported_tag(&name)),
    }
}

/// YAML 1.2 core schema resolution of a plain scalar.
fn resolve_plain(text: String) -> NodeValue {
    match text.as_str() {
        "" | "~" | "null" | "Null" | "NULL" => return NodeValue::Null,
        "true" | "True" | "TRUE" => return NodeValue::Bool(true),
        "false" | "False" | "FALSE" => return NodeValue::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return NodeValue::Float(f64::INFINITY);
        }
        "-.inf" | "-.Inf" | "-.INF" => return NodeValue::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return NodeValue::Float(f64::NAN),
        _ => {}
    }
    let bytes = text.as_bytes();
    let first = bytes[0];
    if !(first.is_ascii_digit() || matches!(first, b'-' | b'+' | b'.')) {
        return NodeValue::Str(text);
    }
    if let Some(value) = resolve_int(&text) {
        return value;
    }
    if is_core_float(bytes)
        && let Ok(f) = text.parse::<f64>()
    {
        return NodeValue::Float(f);
    }
    NodeValue::Str(text)
}

/// `[-+]?[0-9]+`, `0o[0-7]+`, `0x[0-9a-fA-F]+`. Decimal integers too large for i64
/// become floats (as they would in most YAML loaders).
fn resolve_int(text: &str) -> Option<NodeValue> {
    if let Some(oct) = text.strip_prefix("0o") {
        if !oct.is_empty() && oct.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
            return i64::from_str_radix(oct, 8).ok().map(NodeValue::Int);
        }
        return None;
    }
    if let Some(hex) = text.strip_prefix("0x") {
        if !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return i64::from_str_radix(hex, 16).ok().map(NodeValue::Int);
        }
        return None;
    }
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(match text.parse::<i64>() {
        Ok(i) => NodeValue::Int(i),
        Err(_) => NodeValue::Float(text.parse::<f64>().ok()?),
    })
}

/// `[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?`
fn is_core_float(bytes: &[u8]) -> bool {
    let mut i = 0;
    if matches!(bytes.first(), Some(b'-' | b'+')) {
        i += 1;
    }
    let digits = |i: &mut usize| {
        let start = *i;
        while *i < bytes.len() && bytes[*i].is_ascii_digit() {
            *i += 1;
        }
        *i - start
    };
    let int_digits = digits(&mut i);
    if i < bytes.len() && bytes[i] == b'.' {
        i += 1;
        let frac_digits = digits(&mut i);
        if int_digits == 0 && frac_digits == 0 {
            return false;
        }
    } else if int_digits == 0 {
        return false;
    }
    if i < bytes.len() && matches!(bytes[i], b'e' | b'E') {
        i += 1;
        if i < bytes.len() && matches!(bytes[i], b'-' | b'+') {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return false;
        }
    }
    i == bytes.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> Arc<Path> {
        Arc::from(Path::new("t.yaml"))
    }

    fn parse_ok(text: &str) -> Node {
        let parsed = parse(text, &file());
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
        parsed.root.expect("a document")
    }

    fn parse_err(text: &str) -> String {
        let parsed = parse(text, &file());
        assert!(!parsed.errors.is_empty(), "expected an error for {text:?}");
        parsed
            .errors
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn pos(node: &Node) -> (u32, u32) {
        (node.loc.line, node.loc.col)
    }

    #[test]
    fn keys_and_values_have_one_based_lines_and_columns() {
        let root = parse_ok("a: 1\nbb:\n  c: \"x y\"\n  d: [1, 'q', {e: f}]\n");
        assert_eq!(pos(&root), (1, 1));
        let entries = root.as_map().unwrap();
        assert_eq!(pos(&entries[0].0), (1, 1));
        assert_eq!(pos(&entries[0].1), (1, 4));
        let bb = &entries[1].1;
        assert_eq!(pos(&entries[1].0), (2, 1));
        assert_eq!(pos(bb), (3, 3));
        let inner = bb.as_map().unwrap();
        assert_eq!(pos(&inner[0].1), (3, 6));
        let list = inner[1].1.as_seq().unwrap();
        assert_eq!(pos(&inner[1].1), (4, 6));
        assert_eq!(pos(&list[1]), (4, 10));
        assert_eq!(pos(&list[2]), (4, 15));
        assert_eq!(pos(&list[2].as_map().unwrap()[0].1), (4, 19));
    }

    #[test]
    fn an_omitted_value_is_located_at_its_key() {
        let root = parse_ok("a:\nb: 1\nc:\n");
        let entries = root.as_map().unwrap();
        assert_eq!(entries[0].1.value, NodeValue::Null);
        assert_eq!(pos(&entries[0].1), (1, 1));
        assert_eq!(pos(&entries[2].1), (3, 1));
    }

    #[test]
    fn columns_count_characters_not_bytes() {
        let root = parse_ok("\"é\": ü\n");
        assert_eq!(pos(&root.as_map().unwrap()[0].1), (1, 6));
    }

    #[test]
    fn plain_scalars_follow_the_core_schema() {
        let cases: &[(&str, NodeValue)] = &[
            ("~", NodeValue::Null),
            ("null", NodeValue::Null),
            ("NULL", NodeValue::Null),
            ("", NodeValue::Null),
            ("true", NodeValue::Bool(true)),
            ("False", NodeValue::Bool(false)),
            ("yes", NodeValue::Str("yes".into())),
            ("on", NodeValue::Str("on".into())),
            ("12", NodeValue::Int(12)),
            ("-3", NodeValue::Int(-3)),
            ("+7", NodeValue::Int(7)),
            ("0755", NodeValue::Int(755)),
            ("0o17", NodeValue::Int(15)),
            ("0x1f", NodeValue::Int(31)),
            ("1.5", NodeValue::Float(1.5)),
            (".5", NodeValue::Float(0.5)),
            ("1e3", NodeValue::Float(1000.0)),
            ("-.inf", NodeValue::Float(f64::NEG_INFINITY)),
            ("90s", NodeValue::Str("90s".into())),
            ("1_000", NodeValue::Str("1_000".into())),
            ("0x", NodeValue::Str("0x".into())),
            ("1.2.3", NodeValue::Str("1.2.3".into())),
            ("-x", NodeValue::Str("-x".into())),
            ("+.", NodeValue::Str("+.".into())),
            ("99999999999999999999", NodeValue::Float(1e20)),
        ];
        for (text, expected) in cases {
            let root = parse_ok(&format!("k: {text}\n"));
            assert_eq!(&root.get("k").unwrap().value, expected, "for {text:?}");
        }
        let nan = parse_ok("k: .NaN\n");
        assert!(matches!(nan.get("k").unwrap().value, NodeValue::Float(f) if f.is_nan()));
    }

    #[test]
    fn quoted_and_tagged_scalars() {
        let root = parse_ok("a: '12'\nb: \"true\"\nc: !!str 5\nd: ! 7\ne: |\n  x\nf: !!float 3\n");
        assert_eq!(root.get("a").unwrap().value, NodeValue::Str("12".into()));
        assert_eq!(root.get("b").unwrap().value, NodeValue::Str("true".into()));
        assert_eq!(root.get("c").unwrap().value, NodeValue::Str("5".into()));
        assert_eq!(root.get("d").unwrap().value, NodeValue::Str("7".into()));
        assert_eq!(root.get("e").unwrap().value, NodeValue::Str("x\n".into()));
        assert_eq!(root.get("f").unwrap().value, NodeValue::Float(3.0));
        assert_eq!(
            parse_err("a: !!int x\n"),
            "t.yaml:1:10: `x` is not a valid integer"
        );
        assert_eq!(
            parse_err("a: !foo x\n"),
            "t.yaml:1:9: unsupported YAML tag `!foo`"
        );
        assert_eq!(
            parse_err("a: !!set {x: 1}\n"),
            "t.yaml:1:10: unsupported YAML tag `!!set`"
        );
    }

    #[test]
    fn duplicate_keys_are_errors_and_the_first_entry_is_kept() {
        let parsed = parse("a: 1\nb: 2\na: 3\n", &file());
        assert_eq!(
            parsed.errors[0].to_string(),
            "t.yaml:3:1: duplicate key `a` (first defined on line 1)"
        );
        let root = parsed.root.unwrap();
        assert_eq!(root.as_map().unwrap().len(), 2);
        assert_eq!(root.get("a").unwrap().value, NodeValue::Int(1));
    }

    #[test]
    fn duplicate_keys_are_found_in_large_mappings() {
        let mut text: String = (0..100).map(|i| format!("k{i}: {i}\n")).collect();
        text.push_str("k42: again\n");
        assert_eq!(
            parse_err(&text),
            "t.yaml:101:1: duplicate key `k42` (first defined on line 43)"
        );
    }

    #[test]
    fn complex_keys_are_rejected() {
        assert_eq!(
            parse_err("? [a, b]\n: 1\nc: 2\n"),
            "t.yaml:1:3: a list cannot be a mapping key; keys must be plain values"
        );
    }

    #[test]
    fn empty_text_and_comments_have_no_document() {
        for text in ["", "# nothing\n", "\n\n"] {
            let parsed = parse(text, &file());
            assert!(parsed.errors.is_empty());
            assert!(parsed.root.is_none());
        }
        assert_eq!(parse_ok("---\n").value, NodeValue::Null);
    }

    #[test]
    fn a_second_document_is_an_error() {
        assert_eq!(
            parse_err("a: 1\n---\nb: 2\n"),
            "t.yaml:2:1: a second YAML document (`---`); a configuration file must hold \
             exactly one document (split it into several files in a directory)"
        );
    }

    #[test]
    fn deep_nesting_is_an_error_without_overflowing_the_stack() {
        let deep = format!("{}{}", "[".repeat(70), "]".repeat(70));
        assert_eq!(
            parse_err(&deep),
            "t.yaml:1:65: nesting is too deep (more than 64 levels)"
        );
        let block: String = (0..70).map(|i| format!("{}k:\n", " ".repeat(i))).collect();
        assert_eq!(
            parse_err(&block),
            "t.yaml:65:65: nesting is too deep (more than 64 levels)"
        );
        // The scanner has its own, higher limit, hit before our check when the input
        // never closes its brackets.
        assert_eq!(
            parse_err(&"[".repeat(100_000)),
            "t.yaml:1:256: nesting is too deep (more than 64 levels)"
        );
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        parse_ok(&ok);
    }

    #[test]
    fn aliases_are_expanded_with_the_alias_location() {
        let root = parse_ok("a: &x {k: [1, 2]}\nb: *x\n");
        let b = root.get("b").unwrap();
        assert_eq!(pos(b), (2, 4));
        assert_eq!(b.get("k").unwrap().as_seq().unwrap().len(), 2);
    }

    #[test]
    fn billion_laughs_fails_fast() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let p = i - 1;
            text.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        let error = parse_err(&text);
        assert!(
            error.contains("aliases expand to too many nodes"),
            "{error}"
        );
    }

    #[test]
    fn aliases_cannot_nest_deeper_than_the_limit() {
        let mut text = String::new();
        let inner = format!("{}{}", "[".repeat(40), "]".repeat(40));
        text.push_str(&format!("a: &a {inner}\n"));
        text.push_str("b: &b [[[[[[[[[[[[[[[[[[[[[[[[[[[[*a]]]]]]]]]]]]]]]]]]]]]]]]]]]]\n");
        let error = parse_err(&text);
        assert!(error.contains("nesting is too deep"), "{error}");
    }

    #[test]
    fn recursive_alias_is_an_error() {
        assert_eq!(
            parse_err("a: &x [*x]\n"),
            "t.yaml:1:8: recursive alias: the alias refers to a node that contains it"
        );
    }

    #[test]
    fn syntax_errors_have_a_position_and_a_hint_for_unquoted_cron() {
        assert_eq!(
            parse_err("cron: */5 * * * *\n"),
            "t.yaml:1:7: invalid YAML: while scanning an anchor or alias, did not find \
             expected alphabetic or numeric character; a value starting with `*` (such as the cron expression `*/5 * * * *`) must be quoted"
        );
        assert_eq!(
            parse_err("cron: @daily\n"),
            "t.yaml:1:7: invalid YAML: unexpected character: `@'; a value starting with `@` \
             (such as the cron macro `@daily`) must be quoted"
        );
        assert_eq!(
            parse_err("schedules:\n  s:\n    cron: */5 * * * *\n"),
            "t.yaml:3:11: invalid YAML: while scanning an anchor or alias, did not find \
             expected alphabetic or numeric character; a value starting with `*` (such as the \
             cron expression `*/5 * * * *`) must be quoted"
        );
        assert_eq!(
            parse_err("a: b: c\n"),
            "t.yaml:1:5: invalid YAML: mapping values are not allowed in this context"
        );
    }

    #[test]
    fn binary_input_is_rejected_with_a_position() {
        let parsed = parse_bytes(b"a: 1\nb: \xff\xfe\x00".to_vec(), &file());
        assert_eq!(
            parsed.errors[0].to_string(),
            "t.yaml:2:4: file is not valid UTF-8 (byte 0xFF); is it a binary file?"
        );
        assert_eq!(
            parse_err("a: 1\nbc: x\0y\n"),
            "t.yaml:2:6: file contains a NUL byte; is it a binary file?"
        );
        assert_eq!(
            parse_err("a: \u{7}\n"),
            "t.yaml:1:4: invalid character U+0007 (control characters are not allowed in YAML)"
        );
        let parsed = parse_bytes(b"\xff\xfea\x00".to_vec(), &file());
        assert_eq!(
            parsed.errors[0].to_string(),
            "t.yaml: file is UTF-16 encoded; configuration files must be UTF-8"
        );
    }

    #[test]
    fn a_byte_order_mark_is_skipped() {
        let root = parse_ok("\u{FEFF}a: 1\n");
        assert_eq!(root.get("a").unwrap().value, NodeValue::Int(1));
        assert_eq!(pos(&root.as_map().unwrap()[0].0), (1, 1));
    }
}
