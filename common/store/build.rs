//! `sqlx::migrate!` embeds `../../migrations` at compile time, but cargo does not know the macro
//! reads that directory: without this, an incremental build after adding a migration keeps
//! the old set (and a test database then lacks the new schema).
fn main() {
    println!("cargo:rerun-if-changed=../../migrations");
}
