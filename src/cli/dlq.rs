//! `dlq list` and `dlq replay`: the dead-letter queue, looked at or sent back to work.

use clap::{Args, Subcommand};

use super::common::OutputFormat;
use crate::config::BrokerArgs;
use crate::queue::dlq::{DeadLetterQueue, ReplayFilter};

#[derive(Subcommand, Debug)]
pub enum DlqCmd {
    /// Show each dead letter (id, reason code, reason, attempt, body preview); consumes nothing
    List(DlqListCmd),
    /// Move dead letters back to the work queue with fresh attempts; the others stay
    Replay(DlqReplayCmd),
}

#[derive(Args, Debug)]
pub struct DlqListCmd {
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// Show at most this many (oldest first)
    #[arg(long)]
    pub limit: Option<usize>,
    #[arg(long, value_enum, default_value = "table")]
    pub format: OutputFormat,
}

#[derive(Args, Debug)]
pub struct DlqReplayCmd {
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// Only dead letters with this reason code (`x-mdti-reason-code`), e.g. `gave_up`
    #[arg(long = "reason")]
    pub reason_code: Option<String>,
    /// Replay at most this many
    #[arg(long)]
    pub limit: Option<usize>,
}

pub async fn run(cmd: DlqCmd) -> anyhow::Result<i32> {
    let broker = match &cmd {
        DlqCmd::List(list) => &list.broker,
        DlqCmd::Replay(replay) => &replay.broker,
    };
    let dlq = DeadLetterQueue::connect(broker.amqp_url.expose(), broker.topology()).await?;
    match cmd {
        DlqCmd::List(list) => print_list(&dlq, &list).await?,
        DlqCmd::Replay(replay) => replay_letters(&dlq, replay).await?,
    }
    dlq.close().await?;
    Ok(0)
}

async fn print_list(dlq: &DeadLetterQueue, list: &DlqListCmd) -> anyhow::Result<()> {
    let letters = dlq.list(list.limit).await?;
    match list.format {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&letters)?),
        OutputFormat::Table => {
            let queue = dlq.topology().dead_letter_queue();
            println!("{queue}: {} dead letter(s) shown", letters.len());
            for letter in &letters {
                println!("{letter}");
            }
        }
    }
    Ok(())
}

async fn replay_letters(dlq: &DeadLetterQueue, replay: DlqReplayCmd) -> anyhow::Result<()> {
    let filter = ReplayFilter {
        reason_code: replay.reason_code,
        limit: replay.limit,
    };
    let summary = dlq.replay(&filter).await?;
    println!("{}: {summary}", dlq.topology().dead_letter_queue());
    Ok(())
}
