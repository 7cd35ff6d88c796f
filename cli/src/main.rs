fn main() {
    eprintln!("imgtool: not implemented yet");
    std::process::exit(1);
}
