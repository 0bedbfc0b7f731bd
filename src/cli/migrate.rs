//! `migrate`: the database created if missing, and its migrations applied.

use clap::Args;

use crate::config::DatabaseArgs;

#[derive(Args, Debug)]
pub struct MigrateCmd {
    #[command(flatten)]
    pub database: DatabaseArgs,
}

pub async fn run(cmd: MigrateCmd) -> anyhow::Result<i32> {
    crate::app::migrate(&cmd.database).await?;
    Ok(0)
}
