//! `waypost man`: the man page (roff), generated from the command line's definition.

use std::path::PathBuf;

use crate::{CliError, CliResult, Context, Exit};

/// The arguments of `waypost man`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Without --out: the page of `waypost` on stdout, e.g. \
                        `waypost man > waypost.1 && man ./waypost.1`. With --out DIR: \
                        waypost.1 and one page per subcommand (waypost-ls.1, …) in DIR.")]
pub struct Args {
    /// Write waypost.1 and a page per subcommand (waypost-ls.1, …) into this directory.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

fn render(cmd: clap::Command) -> CliResult<Vec<u8>> {
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd)
        .render(&mut out)
        .map_err(|e| CliError::new(Exit::Failure, format!("rendering the man page: {e}")))?;
    Ok(out)
}

/// Runs `waypost man`.
///
/// # Errors
/// Failure (1) when a page cannot be written.
pub fn run(ctx: &Context, args: Args) -> CliResult {
    let cmd = crate::command();
    let Some(dir) = args.out else {
        crate::output::write_stdout(&render(cmd)?);
        return Ok(Exit::Ok);
    };
    std::fs::create_dir_all(&dir)
        .map_err(|e| CliError::new(Exit::Failure, format!("creating {}: {e}", dir.display())))?;
    let mut pages = vec![("waypost".to_owned(), cmd.clone())];
    for sub in cmd.get_subcommands() {
        let name = format!("waypost-{}", sub.get_name());
        let page = sub
            .clone()
            .display_name(name.clone())
            .bin_name(format!("waypost {}", sub.get_name()));
        pages.push((name, page));
    }
    for (name, page) in pages {
        let path = dir.join(format!("{name}.1"));
        std::fs::write(&path, render(page)?).map_err(|e| {
            CliError::new(Exit::Failure, format!("writing {}: {e}", path.display()))
        })?;
        if ctx.printer.json() {
            ctx.printer
                .json_line(&serde_json::json!({ "written": path.display().to_string() }));
        } else {
            ctx.printer.line(&format!("wrote {}", path.display()));
        }
    }
    Ok(Exit::Ok)
}
