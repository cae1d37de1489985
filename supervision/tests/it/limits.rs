//! Tree files at the edges: nesting limits, zero and overlong durations,
//! multi-byte text before an error.

use std::time::Duration;

use manta_supervision::tree::{MAX_DEPTH, TreeError, load_str};
use manta_supervision::{Backoff, MAX_DURATION};

use crate::tree_files::kinds;

/// Each source has exactly one error, at that line and column, whose
/// message holds the needle.
fn one_error_each(cases: &[(&str, (usize, usize), &str)]) {
    for &(src, at, needle) in cases {
        let errs = errors(src);
        assert_eq!(errs.len(), 1, "{src}: {errs:#?}");
        let e = &errs[0];
        assert_eq!((e.line, e.column), at, "{src}: {e}");
        assert!(e.message.contains(needle), "{src}: {e}");
    }
}

fn errors(src: &str) -> Vec<TreeError> {
    match load_str(src, "deep.toml", &kinds()) {
        Ok(_) => panic!("accepted:\n{}", &src[..src.len().min(2000)]),
        Err(e) => e.0,
    }
}

/// Supervisors `s1`..`s{levels}` nested by table headers under the root,
/// with one worker in the deepest: `s{n}` is nested `n + 1` deep. Returns
/// the file and the line of each `id = "s{n}"`.
fn nested_headers(levels: usize) -> (String, Vec<usize>) {
    let mut src = String::from("name = \"root\"\n");
    let mut id_lines = vec![0];
    let mut line = 2;
    for n in 1..=levels {
        src.push_str(&format!(
            "[[{}]]\nid = \"s{n}\"\nstrategy = \"one_for_one\"\n",
            vec!["children"; n].join(".")
        ));
        id_lines.push(line + 1);
        line += 3;
    }
    src.push_str(&format!(
        "[[{}]]\nid = \"w\"\nkind = \"probe\"\n",
        vec!["children"; levels + 1].join(".")
    ));
    (src, id_lines)
}

/// The same nesting written inline, which needs no quadratic headers:
/// `children = [{ id = "s1", children = [{ ... }] }]`.
fn nested_inline(levels: usize) -> String {
    let mut src = String::from("name = \"root\"\nchildren = [");
    for n in 1..=levels {
        src.push_str(&format!("{{ id = \"s{n}\", children = ["));
    }
    src.push_str("{ id = \"w\", kind = \"probe\" }");
    src.push_str(&"] }".repeat(levels));
    src.push_str("]\n");
    src
}

#[test]
fn supervisors_nest_up_to_the_limit() {
    assert_eq!(MAX_DEPTH, 32);
    // s31 is nested 32 deep (the root is 1).
    let (src, _) = nested_headers(MAX_DEPTH - 1);
    let root = load_str(&src, "deep.toml", &kinds()).unwrap();
    let mut spec = &root;
    let mut depth = 1;
    while let Some(manta_supervision::ChildStart::Supervisor(s)) =
        spec.children.first().map(|c| &c.start)
    {
        spec = s;
        depth += 1;
    }
    assert_eq!(depth, MAX_DEPTH);
}

#[test]
fn a_supervisor_nested_past_the_limit_is_one_positioned_error() {
    let (src, id_lines) = nested_headers(MAX_DEPTH + 8);
    let errs = errors(&src);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    let e = &errs[0];
    // s32 is the first supervisor 33 deep.
    assert_eq!((e.line, e.column), (id_lines[MAX_DEPTH], 6), "{e}");
    assert!(
        e.message
            .contains("supervisor `s32` would be nested 33 deep")
            && e.message.contains("at most 32 deep"),
        "{e}"
    );
}

#[test]
fn a_file_nested_10000_levels_deep_is_an_error_not_a_stack_overflow() {
    // Inline: 10,000 levels in 330 kB.
    let errs = errors(&nested_inline(10_000));
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(
        errs[0].message.contains("nests too deep") && errs[0].line == 2,
        "{}",
        errs[0]
    );
    // Headers: 200 levels (the headers grow with the depth); the parser's
    // error for each too-long header comes without a position, and is
    // reported once, at the first such header.
    let (src, id_lines) = nested_headers(200);
    let errs = errors(&src);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    let e = &errs[0];
    assert!(e.message.contains("nests too deep"), "{e}");
    // `[[children x 81]]` is the header of s81, the line before its id.
    assert_eq!((e.line, e.column), (id_lines[81] - 1, 1), "{e}");
    // On a thread with a small stack, too.
    let small = std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(|| errors(&nested_inline(10_000)).len())
        .unwrap();
    assert_eq!(small.join().unwrap(), 1);
}

#[test]
fn zero_and_overlong_durations_are_refused_with_their_position() {
    let cases = [
        (
            "period = \"8761h\"\n",
            (1, 10),
            "longer than the limit of 8760h",
        ),
        (
            "backoff = { min = \"0ms\" }\n",
            (1, 19),
            "backoff min must be longer than zero",
        ),
        (
            "backoff = { min = \"4000000000000000h\", random_factor = 1.0 }\n",
            (1, 19),
            "longer than the limit of 8760h",
        ),
        (
            "backoff = { min = \"1s\", max = \"9000h\" }\n",
            (1, 31),
            "longer than the limit of 8760h",
        ),
        (
            "[[children]]\nid = \"a\"\nkind = \"probe\"\nshutdown = \"99999999h\"\n",
            (4, 12),
            "longer than the limit of 8760h",
        ),
    ];
    one_error_each(&cases);
    // The longest one is fine.
    load_str("period = \"8760h\"\n", "ok.toml", &kinds()).unwrap();
}

#[test]
fn a_backoff_too_long_to_stretch_saturates_instead_of_panicking() {
    // A spec built in code is not range-checked: stretching a delay near
    // Duration::MAX by its random factor used to overflow `mul_f64`.
    let b = Backoff {
        min: Duration::MAX,
        max: Duration::MAX,
        random_factor: 1.0,
    };
    for n in 0..20 {
        assert!(b.delay(n) >= MAX_DURATION);
    }
}

#[test]
fn columns_count_characters_after_multi_byte_text() {
    // `é` is 2 bytes and `😀` 4: the bad `"x"` is character 33 of line 4
    // (byte 41).
    let src =
        "[[children]]\nid = \"a\"\nkind = \"sized\"\nargs = { label = \"é😀é😀\", size = \"x\" }\n";
    let errs = errors(src);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert_eq!((errs[0].line, errs[0].column), (4, 33), "{}", errs[0]);
    // A long multi-byte value is shortened on a character boundary.
    let long = "é".repeat(100);
    let src = format!("strategy = \"{long}\"\n");
    let errs = errors(&src);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    let v = errs[0].value.as_deref().unwrap();
    assert!(v.ends_with('…') && v.chars().count() == 61, "{v}");
}

/// The keys of a child entry at the top level, a nested supervisor's
/// `name` other than its `id`, and a zero shutdown timeout are errors with
/// their position, not silently ignored.
#[test]
fn keys_that_would_be_ignored_are_refused_with_their_position() {
    let cases = [
        (
            "restart = \"sometimes\"\n",
            (1, 11),
            "`restart` is for a child entry",
        ),
        ("id = \"root\"\n", (1, 6), "`id` is for a child entry"),
        (
            "shutdown = \"1s\"\n",
            (1, 12),
            "`shutdown` is for a child entry",
        ),
        (
            "register = \"r\"\n",
            (1, 12),
            "`register` is for a child entry",
        ),
        (
            "[[children]]\nid = \"inner\"\nname = \"other\"\nstrategy = \"one_for_one\"\n",
            (3, 8),
            "named by its `id` (`inner`)",
        ),
        (
            "[[children]]\nid = \"a\"\nkind = \"probe\"\nshutdown = \"0s\"\n",
            (4, 12),
            "shutdown must be longer than zero",
        ),
    ];
    one_error_each(&cases);
    // A nested supervisor's `name` equal to its id is fine.
    load_str(
        "[[children]]\nid = \"inner\"\nname = \"inner\"\nstrategy = \"one_for_one\"\n",
        "ok.toml",
        &kinds(),
    )
    .unwrap();
}
