//! Malformed tree files: every problem reported, each with file, line,
//! column and the offending value.

use manta_supervision::tree::{TreeError, load_str};

use crate::tree_files::kinds;

fn errors(src: &str) -> Vec<TreeError> {
    match load_str(src, "bad.toml", &kinds()) {
        Ok(_) => panic!("accepted a malformed tree:\n{src}"),
        Err(e) => e.0,
    }
}

/// Asserts exactly one error, at (line, column), with this value, and a
/// message containing `needle`.
fn one(src: &str, line: usize, column: usize, value: Option<&str>, needle: &str) {
    let errs = errors(src);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    let e = &errs[0];
    assert_eq!(e.file, "bad.toml");
    assert_eq!((e.line, e.column), (line, column), "{e}");
    assert_eq!(e.value.as_deref(), value, "{e}");
    assert!(
        e.message.contains(needle),
        "`{}` does not mention `{needle}`",
        e.message
    );
}

#[test]
fn unknown_kind() {
    let src = "[[children]]\nid = \"a\"\nkind = \"probz\"\n";
    one(
        src,
        3,
        8,
        Some("\"probz\""),
        "unknown actor kind `probz` (registered kinds: probe, sized)",
    );
}

#[test]
fn unknown_strategy() {
    let src = "name = \"r\"\nstrategy = \"one_for_some\"\n";
    one(
        src,
        2,
        12,
        Some("\"one_for_some\""),
        "unknown strategy `one_for_some` (expected one of: one_for_one",
    );
}

#[test]
fn unknown_restart_type() {
    let src = "[[children]]\nid = \"a\"\nkind = \"probe\"\nrestart = \"sometimes\"\n";
    one(
        src,
        4,
        11,
        Some("\"sometimes\""),
        "unknown restart `sometimes`",
    );
}

#[test]
fn unknown_shutdown_value() {
    let src = "[[children]]\nid = \"a\"\nkind = \"probe\"\nshutdown = \"gently\"\n";
    one(src, 4, 12, Some("\"gently\""), "unknown shutdown `gently`");
}

#[test]
fn args_of_the_wrong_type() {
    let src =
        "[[children]]\nid = \"a\"\nkind = \"sized\"\nargs = { size = \"big\", label = \"x\" }\n";
    one(
        src,
        4,
        17,
        Some("\"big\""),
        "args of worker `a` do not fit kind `sized`",
    );
}

#[test]
fn args_missing_a_field() {
    let src = "[[children]]\nid = \"a\"\nkind = \"sized\"\nargs = { size = 3 }\n";
    one(src, 4, 8, Some("{ size = 3 }"), "missing field `label`");
}

#[test]
fn args_with_an_unknown_field() {
    let src = "[[children]]\nid = \"a\"\nkind = \"sized\"\nargs = { size = 3, label = \"l\", colour = \"red\" }\n";
    one(src, 4, 33, Some("colour"), "unknown field `colour`");
}

#[test]
fn duplicate_child_ids() {
    let src = "[[children]]\nid = \"a\"\nkind = \"probe\"\n\n[[children]]\nid = \"a\"\nkind = \"probe\"\n";
    one(
        src,
        6,
        6,
        Some("\"a\""),
        "duplicate child id `a` in supervisor `root` (first used on line 2)",
    );
}

#[test]
fn bad_durations() {
    let src = "period = \"5 parsecs\"\n";
    one(src, 1, 10, Some("\"5 parsecs\""), "unknown unit `parsecs`");
    let src = "period = 5\n";
    one(
        src,
        1,
        10,
        Some("5"),
        "period must be a string, not integer",
    );
    let src = "backoff = { min = \"1s\", max = \"10ms\" }\n";
    one(
        src,
        1,
        11,
        Some("{ min = \"1s\", max = \"10ms\" }"),
        "backoff max is shorter than min",
    );
}

#[test]
fn missing_id() {
    let src = "[[children]]\nkind = \"probe\"\n";
    let errs = errors(src);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert_eq!((errs[0].line, errs[0].column), (1, 1), "{}", errs[0]);
    assert!(
        errs[0]
            .message
            .contains("a child of supervisor `root` is missing `id`"),
        "{}",
        errs[0]
    );
}

#[test]
fn neither_worker_nor_supervisor() {
    let src = "[[children]]\nid = \"x\"\nrestart = \"permanent\"\n";
    let errs = errors(src);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert_eq!((errs[0].line, errs[0].column), (1, 1));
    assert!(
        errs[0].message.contains("child `x` needs `kind`"),
        "{}",
        errs[0]
    );
}

#[test]
fn misspelt_field() {
    let src = "[[children]]\nid = \"a\"\nkind = \"probe\"\nrestrat = \"temporary\"\n";
    one(
        src,
        4,
        1,
        Some("restrat"),
        "unknown field `restrat` in worker `a`",
    );
}

#[test]
fn negative_intensity() {
    let src = "intensity = -1\n";
    one(src, 1, 13, Some("-1"), "intensity");
}

#[test]
fn dynamic_supervisor_with_two_templates() {
    let src = "strategy = \"simple_one_for_one\"\n[[children]]\nid = \"a\"\nkind = \"probe\"\n[[children]]\nid = \"b\"\nkind = \"probe\"\n";
    one(
        src,
        1,
        12,
        None,
        "needs exactly one child template, found 2",
    );
}

#[test]
fn toml_syntax_error() {
    let src = "name = \"r\"\nstrategy = \n";
    let errs = errors(src);
    assert!(!errs.is_empty());
    assert_eq!(errs[0].line, 2, "{}", errs[0]);
    assert!(
        errs[0].message.starts_with("TOML syntax error"),
        "{}",
        errs[0]
    );
}

#[test]
fn every_problem_is_reported_at_once_in_file_order() {
    let src = r#"strategy = "one_for_none"
period = "soon"

[[children]]
id = "a"
kind = "nope"

[[children]]
id = "b"
kind = "probe"
restart = "never"

  [[children]]
  id = "b"
  strategy = "one_for_all"
  intensity = "lots"
"#;
    let errs = errors(src);
    let at: Vec<(usize, usize)> = errs.iter().map(|e| (e.line, e.column)).collect();
    assert_eq!(
        at,
        [(1, 12), (2, 10), (6, 8), (11, 11), (14, 8), (16, 15)],
        "{errs:#?}"
    );
    let text = manta_supervision::tree::TreeErrors(errs).to_string();
    assert!(
        text.starts_with("bad.toml:1:12: unknown strategy `one_for_none`"),
        "{text}"
    );
    assert_eq!(text.lines().count(), 6);
}
