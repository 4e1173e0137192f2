//! `duban-faults`: the fault-injection scenarios of docs/RELIABILITY.md, in their full form or
//! their quick one, and the soak: random faults for a number of minutes with the aggregator's
//! and the agents' memory, open files and disk use sampled for growth (docs/RELIABILITY.md).

use std::time::Instant;

use duban_e2e::faults::{Findings, Size, scenarios};

const USAGE: &str = "usage:
  duban-faults list                      the scenarios, one a line
  duban-faults run [--quick] [NAME...]   run these scenarios (all when none is named), full form
                                         unless --quick; exits 1 when any finds a problem
  duban-faults soak --minutes N [--seed S]
                                         one long-lived aggregator, agents and units under a
                                         random fault every few seconds for N minutes, memory,
                                         open files and disk sampled every minute, the oracle
                                         at the end; exits 1 on any problem or growth";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match args.first().map(String::as_str) {
        Some("list") => {
            for (name, _) in scenarios::ALL {
                println!("{name}");
            }
            0
        }
        Some("run") => run(&args[1..]),
        Some("soak") => soak(&args[1..]),
        _ => {
            eprintln!("{USAGE}");
            2
        }
    };
    std::process::exit(code);
}

fn run(args: &[String]) -> i32 {
    let size = if args.iter().any(|a| a == "--quick") {
        Size::Quick
    } else {
        Size::Full
    };
    let names: Vec<&str> = args
        .iter()
        .filter(|a| !a.starts_with("--"))
        .map(String::as_str)
        .collect();
    for name in &names {
        if !scenarios::ALL.iter().any(|(n, _)| n == name) {
            eprintln!("no scenario named {name}; `duban-faults list` names them");
            return 2;
        }
    }
    let mut all = Vec::new();
    for (name, scenario) in scenarios::ALL {
        if names.is_empty() || names.contains(&name) {
            let started = Instant::now();
            let findings = scenario(size);
            eprintln!(
                "[{name}] done in {:.0} s: {}",
                started.elapsed().as_secs_f64(),
                verdict(&findings)
            );
            all.push(findings);
        }
    }
    summary(&all)
}

fn verdict(f: &Findings) -> String {
    match (&f.skipped, f.problems.len()) {
        (Some(why), _) => format!("SKIPPED ({why})"),
        (None, 0) => "nothing lost, doubled or wrong".into(),
        (None, n) => format!("{n} PROBLEM(S)"),
    }
}

fn summary(all: &[Findings]) -> i32 {
    println!("| scenario | verdict | figures |");
    println!("|---|---|---|");
    for f in all {
        println!(
            "| {} | {} | {} |",
            f.scenario,
            verdict(f),
            f.figures.join("; ").replace('|', "/")
        );
    }
    i32::from(all.iter().any(|f| !f.problems.is_empty()))
}

fn soak(args: &[String]) -> i32 {
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    let Some(minutes) = value("--minutes") else {
        eprintln!("{USAGE}");
        return 2;
    };
    let seed = value("--seed").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    eprintln!("soak for {minutes} min, seed {seed} (--seed {seed} replays the same faults)");
    let started = Instant::now();
    let findings = scenarios::soak(minutes, seed);
    eprintln!(
        "[soak] done in {:.0} s: {}",
        started.elapsed().as_secs_f64(),
        verdict(&findings)
    );
    summary(&[findings])
}
