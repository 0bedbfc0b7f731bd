//! `bench`: the whole path measured. Its arguments and engine live in [`crate::bench`].

pub use crate::bench::BenchCmd;

pub async fn run(cmd: BenchCmd) -> anyhow::Result<i32> {
    crate::bench::run(cmd).await
}
