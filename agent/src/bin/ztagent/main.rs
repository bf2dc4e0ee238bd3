//! `ztagent`: the daemon (`run`) and the CLI that drives it, in one binary.
//!
//! [`args`] holds every clap type, [`cmd`] one file per command, [`output`] the printing that
//! several commands share. Here: parse, start the runtime, dispatch, print the error.
mod args;
mod cmd;
mod output;

use std::process::ExitCode;

use clap::Parser;

use args::{ApiCommand, Cli, Command, FleetCommand, K8sCommand, PolicyCommand};

fn main() -> ExitCode {
    // `--not` negates the filter after it: read as a hidden flag of its own.
    let cli = Cli::parse_from(args::negations(std::env::args_os().collect()));
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            // Only the outermost message: the commands' errors say everything in it (no
            // `.context()`), as the library's errors do in their `Display`.
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let top = cli.socket;
    let socket = |given: &args::SocketArg| Cli::socket(top.as_ref(), given);
    match cli.command {
        Command::Run(args) => {
            init_logging(&args.log);
            let socket = socket(&args.socket);
            cmd::run::run(args, socket).await
        }
        Command::Policy(PolicyCommand::Validate { file }) => cmd::policy::validate(&file),
        Command::Policy(PolicyCommand::Push { file, socket: s }) => cmd::policy::push(&socket(&s), &file).await,
        Command::Policy(PolicyCommand::Get { output, socket: s }) => cmd::policy::get(&socket(&s), output.output).await,
        Command::Policy(PolicyCommand::Suggest(args)) => cmd::policy::suggest(&socket(&args.socket), args).await,
        // `check` gates CI: 0 allow, 1 deny, 2 for every error (as for a usage error).
        Command::Check(args) => match cmd::check::check(&socket(&args.socket), args).await {
            Ok(code) => Ok(code),
            Err(e) => {
                eprintln!("error: {e}");
                Ok(ExitCode::from(2))
            }
        },
        Command::Events(args) => cmd::events::events(&socket(&args.socket), args).await,
        Command::Status(args) => cmd::status::status(&socket(&args.socket), args).await,
        Command::Grant(args) => cmd::grant::grant(&socket(&args.socket), args).await,
        Command::Grants(args) => cmd::grants::grants(&socket(&args.socket), args).await,
        Command::Inventory(args) => cmd::inventory::inventory(&socket(&args.socket), args).await,
        Command::Api(ApiCommand::Inventory(args)) => cmd::api::inventory(&socket(&args.socket), args).await,
        Command::K8s(K8sCommand::Translate(args)) => cmd::k8s::translate(&args),
        Command::Fleet(FleetCommand::Push(args)) => cmd::fleet::push(args).await,
        Command::Fleet(FleetCommand::Status(args)) => cmd::fleet::status(args).await,
        Command::Uninstall(args) => {
            cmd::uninstall::uninstall(&socket(&args.socket), &args.pin_path, args.stop_agent).await
        }
    }
}

/// The daemon's log (`run --log`), on stderr.
fn init_logging(filter: &str) {
    let filter =
        tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a person at a terminal, never in a log file or the journal.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    tracing_subscriber::fmt().with_env_filter(filter).with_target(false).with_ansi(ansi).init();
}
