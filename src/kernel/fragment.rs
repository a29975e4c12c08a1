//! The config fragment as data: which options it sets and which it wants unset, and the
//! check that a generated `.config` honours every one of them.
//!
//! `merge_config.sh` and `olddefconfig` silently drop an option whose dependencies are
//! not met, so the build verifies the result instead of trusting the merge.

use std::collections::HashMap;

use super::KernelError;

/// What the fragment (or a `.config`) says about one option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Setting {
    /// `CONFIG_X=value` (`y`, `m`, a number or a quoted string).
    Value(String),
    /// `# CONFIG_X is not set`.
    Unset,
}

/// Parse `CONFIG_X=value` and `# CONFIG_X is not set` lines; other lines are comments.
/// Options keep their order of first appearance; a later line overrides an earlier one,
/// as in kconfig.
pub(crate) fn parse(text: &str) -> Vec<(String, Setting)> {
    let mut order: Vec<String> = Vec::new();
    let mut settings: HashMap<String, Setting> = HashMap::new();
    for line in text.lines().map(str::trim) {
        let Some((name, setting)) = parse_line(line) else {
            continue;
        };
        if settings.insert(name.to_owned(), setting).is_none() {
            order.push(name.to_owned());
        }
    }
    order
        .into_iter()
        .filter_map(|name| settings.remove(&name).map(|s| (name, s)))
        .collect()
}

fn parse_line(line: &str) -> Option<(&str, Setting)> {
    if let Some(rest) = line.strip_prefix("# ") {
        let name = rest.strip_suffix(" is not set")?;
        return name
            .starts_with("CONFIG_")
            .then_some((name, Setting::Unset));
    }
    let (name, value) = line.split_once('=')?;
    name.starts_with("CONFIG_")
        .then(|| (name, Setting::Value(value.to_owned())))
}

/// Check that `dot_config` (the text of a generated `.config`) has every value the
/// fragment sets and none of the options it wants unset. An option missing from
/// `.config` counts as unset. Fails on the first option that did not survive.
pub(crate) fn verify(fragment: &str, dot_config: &str) -> Result<(), KernelError> {
    let actual: HashMap<String, Setting> = parse(dot_config).into_iter().collect();
    for (option, wanted) in parse(fragment) {
        let found = actual.get(&option).cloned().unwrap_or(Setting::Unset);
        let honoured = match (&wanted, &found) {
            (Setting::Unset, Setting::Value(v)) => v == "n",
            (wanted, found) => wanted == found,
        };
        if !honoured {
            return Err(KernelError::ConfigMismatch {
                option,
                wanted: describe(&wanted),
                found: describe(&found),
            });
        }
    }
    Ok(())
}

fn describe(setting: &Setting) -> String {
    match setting {
        Setting::Value(v) => format!("={v}"),
        Setting::Unset => "not set".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRAGMENT: &str = "# comment\n\
        CONFIG_PVH=y\n\
        CONFIG_NR_CPUS=32\n\
        # CONFIG_PCI is not set\n";

    fn mismatch(err: KernelError) -> (String, String, String) {
        match err {
            KernelError::ConfigMismatch {
                option,
                wanted,
                found,
            } => (option, wanted, found),
            other => panic!("unexpected error {other}"),
        }
    }

    #[test]
    fn parse_reads_values_and_unset_lines_and_skips_comments() {
        let parsed = parse(FRAGMENT);
        assert_eq!(
            parsed,
            vec![
                ("CONFIG_PVH".to_owned(), Setting::Value("y".to_owned())),
                ("CONFIG_NR_CPUS".to_owned(), Setting::Value("32".to_owned())),
                ("CONFIG_PCI".to_owned(), Setting::Unset),
            ]
        );
    }

    #[test]
    fn parse_keeps_the_last_setting_of_a_repeated_option() {
        let parsed = parse("CONFIG_A=y\n# CONFIG_A is not set\n");
        assert_eq!(parsed, vec![("CONFIG_A".to_owned(), Setting::Unset)]);
    }

    #[test]
    fn verify_accepts_a_config_that_honours_the_fragment() {
        let config = "CONFIG_PVH=y\nCONFIG_NR_CPUS=32\n# CONFIG_PCI is not set\nCONFIG_X=y\n";
        assert!(verify(FRAGMENT, config).is_ok());
    }

    #[test]
    fn verify_treats_an_absent_option_as_unset() {
        let config = "CONFIG_PVH=y\nCONFIG_NR_CPUS=32\n";
        assert!(verify(FRAGMENT, config).is_ok());
    }

    #[test]
    fn verify_names_an_option_that_was_dropped() {
        let config = "# CONFIG_PVH is not set\nCONFIG_NR_CPUS=32\n";
        let err = verify(FRAGMENT, config).unwrap_err();
        assert_eq!(
            mismatch(err),
            ("CONFIG_PVH".into(), "=y".into(), "not set".into())
        );
    }

    #[test]
    fn verify_names_an_option_with_another_value() {
        let config = "CONFIG_PVH=y\nCONFIG_NR_CPUS=8\n";
        let err = verify(FRAGMENT, config).unwrap_err();
        assert_eq!(
            mismatch(err),
            ("CONFIG_NR_CPUS".into(), "=32".into(), "=8".into())
        );
    }

    #[test]
    fn verify_names_an_option_that_should_be_unset() {
        let config = "CONFIG_PVH=y\nCONFIG_NR_CPUS=32\nCONFIG_PCI=y\n";
        let err = verify(FRAGMENT, config).unwrap_err();
        assert_eq!(
            mismatch(err),
            ("CONFIG_PCI".into(), "not set".into(), "=y".into())
        );
    }

    #[test]
    fn verify_error_message_names_the_option() {
        let err = verify(FRAGMENT, "CONFIG_NR_CPUS=32\n").unwrap_err();
        assert!(err.to_string().contains("CONFIG_PVH"));
    }
}
