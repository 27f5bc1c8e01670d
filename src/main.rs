fn main() {
    std::process::exit(rehearse::main_impl());
}
