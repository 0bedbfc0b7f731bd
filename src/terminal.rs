//! What `publish` and `bench` show while they run: progress drawn by `indicatif` on stderr
//! when stderr is a terminal, and nothing when it is not (a pipe, a log file, CI), so that a log
//! holds only the lines the command reports.

use std::borrow::Cow;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often a status line's counts are formatted again: often enough to look live, rarely
/// enough that formatting costs nothing beside the work it counts.
const STATUS_EVERY: Duration = Duration::from_millis(100);

/// The spinner's line: the spinner, the time so far, the caller's status.
const COUNTING: &str = "{spinner} {elapsed} {msg}";

/// The bar's line, with the name of what it counts.
fn towards_template(unit: &str) -> String {
    format!("{{bar:40}} {{pos}}/{{len}} {unit} {{elapsed}} (eta {{eta}}) {{msg}}")
}

/// One command's progress display, and its way of reporting lines that must not collide with it.
pub struct Progress {
    bar: ProgressBar,
    /// Whether anything is drawn, decided once: asking the bar takes its lock, and `publish`
    /// asks for every entry it reads.
    drawn: bool,
    next_status: Instant,
}

impl Progress {
    /// A spinner with a status line, for work of unknown size (a stream being read).
    /// `draw: false` never draws, even on a terminal.
    pub fn counting(draw: bool) -> Progress {
        let bar = ProgressBar::with_draw_target(None, target(draw));
        bar.set_style(style(COUNTING, ProgressStyle::default_spinner()));
        bar.enable_steady_tick(Duration::from_millis(200));
        Progress::of(bar)
    }

    /// A bar towards `total` units, each called `unit` in the display.
    pub fn towards(total: u64, unit: &str, draw: bool) -> Progress {
        let bar = ProgressBar::with_draw_target(Some(total), target(draw));
        bar.set_style(style(&towards_template(unit), ProgressStyle::default_bar()));
        Progress::of(bar)
    }

    fn of(bar: ProgressBar) -> Progress {
        Progress {
            drawn: !bar.is_hidden(),
            bar,
            next_status: Instant::now(),
        }
    }

    /// Whether a new status line is due; callers format their counts only then.
    pub fn status_due(&mut self) -> bool {
        if !self.drawn {
            return false;
        }
        let now = Instant::now();
        if now < self.next_status {
            return false;
        }
        self.next_status = now + STATUS_EVERY;
        true
    }

    pub fn status(&self, text: impl Into<Cow<'static, str>>) {
        self.bar.set_message(text);
    }

    pub fn set_position(&self, done: u64) {
        self.bar.set_position(done);
    }

    /// A line on stderr, printed above the progress display (or alone when nothing is drawn).
    pub fn line(&self, text: &str) {
        self.bar.suspend(|| eprintln!("{text}"));
    }

    /// Takes the display off the terminal; the command's own summary follows.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

fn target(draw: bool) -> ProgressDrawTarget {
    if draw {
        // Hidden by indicatif itself when stderr is not a terminal.
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    }
}

/// The style a template gives, or `fallback` should the template not parse (it is fixed text,
/// so that would be a bug, not a reason to stop the command).
fn style(template: &str, fallback: ProgressStyle) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or(fallback)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_templates_parse() {
        assert!(ProgressStyle::with_template(COUNTING).is_ok());
        assert!(ProgressStyle::with_template(&towards_template("messages")).is_ok());
    }

    #[test]
    fn nothing_is_drawn_when_drawing_is_off() {
        let mut progress = Progress::counting(false);
        assert!(progress.bar.is_hidden());
        assert!(
            !progress.status_due(),
            "no status is formatted for a hidden display"
        );
        progress.line("a reported line still reaches stderr");
        progress.finish();
    }
}
