//! Supervision trees in TOML files.
//!
//! The top level of a file is the root supervisor; `[[children]]` entries are
//! its children, in start order. A child with `kind` is a worker (an actor
//! kind from the [`KindRegistry`]); a child with `strategy` or `children` is
//! a nested supervisor. See the README for the full format.
//!
//! ```toml
//! name = "root"                 # default: the file name
//! strategy = "one_for_one"      # one_for_one | one_for_all | rest_for_one | simple_one_for_one
//! intensity = 3                 # at most 3 restarts...
//! period = "10s"                # ...in 10 s (defaults: 1 in "5s")
//! backoff = { min = "10ms", max = "1s", random_factor = 0.2 }   # optional
//!
//! [[children]]
//! id = "ticker"                 # unique among its siblings
//! kind = "ticker"               # a registered actor kind
//! restart = "permanent"         # permanent | transient | temporary
//! shutdown = "2s"               # a duration | "brutal_kill" | "infinity"
//! register = "ticker"           # optional: register under this name
//! args = { interval = "500ms" } # the kind's arguments
//! placement = { role = "gpu" }  # optional, in a cluster: node, role, labels, resources
//!
//! [[children]]
//! id = "workers"
//! strategy = "one_for_all"
//!
//!   [[children.children]]
//!   id = "w1"
//!   kind = "ticker"
//!   args = { interval = "1s" }
//! ```
//!
//! [`load_str`] checks the whole file before anything starts and returns
//! every problem, each with file, line, column (in characters) and the
//! offending value.
//!
//! Limits: durations are at most `"8760h"` ([`MAX_DURATION`](crate::MAX_DURATION)),
//! `period` and `backoff.min` longer than zero, and supervisors nest at
//! most [`MAX_DEPTH`] (32) deep, the root counting as 1.

use std::fmt;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use std::sync::Arc;

use futures::future::BoxFuture;
use manta_actors::{
    AnyHandle, ArgsValue, ChildFactory, KindError, KindRegistry, Placement, Placer, SpawnError,
    StartContext,
};
use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::duration::parse_duration;
use crate::spec::{Backoff, ChildSpec, Restart, Shutdown, Strategy, SupervisorSpec};

/// One problem in a tree file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeError {
    /// The file (as given to the loader).
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column (in characters).
    pub column: usize,
    /// What is wrong.
    pub message: String,
    /// The offending text from the file, if any (shortened when long).
    pub value: Option<String>,
}

impl fmt::Display for TreeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )?;
        if let Some(v) = &self.value {
            write!(f, " (found `{v}`)")?;
        }
        Ok(())
    }
}

/// Every problem found in a tree file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct TreeErrors(pub Vec<TreeError>);

impl fmt::Display for TreeErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Loads tree files: checks every problem before anything starts and
/// builds the spec. It knows the kinds a tree may name and, on a cluster
/// node, the [`Placer`] that starts workers with a `placement` on a
/// matching node (without one, such a worker's start fails with an error
/// saying it needs a cluster node).
///
/// ```no_run
/// # fn demo(kinds: &manta_actors::KindRegistry, placer: &dyn manta_actors::Placer) -> Result<(), manta_supervision::tree::TreeErrors> {
/// use manta_supervision::tree::Loader;
/// let spec = Loader::new(kinds).file("examples/tree.toml".as_ref())?;
/// let placed = Loader::new(kinds).placer(placer).file("examples/cluster-demo.toml".as_ref())?;
/// # let _ = (spec, placed); Ok(()) }
/// ```
#[derive(Clone, Copy)]
pub struct Loader<'a> {
    kinds: &'a KindRegistry,
    placer: Option<&'a dyn Placer>,
}

impl std::fmt::Debug for Loader<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loader")
            .field("kinds", self.kinds)
            .field("placer", &self.placer.is_some())
            .finish()
    }
}

impl<'a> Loader<'a> {
    /// A loader for trees naming `kinds`.
    pub fn new(kinds: &'a KindRegistry) -> Self {
        Self {
            kinds,
            placer: None,
        }
    }

    /// Starts placed workers through `placer` (a cluster node).
    pub fn placer(mut self, placer: &'a dyn Placer) -> Self {
        self.placer = Some(placer);
        self
    }

    /// Reads and checks a tree file. The root supervisor's default name is
    /// the file's stem.
    pub fn file(&self, path: &Path) -> Result<SupervisorSpec, TreeErrors> {
        let file = path.display().to_string();
        let src = std::fs::read_to_string(path).map_err(|e| {
            TreeErrors(vec![TreeError {
                file: file.clone(),
                line: 0,
                column: 0,
                message: format!("cannot read file: {e}"),
                value: None,
            }])
        })?;
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "root".to_owned());
        load_str_named(&src, &file, &stem, self.kinds, self.placer)
    }

    /// Checks a tree given as text; `file` names it in error positions.
    pub fn str(&self, src: &str, file: &str) -> Result<SupervisorSpec, TreeErrors> {
        load_str_named(src, file, "root", self.kinds, self.placer)
    }
}

/// `Loader::new(kinds).file(path)`: a tree file without a placer.
pub fn load_file(path: &Path, kinds: &KindRegistry) -> Result<SupervisorSpec, TreeErrors> {
    Loader::new(kinds).file(path)
}

/// `Loader::new(kinds).str(src, file)`: a tree as text without a placer.
pub fn load_str(src: &str, file: &str, kinds: &KindRegistry) -> Result<SupervisorSpec, TreeErrors> {
    Loader::new(kinds).str(src, file)
}

fn load_str_named(
    src: &str,
    file: &str,
    default_name: &str,
    kinds: &KindRegistry,
    placer: Option<&dyn Placer>,
) -> Result<SupervisorSpec, TreeErrors> {
    let mut cx = Checker {
        src,
        file,
        kinds,
        placer,
        errors: Vec::new(),
    };
    // The TOML parser refuses nesting deeper than 80 levels itself (its
    // recursion guard, on unless the `toml/unbounded` feature is), so a
    // deeply nested file is an error here, not a stack overflow; the tests
    // load one 10,000 levels deep to keep it so.
    let (root, parse_errors) = DeTable::parse_recoverable(src);
    if !parse_errors.is_empty() {
        for e in parse_errors {
            let message = e.message().trim();
            let too_deep = message.contains("recursion");
            let span = match e.span() {
                Some(span) => span,
                // A table header with too many keys comes without a span.
                None if too_deep => deep_header(src).unwrap_or(0..0),
                None => 0..0,
            };
            let message = if too_deep {
                format!(
                    "TOML syntax error: {message} (the file nests too deep; tree files nest supervisors at most {MAX_DEPTH} deep)"
                )
            } else {
                format!("TOML syntax error: {message}")
            };
            let (line, column) = cx.position(span.start);
            let seen = cx
                .errors
                .iter()
                .any(|e| (e.line, e.column, e.message.as_str()) == (line, column, &message));
            if !seen {
                cx.error(span, message);
            }
        }
        return Err(TreeErrors(cx.errors));
    }
    let span = root.span();
    let spec = cx.supervisor(root.get_ref(), span, None, default_name, 1);
    match spec {
        Some(spec) if cx.errors.is_empty() => Ok(spec),
        _ => {
            if cx.errors.is_empty() {
                cx.error(0..0, "the tree could not be built".to_owned());
            }
            cx.errors.sort_by_key(|e| (e.line, e.column));
            Err(TreeErrors(cx.errors))
        }
    }
}

/// The first key (a table header `[[a.b.c]]` or a dotted key `a.b.c = 1`)
/// with more parts than the TOML parser nests (80), for its error about
/// it, which comes without a span.
fn deep_header(src: &str) -> Option<Range<usize>> {
    let mut at = 0;
    for line in src.split_inclusive('\n') {
        let trimmed = line.trim_start();
        let start = at + (line.len() - trimmed.len());
        at += line.len();
        let key = if trimmed.starts_with('[') {
            trimmed.split(']').next().unwrap_or("")
        } else {
            trimmed.split('=').next().unwrap_or("")
        };
        if key.matches('.').count() >= 80 {
            return Some(start..start + key.trim_end().len());
        }
    }
    None
}

/// How deep supervisors may nest in a tree file, the root counting as 1.
/// Deeper nesting is an error (a tree that deep is surely generated by
/// mistake, and checking and starting it recurse once per level).
pub const MAX_DEPTH: usize = 32;

type Entry<'a, 'i> = (
    &'a Spanned<std::borrow::Cow<'i, str>>,
    &'a Spanned<DeValue<'i>>,
);

/// The value of field `name` among a table's entries.
fn field<'a, 'i>(entries: &[Entry<'a, 'i>], name: &str) -> Option<&'a Spanned<DeValue<'i>>> {
    entries
        .iter()
        .find(|(k, _)| k.get_ref() == name)
        .map(|(_, v)| *v)
}

struct Checker<'s> {
    src: &'s str,
    file: &'s str,
    kinds: &'s KindRegistry,
    placer: Option<&'s dyn Placer>,
    errors: Vec<TreeError>,
}

const WORKER_KEYS: &[&str] = &[
    "id",
    "kind",
    "args",
    "restart",
    "shutdown",
    "register",
    "placement",
];
const SUPERVISOR_KEYS: &[&str] = &[
    "id",
    "name",
    "strategy",
    "intensity",
    "period",
    "backoff",
    "instances",
    "children",
    "restart",
    "shutdown",
    "register",
];
const BACKOFF_KEYS: &[&str] = &["min", "max", "random_factor"];

impl<'s> Checker<'s> {
    /// 1-based line and column (in characters) of byte `offset`; an
    /// offset inside a multi-byte character counts as that character.
    fn position(&self, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(self.src.len());
        while !self.src.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &self.src[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
        let column = before[line_start..].chars().count() + 1;
        (line, column)
    }

    fn snippet(&self, span: &Range<usize>) -> Option<String> {
        let text = self.src.get(span.clone())?.trim();
        if text.is_empty() {
            return None;
        }
        let first_line = text.lines().next().unwrap_or(text);
        let mut s: String = first_line.chars().take(60).collect();
        if s.len() < text.len() {
            s.push('…');
        }
        Some(s)
    }

    fn error(&mut self, span: Range<usize>, message: String) {
        let (line, column) = self.position(span.start);
        let value = self.snippet(&span);
        self.errors.push(TreeError {
            file: self.file.to_owned(),
            line,
            column,
            message,
            value,
        });
    }

    fn error_no_value(&mut self, span: Range<usize>, message: String) {
        let (line, column) = self.position(span.start);
        self.errors.push(TreeError {
            file: self.file.to_owned(),
            line,
            column,
            message,
            value: None,
        });
    }

    /// Deserialises one value, recording a positioned error on failure.
    fn de<T: DeserializeOwned>(&mut self, v: &Spanned<DeValue<'_>>, what: &str) -> Option<T> {
        match T::deserialize(toml::de::ValueDeserializer::from(v.clone())) {
            Ok(t) => Some(t),
            Err(e) => {
                let span = e.span().unwrap_or_else(|| v.span());
                self.error(span, format!("{what}: {}", e.message().trim()));
                None
            }
        }
    }

    fn string(&mut self, v: &Spanned<DeValue<'_>>, what: &str) -> Option<String> {
        match v.get_ref() {
            DeValue::String(s) => Some(s.to_string()),
            other => {
                self.error(
                    v.span(),
                    format!("{what} must be a string, not {}", other.type_str()),
                );
                None
            }
        }
    }

    fn duration(&mut self, v: &Spanned<DeValue<'_>>, what: &str) -> Option<Duration> {
        let s = self.string(v, what)?;
        match parse_duration(&s) {
            Ok(d) => Some(d),
            Err(e) => {
                self.error(v.span(), format!("bad {what}: {e}"));
                None
            }
        }
    }

    fn parse_name<T: std::str::FromStr<Err = String>>(
        &mut self,
        v: &Spanned<DeValue<'_>>,
        what: &str,
    ) -> Option<T> {
        let s = self.string(v, what)?;
        match s.parse() {
            Ok(t) => Some(t),
            Err(e) => {
                self.error(v.span(), e);
                None
            }
        }
    }

    fn shutdown(&mut self, v: &Spanned<DeValue<'_>>) -> Option<Shutdown> {
        let s = self.string(v, "shutdown")?;
        match s.as_str() {
            "brutal_kill" => Some(Shutdown::BrutalKill),
            "infinity" => Some(Shutdown::Infinity),
            other => match parse_duration(other) {
                Ok(d) if d.is_zero() => {
                    self.error(
                        v.span(),
                        "shutdown must be longer than zero (\"brutal_kill\" stops a child at once)"
                            .to_owned(),
                    );
                    None
                }
                Ok(d) => Some(Shutdown::Timeout(d)),
                Err(e) => {
                    self.error(
                        v.span(),
                        format!("unknown shutdown `{other}`: expected \"brutal_kill\", \"infinity\" or a duration ({e})"),
                    );
                    None
                }
            },
        }
    }

    fn check_keys(&mut self, entries: &[Entry<'_, '_>], allowed: &[&str], what: &str) {
        for (k, _) in entries {
            if !allowed.contains(&k.get_ref().as_ref()) {
                self.error(
                    k.span(),
                    format!(
                        "unknown field `{}` in {what} (expected one of: {})",
                        k.get_ref(),
                        allowed.join(", ")
                    ),
                );
            }
        }
    }

    fn backoff(&mut self, v: &Spanned<DeValue<'_>>) -> Option<Backoff> {
        let DeValue::Table(t) = v.get_ref() else {
            self.error(
                v.span(),
                "backoff must be a table { min, max, random_factor }".to_owned(),
            );
            return None;
        };
        let entries: Vec<Entry<'_, '_>> = t.iter().collect();
        self.check_keys(&entries, BACKOFF_KEYS, "backoff");
        let get = |name: &str| field(&entries, name);
        let min = match get("min") {
            Some(v) => {
                let min = self.duration(v, "backoff min")?;
                if min.is_zero() {
                    self.error(
                        v.span(),
                        "backoff min must be longer than zero (leave `backoff` out to restart at once)"
                            .to_owned(),
                    );
                    return None;
                }
                min
            }
            None => {
                self.error_no_value(v.span(), "backoff is missing `min`".to_owned());
                return None;
            }
        };
        let max = match get("max") {
            Some(v) => self.duration(v, "backoff max")?,
            None => min.saturating_mul(64),
        };
        let random_factor = match get("random_factor") {
            Some(v) => {
                let f: f64 = self.de(v, "backoff random_factor")?;
                if !(0.0..=10.0).contains(&f) {
                    self.error(
                        v.span(),
                        "backoff random_factor must be between 0 and 10".to_owned(),
                    );
                    return None;
                }
                f
            }
            None => 0.0,
        };
        if max < min {
            self.error(v.span(), "backoff max is shorter than min".to_owned());
            return None;
        }
        Some(Backoff {
            min,
            max,
            random_factor,
        })
    }

    fn children(
        &mut self,
        v: &Spanned<DeValue<'_>>,
        sup_name: &str,
        depth: usize,
    ) -> Vec<ChildSpec> {
        let DeValue::Array(items) = v.get_ref() else {
            self.error(
                v.span(),
                format!("`children` of supervisor `{sup_name}` must be an array of tables ([[children]])"),
            );
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut seen: Vec<(String, usize)> = Vec::new();
        for item in items.iter() {
            let DeValue::Table(t) = item.get_ref() else {
                self.error(
                    item.span(),
                    format!("a child of supervisor `{sup_name}` must be a table"),
                );
                continue;
            };
            // Duplicate ids are checked here, where siblings are known.
            let id_entry = t.iter().find(|(k, _)| k.get_ref() == "id");
            if let Some((_, idv)) = id_entry {
                if let DeValue::String(id) = idv.get_ref() {
                    let (line, _) = self.position(idv.span().start);
                    if let Some((_, first)) = seen.iter().find(|(s, _)| s == id.as_ref()) {
                        let first = *first;
                        self.error(
                            idv.span(),
                            format!("duplicate child id `{id}` in supervisor `{sup_name}` (first used on line {first})"),
                        );
                    } else {
                        seen.push((id.to_string(), line));
                    }
                }
            }
            if let Some(c) = self.child(t, item.span(), sup_name, depth) {
                out.push(c);
            }
        }
        out
    }

    /// A child of a supervisor nested `depth` deep (the root is 1).
    fn child(
        &mut self,
        t: &DeTable<'_>,
        span: Range<usize>,
        sup_name: &str,
        depth: usize,
    ) -> Option<ChildSpec> {
        let entries: Vec<Entry<'_, '_>> = t.iter().collect();
        let get = |name: &str| field(&entries, name);
        let id = match get("id") {
            Some(v) => self.string(v, "child id"),
            None => {
                self.error_no_value(
                    span.clone(),
                    format!("a child of supervisor `{sup_name}` is missing `id`"),
                );
                None
            }
        };
        let is_worker = get("kind").is_some();
        let is_sup = get("strategy").is_some() || get("children").is_some();
        let label = id.clone().unwrap_or_else(|| "?".to_owned());
        if is_worker && is_sup {
            self.error_no_value(
                span,
                format!("child `{label}` has both `kind` (a worker) and `strategy`/`children` (a supervisor)"),
            );
            return None;
        }
        if !is_worker && !is_sup {
            self.error_no_value(
                span,
                format!("child `{label}` needs `kind` (a worker) or `strategy`/`children` (a supervisor)"),
            );
            return None;
        }
        let restart = get("restart").and_then(|v| self.parse_name::<Restart>(v, "restart"));
        let restart_bad = get("restart").is_some() && restart.is_none();
        let shutdown = get("shutdown").and_then(|v| self.shutdown(v));
        let shutdown_bad = get("shutdown").is_some() && shutdown.is_none();
        let register = get("register").and_then(|v| self.string(v, "register"));
        let mut spec = if is_worker {
            self.check_keys(&entries, WORKER_KEYS, &format!("worker `{label}`"));
            let kind_v = get("kind")?;
            let kind = self.string(kind_v, "kind")?;
            let empty;
            let args = match get("args") {
                Some(a) => a,
                None => {
                    empty = Spanned::new(span.clone(), DeValue::Table(DeTable::new()));
                    &empty
                }
            };
            let value = self.args_value(args, &label);
            let factory = match value.clone().map(|v| self.kinds.prepare_args(&kind, v)) {
                None => None,
                Some(Ok(f)) => Some(f),
                Some(Err(KindError::Unknown(k))) => {
                    let known = self.kinds.names();
                    self.error(
                        kind_v.span(),
                        format!(
                            "unknown actor kind `{k}` (registered kinds: {})",
                            known.join(", ")
                        ),
                    );
                    None
                }
                Some(Err(KindError::Args(e))) => {
                    let at = span_at(args, &e.path, &e.message);
                    let ty = self.kinds.args_type(&kind).unwrap_or("?");
                    self.error(
                        at,
                        format!(
                            "args of worker `{label}` do not fit kind `{kind}` ({ty}): {}",
                            e.message.trim()
                        ),
                    );
                    None
                }
            };
            let factory = match get("placement") {
                None => factory,
                Some(pv) => {
                    let placement: Option<Placement> = self.de(pv, "placement");
                    match (factory, placement, value) {
                        (Some(_), Some(placement), Some(value)) => {
                            self.placed(&kind, value, &placement, pv.span())
                        }
                        _ => None,
                    }
                }
            };
            ChildSpec::worker(id.clone()?, factory?)
        } else {
            if depth >= MAX_DEPTH {
                self.error_no_value(
                    get("id").map(|v| v.span()).unwrap_or(span),
                    format!(
                        "supervisor `{label}` would be nested {} deep; tree files nest supervisors at most {MAX_DEPTH} deep (the root is 1)",
                        depth + 1
                    ),
                );
                return None;
            }
            let sup = self.supervisor(t, span, id.clone(), &label, depth + 1)?;
            ChildSpec::supervisor(sup)
        };
        if restart_bad || shutdown_bad || id.is_none() {
            return None;
        }
        if let Some(r) = restart {
            spec.restart = r;
        }
        if let Some(s) = shutdown {
            spec.shutdown = s;
        }
        spec.register = register;
        Some(spec)
    }

    /// A worker's `args` as the self-describing value kinds decode.
    fn args_value(&mut self, args: &Spanned<DeValue<'_>>, label: &str) -> Option<ArgsValue> {
        if let DeValue::Table(_) = args.get_ref() {
            self.de(args, &format!("args of worker `{label}`"))
        } else {
            self.error(
                args.span(),
                format!("args of worker `{label}` must be a table"),
            );
            None
        }
    }

    /// A factory for a worker placed in a cluster.
    fn placed(
        &mut self,
        kind: &str,
        args: ArgsValue,
        placement: &Placement,
        at: Range<usize>,
    ) -> Option<Arc<dyn ChildFactory>> {
        match self.placer {
            Some(p) => match p.factory(kind, args, placement) {
                Ok(f) => Some(f),
                Err(e) => {
                    self.error(at, format!("cannot place: {e}"));
                    None
                }
            },
            None => Some(Arc::new(NeedsCluster {
                kind: kind.to_owned(),
                placement: placement.clone(),
            })),
        }
    }

    fn supervisor(
        &mut self,
        t: &DeTable<'_>,
        span: Range<usize>,
        id: Option<String>,
        default_name: &str,
        depth: usize,
    ) -> Option<SupervisorSpec> {
        let entries: Vec<Entry<'_, '_>> = t.iter().collect();
        let get = |name: &str| field(&entries, name);
        let name = match (&id, get("name")) {
            (Some(id), _) => id.clone(),
            (None, Some(v)) => self.string(v, "name")?,
            (None, None) => default_name.to_owned(),
        };
        let what = format!("supervisor `{name}`");
        self.check_keys(&entries, SUPERVISOR_KEYS, &what);
        match &id {
            // The keys of a child entry mean nothing at the top level:
            // refused rather than ignored.
            None => {
                for key in ["id", "restart", "shutdown", "register"] {
                    if let Some(v) = get(key) {
                        self.error(
                            v.span(),
                            format!("`{key}` is for a child entry; the root supervisor has none (it is named by `name`, or by the file name)"),
                        );
                    }
                }
            }
            // A nested supervisor is named by its id.
            Some(id) => {
                if let Some(v) = get("name") {
                    if self.string(v, "name").is_some_and(|n| &n != id) {
                        self.error(
                            v.span(),
                            format!("a nested supervisor is named by its `id` (`{id}`): drop `name` or make it the same"),
                        );
                    }
                }
            }
        }
        let mut spec = SupervisorSpec::new(name.clone());
        let before = self.errors.len();
        if let Some(v) = get("strategy") {
            if let Some(s) = self.parse_name::<Strategy>(v, "strategy") {
                spec.strategy = s;
            }
        }
        if let Some(v) = get("intensity") {
            if let Some(n) = self.de::<u32>(v, "intensity (a non-negative integer)") {
                spec.intensity = n;
            }
        }
        if let Some(v) = get("period") {
            if let Some(d) = self.duration(v, "period") {
                if d.is_zero() {
                    self.error(v.span(), "period must be longer than zero".to_owned());
                }
                spec.period = d;
            }
        }
        if let Some(v) = get("backoff") {
            spec.backoff = self.backoff(v);
        }
        if let Some(v) = get("instances") {
            if let Some(n) = self.de::<u32>(v, "instances (a non-negative integer)") {
                if spec.strategy != Strategy::SimpleOneForOne && n > 0 {
                    self.error(
                        v.span(),
                        format!("`instances` is only for simple_one_for_one supervisors ({what})"),
                    );
                }
                spec.instances = n;
            }
        }
        if let Some(v) = get("children") {
            spec.children = self.children(v, &name, depth);
        }
        if spec.strategy == Strategy::SimpleOneForOne {
            let n = get("children").map(|v| match v.get_ref() {
                DeValue::Array(a) => a.len(),
                _ => 0,
            });
            if n != Some(1) {
                self.error_no_value(
                    get("strategy").map(|v| v.span()).unwrap_or(span),
                    format!("{what} is simple_one_for_one and needs exactly one child template, found {}", n.unwrap_or(0)),
                );
            }
        }
        if self.errors.len() > before {
            return None;
        }
        // Children that failed to check were reported; keep the spec only
        // if everything below is sound.
        let all_children_ok = match get("children") {
            Some(v) => match v.get_ref() {
                DeValue::Array(a) => a.len() == spec.children.len(),
                _ => false,
            },
            None => true,
        };
        if !all_children_ok {
            return None;
        }
        Some(spec)
    }
}

/// The factory of a placed worker loaded without a cluster: starting it
/// fails with an error that says what to do.
struct NeedsCluster {
    kind: String,
    placement: Placement,
}

impl ChildFactory for NeedsCluster {
    fn start(&self, _ctx: StartContext) -> BoxFuture<'static, Result<AnyHandle, SpawnError>> {
        let err = SpawnError::NeedsCluster {
            kind: self.kind.clone(),
            placement: Box::new(self.placement.clone()),
        };
        Box::pin(async move { Err(err) })
    }

    fn describe(&self) -> String {
        format!("{} (needs a cluster)", self.kind)
    }
}

/// The span of the value at `path` (`a.b[2].c`, as `serde_path_to_error`
/// writes it) inside `root`: an unknown field's key, else the deepest value
/// found (a missing field names its table).
fn span_at(root: &Spanned<DeValue<'_>>, path: &str, message: &str) -> Range<usize> {
    let unknown = message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split('`').next());
    // The path of an unknown field may end in the field itself: its key is
    // found in the table above.
    let path = match unknown {
        Some(field) if path == field => "",
        Some(field) => path
            .strip_suffix(field)
            .and_then(|p| p.strip_suffix('.'))
            .unwrap_or(path),
        None => path,
    };
    let at = value_at(root, path);
    if let (Some(field), DeValue::Table(t)) = (unknown, at.get_ref()) {
        if let Some((k, _)) = t.iter().find(|(k, _)| k.get_ref() == field) {
            return k.span();
        }
    }
    at.span()
}

fn value_at<'a, 'b>(root: &'a Spanned<DeValue<'b>>, path: &str) -> &'a Spanned<DeValue<'b>> {
    let mut at = root;
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (key, indices) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            let DeValue::Table(t) = at.get_ref() else {
                break;
            };
            match t.iter().find(|(k, _)| k.get_ref() == key) {
                Some((_, v)) => at = v,
                None => break,
            }
        }
        for index in indices
            .split(['[', ']'])
            .filter(|s| !s.is_empty())
            .map(str::parse::<usize>)
        {
            let (Ok(i), DeValue::Array(items)) = (index, at.get_ref()) else {
                return at;
            };
            match items.get(i) {
                Some(v) => at = v,
                None => return at,
            }
        }
    }
    at
}
