fn main() { println!("{}", headclip::smoke()); }
