// `sqlx::migrate!` embeds migrations/ at compile time, and cargo does not know it reads that
// directory: without this, a new migration is left out until something else changes.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
