//! Names the build: `troupe --version`, the start-up log and the
//! `troupe_build_info` metric say which version and commit run.

use vergen_gitcl::{Emitter, GitclBuilder};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The commit only, not whether the tree is dirty: that would rebuild
    // on every change to the index.
    let git = GitclBuilder::default().sha(false).build()?;
    Emitter::default().add_instructions(&git)?.emit_and_set()?;
    // Outside a git checkout (a source archive, the Docker build context)
    // vergen's placeholder stands for the commit; say so plainly, or take
    // it from TROUPE_COMMIT.
    println!("cargo:rerun-if-env-changed=TROUPE_COMMIT");
    let commit = std::env::var("TROUPE_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| std::env::var("VERGEN_GIT_SHA").ok())
        .filter(|sha| sha.chars().all(|c| c.is_ascii_hexdigit()) && !sha.is_empty())
        .map_or_else(
            || "unknown".to_owned(),
            |sha| sha.chars().take(12).collect(),
        );
    println!("cargo:rustc-env=TROUPE_COMMIT={commit}");
    Ok(())
}
