//! `{{name}}` placeholders in command arguments.
//!
//! A command such as `["/bin/cleanup", "--days", "{{days}}"]` takes its values from the
//! schedule's `args`. Names are letters, digits, `_`, `-` and `.`; spaces inside the braces
//! are allowed (`{{ days }}`). `{{` always starts a placeholder: there is no escape, and a
//! malformed one is a configuration error rather than a literal.

/// A part of an argument: literal text, or the name inside a placeholder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece<'a> {
    Text(&'a str),
    Placeholder(&'a str),
}

/// Splits an argument into text and placeholders. Malformed placeholders are kept as text
/// (validation reports them with [`check`]).
pub fn split(arg: &str) -> Vec<Piece<'_>> {
    let mut pieces = Vec::new();
    let mut rest = arg;
    while let Some(start) = rest.find("{{") {
        match parse_at(&rest[start..]) {
            Ok((name, len)) => {
                if start > 0 {
                    pieces.push(Piece::Text(&rest[..start]));
                }
                pieces.push(Piece::Placeholder(name));
                rest = &rest[start + len..];
            }
            Err(_) => {
                pieces.push(Piece::Text(&rest[..start + 2]));
                rest = &rest[start + 2..];
            }
        }
    }
    if !rest.is_empty() {
        pieces.push(Piece::Text(rest));
    }
    pieces
}

/// The placeholder names used in an argument, or what is wrong with it.
pub fn check(arg: &str) -> Result<Vec<&str>, String> {
    let mut names = Vec::new();
    let mut rest = arg;
    while let Some(start) = rest.find("{{") {
        let (name, len) = parse_at(&rest[start..])?;
        names.push(name);
        rest = &rest[start + len..];
    }
    Ok(names)
}

/// Parses the placeholder at the start of `s` (which starts with `{{`): its name and length.
fn parse_at(s: &str) -> Result<(&str, usize), String> {
    let malformed = || {
        let shown: String = s.chars().take(24).collect();
        format!("malformed placeholder `{shown}`; placeholders look like `{{{{name}}}}`")
    };
    let Some(end) = s.find("}}") else {
        return Err(malformed());
    };
    let name = s[2..end].trim_matches(' ');
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !valid {
        return Err(malformed());
    }
    Ok((name, end + 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_placeholder_names() {
        assert_eq!(check("--days={{days}}"), Ok(vec!["days"]));
        assert_eq!(check("{{ a }}-{{b_c}}"), Ok(vec!["a", "b_c"]));
        assert_eq!(check("plain"), Ok(vec![]));
        assert_eq!(check("single {braces}"), Ok(vec![]));
    }

    #[test]
    fn rejects_malformed_placeholders() {
        assert_eq!(
            check("{{days"),
            Err("malformed placeholder `{{days`; placeholders look like `{{name}}`".into())
        );
        assert!(check("{{}}").is_err());
        assert!(check("{{a b}}").is_err());
    }

    #[test]
    fn splits_text_and_placeholders() {
        assert_eq!(
            split("a{{x}}b{{y}}"),
            [
                Piece::Text("a"),
                Piece::Placeholder("x"),
                Piece::Text("b"),
                Piece::Placeholder("y")
            ]
        );
    }
}
