fn main() {
    eprintln!("berth-localcloud: not built yet");
    std::process::exit(1);
}
