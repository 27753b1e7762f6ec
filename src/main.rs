fn main() {
    println!("promptmill");
}
