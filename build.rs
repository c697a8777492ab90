// The migrations are embedded at compile time (`sqlx::migrate!`); without
// this, editing one would not rebuild the binaries that carry it.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
