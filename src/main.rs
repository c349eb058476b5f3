fn main() {
    std::process::exit(ovfs::cli::main());
}
