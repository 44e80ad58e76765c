//! `engram-demo`: demos of Engram. `engram-demo pi --workers 8 --points 80000000`.

use clap::{Parser, Subcommand};
use engram_tools::demo::pi::{self, PiPlan};

#[derive(Debug, Parser)]
#[command(name = "engram-demo", version, about = "Demos of Engram's shared state")]
struct Cli {
    #[command(subcommand)]
    command: Demo,
}

#[derive(Debug, Subcommand)]
enum Demo {
    /// Monte Carlo π split across worker processes sharing an Engram counter and barrier,
    /// next to the same computation with local threads; prints both and their ratio.
    Pi {
        /// Engram node to use.
        #[arg(long, env = "ENGRAM_ADDR", default_value = "127.0.0.1:7400")]
        addr: String,
        /// Workers: processes in the disaggregated run, threads in the local one.
        #[arg(long, env = "ENGRAM_DEMO_WORKERS", default_value_t = 8)]
        workers: u32,
        /// Darts thrown in all.
        #[arg(long, env = "ENGRAM_DEMO_POINTS", default_value_t = 80_000_000)]
        points: u64,
        /// Rounds; workers meet at the barrier after each.
        #[arg(long, env = "ENGRAM_DEMO_ROUNDS", default_value_t = 20)]
        rounds: u32,
    },
    /// One worker of the disaggregated π run (started by `pi`).
    #[command(hide = true)]
    PiWorker {
        #[arg(long)]
        addr: String,
        #[arg(long)]
        run: String,
        #[arg(long)]
        worker: u32,
        #[arg(long)]
        workers: u32,
        #[arg(long)]
        points: u64,
        #[arg(long)]
        rounds: u32,
    },
}

fn main() {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Demo::Pi {
            addr,
            workers,
            points,
            rounds,
        } => run_pi(
            &addr,
            PiPlan {
                workers,
                points,
                rounds,
            },
        ),
        Demo::PiWorker {
            addr,
            run,
            worker,
            workers,
            points,
            rounds,
        } => pi::work(
            &addr,
            &run,
            worker,
            &PiPlan {
                workers,
                points,
                rounds,
            },
        )
        .map_err(|error| error.to_string()),
    };
    if let Err(message) = outcome {
        eprintln!("engram-demo: {message}");
        std::process::exit(1);
    }
}

fn run_pi(address: &str, plan: PiPlan) -> Result<(), String> {
    if plan.workers == 0 || plan.rounds == 0 || plan.points_per_worker_round() == 0 {
        return Err("need workers, rounds >= 1 and points >= workers * rounds".into());
    }
    let program = std::env::current_exe().map_err(|error| format!("cannot find this program: {error}"))?;
    println!(
        "π with {} darts: {} workers × {} rounds × {} darts",
        plan.total_points(),
        plan.workers,
        plan.rounds,
        plan.points_per_worker_round()
    );
    let local = pi::run_local(&plan);
    println!(
        "local threads (AtomicU64 + std::sync::Barrier):   π ≈ {:.6}  in {:>9.3} ms",
        local.estimate,
        local.elapsed.as_secs_f64() * 1e3
    );
    let remote = pi::run_disaggregated(&program, address, &plan)?;
    println!(
        "worker processes (Engram counter + barrier):      π ≈ {:.6}  in {:>9.3} ms",
        remote.estimate,
        remote.elapsed.as_secs_f64() * 1e3
    );
    println!(
        "cost of transparency: {:.3}× the local time (|error| {:.6})",
        remote.elapsed.as_secs_f64() / local.elapsed.as_secs_f64(),
        (remote.estimate - std::f64::consts::PI).abs()
    );
    if remote.estimate != local.estimate {
        return Err(format!(
            "the two runs threw the same darts but disagree ({} vs {}): hits were lost or doubled",
            remote.estimate, local.estimate
        ));
    }
    Ok(())
}
