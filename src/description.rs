//! The description of a system: loading a YAML file, checking it, and the validated
//! model everything else is built from.
//!
//! Loading is two-stage (as ripgrep does with its configuration): [`yaml`] reads the
//! file into a spanned tree; [`decode`] turns the tree into the [`model`], collecting
//! every problem with its position; [`validate`] checks what needs the whole picture
//! (provider rules, references, cycles, files, templates). Nothing is created and no
//! cloud API is called here.

pub mod decode;
pub mod model;
mod schema;
pub mod template;
pub mod validate;
pub mod yaml;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use tera::Tera;

use crate::diag::{Diagnostic, FileDiagnostics};
pub use model::*;
pub use schema::schema;

/// A description that passed every check.
pub struct Loaded {
    pub path: PathBuf,
    /// The directory relative paths in the description are resolved against.
    pub dir: PathBuf,
    pub desc: Description,
    pub positions: decode::Positions,
    /// Every template of the description, parsed, named by its YAML path
    /// (`services.web.env.DATABASE_URL`).
    pub tera: Tera,
    /// For each service (by name) and suite (`suite:NAME`): what it waits for.
    pub deps: BTreeMap<String, BTreeSet<String>>,
}

impl Loaded {
    /// The release version to use: `--release` wins over the description's default.
    pub fn release_version(&self, cli: Option<&str>) -> Option<String> {
        cli.map(str::to_string).or_else(|| self.desc.release.version.clone())
    }

    /// Resolves a path written in the description.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        clean_path(&self.dir.join(p))
    }
}

/// Reads and checks a description. `release` is the `--release` override; templates
/// are checked with it (or the description's default version).
pub fn load(path: &Path, release: Option<&str>) -> Result<Loaded, FileDiagnostics> {
    let fail = |source: String, d: Diagnostic| Err(FileDiagnostics::new(path, source, vec![d]));
    // Read at most one byte past the limit: a huge file (or /dev/zero) is refused
    // without being read whole.
    let mut bytes = Vec::new();
    let read = std::fs::File::open(path).and_then(|f| {
        std::io::Read::read_to_end(&mut std::io::Read::take(f, yaml::MAX_FILE_BYTES as u64 + 1), &mut bytes)
    });
    if let Err(e) = read {
        return fail(String::new(), Diagnostic::new(yaml::Pos::START, format!("cannot read the file: {e}")));
    }
    if bytes.len() > yaml::MAX_FILE_BYTES {
        return fail(
            String::new(),
            Diagnostic::new(
                yaml::Pos::START,
                format!("the file is larger than {} bytes (1 MiB), the limit for a description", yaml::MAX_FILE_BYTES),
            ),
        );
    }
    let text = match String::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
            let text = String::from_utf8_lossy(valid).into_owned();
            let line = text.matches('\n').count() as u32 + 1;
            let col = text.rsplit('\n').next().map(|l| l.chars().count()).unwrap_or(0) as u32 + 1;
            // No snippet: the bytes are not text.
            return fail(
                String::new(),
                Diagnostic::new(yaml::Pos { line, col }, "the file is not UTF-8 text (is it a binary file?)")
                    .expected("a YAML description in UTF-8"),
            );
        }
    };
    load_str(path, text, release)
}

/// Checks a description given as text (the file name is used in messages and to
/// resolve relative paths).
pub fn load_str(path: &Path, text: String, release: Option<&str>) -> Result<Loaded, FileDiagnostics> {
    let root = match yaml::parse(&text) {
        Ok(n) => n,
        Err(e) => {
            let d = Diagnostic::new(e.pos(), e.to_string());
            return Err(FileDiagnostics::new(path, text, vec![d]));
        }
    };
    let mut decoder = decode::Decoder::new();
    let desc = decoder.description(&root);
    let positions = decoder.positions;
    let mut diags = decoder.diags;
    if let Some(v) = release {
        if let Err(msg) = decode::check_version(v) {
            diags.push(Diagnostic::new(yaml::Pos::START, format!("invalid `--release {v}`: {msg}")));
        }
    }
    let Some(desc) = desc else {
        if diags.is_empty() {
            diags.push(Diagnostic::new(yaml::Pos::START, "the description is incomplete"));
        }
        return Err(FileDiagnostics::new(path, text, diags));
    };
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let dir = if dir.as_os_str().is_empty() { PathBuf::from(".") } else { dir };
    let version = release.map(str::to_string).or_else(|| desc.release.version.clone()).unwrap_or_else(|| "v0".into());
    // Cross-checks run even when decoding found problems (an unknown key, say), so a
    // file's problems are all reported at once.
    let (checked, more) = validate::Validator::new(&desc, &positions, &dir).run(&version);
    diags.extend(more);
    match checked {
        Some(c) if diags.is_empty() => {
            // A live source's password is a secret from the moment the file is read:
            // no plan, log, report or terminal line shows it.
            for db in desc.databases.values() {
                if let DatabaseSource::Url(url) = &db.source {
                    url_secrets(url).iter().for_each(|s| crate::secrets::register(s));
                }
            }
            Ok(Loaded { path: path.to_path_buf(), dir, desc, positions, tera: c.tera, deps: c.deps })
        }
        _ => Err(FileDiagnostics::new(path, text, diags)),
    }
}

/// Normalizes `a/b/../c` to `a/c` without touching the filesystem (the path may not
/// exist yet), so plans and reports show paths as a person would write them.
pub fn clean_path(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out: Vec<Component> = Vec::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => match out.last() {
                Some(Component::Normal(_)) => {
                    out.pop();
                }
                Some(Component::RootDir) => {}
                _ => out.push(c),
            },
            other => out.push(other),
        }
    }
    if out.is_empty() {
        PathBuf::from(".")
    } else {
        out.iter().collect()
    }
}
