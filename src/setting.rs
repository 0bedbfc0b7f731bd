//! Settings given as a number or as `auto` (`--graph-rate`, `--graph-burst`,
//! `--runtime-threads`): one reading of the word and one wording of the error for all of them.

/// `Ok(None)` for `auto` (any case, spaces around ignored), `Ok(Some(n))` for what `number`
/// accepts, else an error naming `what` the number counts.
pub fn number_or_auto<T>(
    text: &str,
    what: &str,
    number: impl FnOnce(&str) -> Option<T>,
) -> Result<Option<T>, String> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("auto") {
        return Ok(None);
    }
    match number(text) {
        Some(value) => Ok(Some(value)),
        None => Err(format!(
            "{text:?} is neither a positive number of {what} nor `auto`"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::number_or_auto;

    #[test]
    fn auto_in_any_case_or_what_the_number_reader_takes() {
        let positive = |text: &str| text.parse::<u32>().ok().filter(|n| *n > 0);
        assert_eq!(number_or_auto(" AUTO ", "requests", positive), Ok(None));
        assert_eq!(number_or_auto(" 7", "requests", positive), Ok(Some(7)));
        assert_eq!(
            number_or_auto("0", "requests", positive),
            Err("\"0\" is neither a positive number of requests nor `auto`".to_owned())
        );
    }
}
