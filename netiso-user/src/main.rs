fn main() {
    std::process::exit(netiso_user::cli::main());
}
