//! The man pages and shell completions in `man/` are generated from the clap
//! definitions; this test fails when they are out of date. Regenerate with
//! `VMBACK_UPDATE_MAN=1 cargo test --test man`.

use std::path::{Path, PathBuf};

use clap::CommandFactory;
use vmback::cli::Cli;

/// The man page of `cmd`: clap_mangen's sections, with the command's after-help
/// (see [`after_help_roff`]) in place of its EXTRA section.
fn man_page(cmd: clap::Command) -> Vec<u8> {
    let after = cmd
        .get_after_help()
        .map(|h| h.to_string())
        .unwrap_or_default();
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd.after_help(None::<&str>))
        .render(&mut page)
        .unwrap();
    let page = String::from_utf8(page).unwrap();
    let (details, sections) = after_help_roff(&after);
    // DESCRIPTION goes on with the details; EXIT STATUS and EXAMPLES come before
    // VERSION (or last), as man-pages(7) orders sections.
    let options = page.find("\n.SH OPTIONS").map_or(page.len(), |i| i + 1);
    let mut out = format!("{}{details}{}", &page[..options], &page[options..]);
    let version = out.find("\n.SH VERSION").map_or(out.len(), |i| i + 1);
    out.insert_str(version, &sections);
    out.into_bytes()
}

/// Turns a clap after-help text into roff: its leading text (to continue the
/// DESCRIPTION) and its "Exit codes:" and "Examples:" blocks as EXIT STATUS and
/// EXAMPLES sections. Indented lines are kept as they are (no filling).
fn after_help_roff(text: &str) -> (String, String) {
    let (mut details, mut sections) = (String::new(), String::new());
    let mut out = &mut details;
    let mut verbatim = false;
    for line in text.lines() {
        let heading = match line {
            "Examples:" => Some("EXAMPLES"),
            "Exit codes:" => Some("EXIT STATUS"),
            _ => None,
        };
        let indented = line.starts_with(' ');
        if verbatim && !indented {
            out.push_str(".fi\n.RE\n");
            verbatim = false;
        }
        if let Some(h) = heading {
            out = &mut sections;
            out.push_str(&match h.contains(' ') {
                true => format!(".SH \"{h}\"\n"),
                false => format!(".SH {h}\n"),
            });
        } else if line.trim().is_empty() {
            out.push_str(".PP\n");
        } else {
            if indented && !verbatim {
                out.push_str(".RS 2\n.nf\n");
                verbatim = true;
            }
            let line = if indented {
                line.strip_prefix("  ").unwrap_or(line)
            } else {
                line
            };
            out.push_str(&roff_text(line));
            out.push('\n');
        }
    }
    if verbatim {
        out.push_str(".fi\n.RE\n");
    }
    for part in [&mut details, &mut sections] {
        while part.ends_with(".PP\n") {
            part.truncate(part.len() - 4); // a paragraph break before the next section
        }
    }
    if !details.is_empty() {
        details.insert_str(0, ".PP\n");
    }
    (details, sections)
}

/// Escapes a line of text for roff: backslashes, dashes, quotes that would render
/// as typographic ones (examples must stay copy-pastable), and a leading control
/// character.
fn roff_text(line: &str) -> String {
    let mut s = String::new();
    for c in line.chars() {
        match c {
            '\\' => s.push_str("\\e"),
            '-' => s.push_str("\\-"),
            '\'' => s.push_str("\\*(Aq"),
            '`' => s.push_str("\\(ga"),
            _ => s.push(c),
        }
    }
    if s.starts_with('.') {
        s.insert_str(0, "\\&");
    }
    s
}

fn generated() -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let cmd = Cli::command();
    out.push((PathBuf::from("vmback.1"), man_page(cmd.clone())));
    for sub in cmd.get_subcommands() {
        let name = format!("vmback-{}", sub.get_name());
        let sub = sub
            .clone()
            .name(name.clone())
            .version(env!("CARGO_PKG_VERSION"));
        out.push((PathBuf::from(format!("{name}.1")), man_page(sub)));
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
