use clap::Parser;

fn main() {
    let cli = match vmm::cli::Cli::try_parse() {
        Ok(c) => c,
        Err(e) => match e.kind() {
            clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                let _ = e.print();
                std::process::exit(0);
            }
            _ => {
                // One line, as for every other bad input, and status 1.
                let text = e.render().to_string();
                let line: Vec<&str> = text
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with("Usage:") && !l.starts_with("For more information"))
                    .collect();
                eprintln!("vmm: {}", line.join(" ").trim_start_matches("error: "));
                std::process::exit(1);
            }
        },
    };
    std::process::exit(vmm::run(&cli));
}
