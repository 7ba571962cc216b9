//! Records the commit kipvs is built from, for `kipvs version`.
//!
//! `KIPVS_GIT_COMMIT` in the build environment wins (the container build has no `.git`
//! and passes it as a build argument); else `git rev-parse --short HEAD` in this
//! checkout; else `unknown`. The build script reruns when that variable changes or when
//! HEAD moves: the HEAD file, the branch it names, and packed-refs, each asked of git so
//! that a linked worktree (whose `.git` is a file) and a packed branch are followed too.

use std::path::PathBuf;
use std::process::Command;

const ENV: &str = "KIPVS_GIT_COMMIT";

fn main() {
    println!("cargo:rerun-if-env-changed={ENV}");
    let commit = match std::env::var(ENV) {
        Ok(commit) if !commit.trim().is_empty() => commit.trim().to_owned(),
        _ => from_git().unwrap_or_else(|| "unknown".to_owned()),
    };
    println!("cargo:rustc-env={ENV}={commit}");
}

/// The short commit of HEAD, watching the files that move it; `None` outside a checkout
/// or without git.
fn from_git() -> Option<String> {
    let commit = git(&["rev-parse", "--short", "HEAD"])?;
    let mut watched = vec![git_path("HEAD")?, git_path("packed-refs")?];
    // HEAD names a branch unless it is detached; the branch's file moves on commit.
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watched.push(git_path(&branch)?);
    }
    for path in watched {
        // A path that does not exist (a packed branch, no packed-refs yet) would make
        // cargo rerun on every build; it is left out, and packed-refs covers it.
        if path.exists() {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
    Some(commit)
}

/// Where git keeps `name` (resolved for linked worktrees), as an absolute path.
fn git_path(name: &str) -> Option<PathBuf> {
    let path = PathBuf::from(git(&["rev-parse", "--git-path", name])?);
    if path.is_absolute() {
        Some(path)
    } else {
        let dir = std::env::var_os("CARGO_MANIFEST_DIR")?;
        Some(PathBuf::from(dir).join(path))
    }
}

/// One line of git's standard output, run in this crate's directory.
fn git(args: &[&str]) -> Option<String> {
    let dir = std::env::var_os("CARGO_MANIFEST_DIR")?;
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    let line = text.trim();
    (!line.is_empty()).then(|| line.to_owned())
}
