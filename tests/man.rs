//! The man pages and shell completions in `man/` are generated from the clap
//! definitions; this test fails when they are out of date. Regenerate with
//! `VMBACK_UPDATE_MAN=1 cargo test --test man`.

use std::path::{Path, PathBuf};

use clap::CommandFactory;
use vmback::cli::Cli;

fn generated() -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let cmd = Cli::command();
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .render(&mut page)
        .unwrap();
    out.push((PathBuf::from("vmback.1"), page));
    for sub in cmd.get_subcommands() {
        let name = format!("vmback-{}", sub.get_name());
        let sub = sub
            .clone()
            .name(name.clone())
            .version(env!("CARGO_PKG_VERSION"));
        let mut page = Vec::new();
        clap_mangen::Man::new(sub).render(&mut page).unwrap();
        out.push((PathBuf::from(format!("{name}.1")), page));
    }
    for (shell, file) in [
        (clap_complete::Shell::Bash, "vmback.bash"),
        (clap_complete::Shell::Zsh, "_vmback"),
        (clap_complete::Shell::Fish, "vmback.fish"),
    ] {
        let mut buf = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), "vmback", &mut buf);
        out.push((Path::new("completions").join(file), buf));
    }
    out
}

#[test]
fn man_pages_and_completions_are_current() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("man");
    let update = std::env::var("VMBACK_UPDATE_MAN").as_deref() == Ok("1");
    let mut stale = Vec::new();
    for (rel, content) in generated() {
        let path = dir.join(&rel);
        if update {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &content).unwrap();
        } else if std::fs::read(&path).ok().as_deref() != Some(&content[..]) {
            stale.push(rel.display().to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "out of date in man/: {stale:?}; run VMBACK_UPDATE_MAN=1 cargo test --test man"
    );
}
