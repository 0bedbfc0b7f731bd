//! `demo`: the whole path on local defaults, in one command.

use clap::Args;

use crate::config::{BrokerArgs, DatabaseArgs, GraphArgs};

#[derive(Args, Debug)]
pub struct DemoCmd {
    #[command(flatten)]
    pub broker: BrokerArgs,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub graph: GraphArgs,
}

pub async fn run(cmd: DemoCmd) -> anyhow::Result<i32> {
    crate::demo::run(cmd.broker, cmd.database, cmd.graph).await
}
