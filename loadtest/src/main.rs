//! `slotq-loadtest <scenario>… [options]`: see `slotq-loadtest --help` (`slotq_loadtest::options::command`).

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let vars = std::env::vars().collect();
    std::process::exit(slotq_loadtest::main_with(&args, &vars).await);
}
