//! Splitting `-o` lists and colon-separated layer lists, as libfuse and the kernel do.

use std::path::PathBuf;

use crate::error::Error;

/// Splits an `-o` list on commas. Empty items are dropped; double quotes group a value that
/// holds commas (`context="a:b:c1,c2"`) and are removed; `\,` is a literal comma. Other
/// backslashes are kept for [`split_layers`].
pub fn split_options(list: &str) -> Result<Vec<String>, Error> {
    let mut items = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = list.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(',') => cur.push(','),
                Some(next) => {
                    cur.push('\\');
                    cur.push(next);
                }
                None => cur.push('\\'),
            },
            '"' => quoted = !quoted,
            ',' if !quoted => {
                if !cur.is_empty() {
                    items.push(std::mem::take(&mut cur));
                }
            }
            _ => cur.push(c),
        }
    }
    if quoted {
        return Err(Error::usage(format!(
            "unterminated quote in option list '{list}': close the \" or remove it"
        )));
    }
    if !cur.is_empty() {
        items.push(cur);
    }
    Ok(items)
}

/// Splits a layer list on colons; `\:` is a colon inside a path and `\\` a backslash.
pub fn split_layers(list: &str, what: &str) -> Result<Vec<PathBuf>, Error> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = list.chars();
    let mut push = |cur: &mut String| -> Result<(), Error> {
        if cur.is_empty() {
            return Err(Error::usage(format!(
                "{what} '{list}' has an empty layer (\"::\" data-only layers are not supported): \
                 separate directories with one colon"
            )));
        }
        out.push(PathBuf::from(std::mem::take(cur)));
        Ok(())
    };
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(next @ (':' | '\\')) => cur.push(next),
                Some(next) => {
                    cur.push('\\');
                    cur.push(next);
                }
                None => cur.push('\\'),
            },
            ':' => push(&mut cur)?,
            _ => cur.push(c),
        }
    }
    push(&mut cur)?;
    Ok(out)
}

/// Joins layer paths into a list [`split_layers`] reads back: `\` and `:` escaped.
pub fn join_layers(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| {
            p.to_string_lossy()
                .replace('\\', "\\\\")
                .replace(':', "\\:")
        })
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joined_layers_split_back() {
        let paths = vec![
            PathBuf::from("/a:b"),
            PathBuf::from("/c\\:d"),
            PathBuf::from("/plain"),
        ];
        let joined = join_layers(&paths);
        assert_eq!(split_layers(&joined, "x").unwrap(), paths);
    }

    #[test]
    fn empty_items_are_dropped() {
        assert_eq!(split_options("a,,b,").unwrap(), vec!["a", "b"]);
        assert_eq!(split_options("").unwrap(), Vec::<String>::new());
    }

    #[test]
    fn quoted_values_keep_their_commas() {
        let items = split_options("lowerdir=/l,context=\"system_u:object_r:x:s0:c1,c2\",volatile");
        assert_eq!(
            items.unwrap(),
            vec![
                "lowerdir=/l",
                "context=system_u:object_r:x:s0:c1,c2",
                "volatile"
            ]
        );
    }

    #[test]
    fn escaped_commas_are_literal() {
        assert_eq!(
            split_options("lowerdir=/a\\,b,ro").unwrap(),
            vec!["lowerdir=/a,b", "ro"]
        );
    }

    #[test]
    fn an_unterminated_quote_is_an_error() {
        let e = split_options("context=\"abc").unwrap_err();
        assert!(e.message.contains("unterminated quote"), "{e}");
    }

    #[test]
    fn layers_split_on_unescaped_colons() {
        let layers = split_layers("/a:/b\\:c:/d\\\\", "lowerdir").unwrap();
        assert_eq!(
            layers,
            vec![PathBuf::from("/a"), "/b:c".into(), "/d\\".into()]
        );
    }

    #[test]
    fn empty_layers_are_refused() {
        for bad in ["", "/a::/b", "/a:", ":/a"] {
            assert!(split_layers(bad, "lowerdir").is_err(), "{bad}");
        }
    }
}
