//! `{{name}}` placeholders in command arguments.
//!
//! A command such as `["/bin/cleanup", "--days", "{{days}}"]` takes its values from the
//! schedule's `args`; the worker fills them in. The name is the text between the braces,
//! trimmed (`{{ days }}` is `days`). `{{` always starts a placeholder: there is no escape,
//! and an unterminated or empty one is a configuration error rather than a literal.

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
/// The name is what lies between the braces, trimmed, exactly as the worker reads it when
/// it fills the placeholder (`worker::command::render_arg`).
fn parse_at(s: &str) -> Result<(&str, usize), String> {
    let shown = || s.chars().take(24).collect::<String>();
    let Some(end) = s.find("}}") else {
        return Err(format!(
            "unterminated placeholder `{}`; placeholders look like `{{{{name}}}}`",
            shown()
        ));
    };
    let name = s[2..end].trim();
    if name.is_empty() {
        return Err(format!(
            "empty placeholder `{}`; placeholders look like `{{{{name}}}}`",
            &s[..end + 2]
        ));
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
    fn rejects_unterminated_and_empty_placeholders() {
        assert_eq!(
            check("{{days"),
            Err("unterminated placeholder `{{days`; placeholders look like `{{name}}`".into())
        );
        assert_eq!(
            check("x{{ }}y"),
            Err("empty placeholder `{{ }}`; placeholders look like `{{name}}`".into())
        );
        assert_eq!(check("{{a b}}"), Ok(vec!["a b"]));
    }
}
