//! The `husk` command line: parses arguments and calls the library.
fn main() {
    println!("husk");
}
