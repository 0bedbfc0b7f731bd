//! ISO 3166-1 alpha-2 codes for the free-text `countryOrRegion` Graph returns.
//!
//! Graph writes `US` in one record and `united states` in the next. The raw text is always kept;
//! this adds a code only when the text is recognisable: an alpha-2 code, or a common English
//! name or short form. Anything else stays uncoded rather than guessed.

/// (code, names in lowercase). The code itself is always accepted.
const COUNTRIES: &[(&str, &[&str])] = &[
    (
        "US",
        &[
            "united states",
            "united states of america",
            "usa",
            "u.s.a.",
            "u.s.",
            "america",
        ],
    ),
    (
        "GB",
        &[
            "united kingdom",
            "uk",
            "great britain",
            "england",
            "scotland",
            "wales",
            "northern ireland",
        ],
    ),
    ("CA", &["canada"]),
    ("AU", &["australia"]),
    ("NZ", &["new zealand"]),
    ("IE", &["ireland"]),
    ("DE", &["germany", "deutschland"]),
    ("FR", &["france"]),
    ("NL", &["netherlands", "the netherlands", "holland"]),
    ("BE", &["belgium"]),
    ("LU", &["luxembourg"]),
    ("CH", &["switzerland"]),
    ("AT", &["austria"]),
    ("IT", &["italy"]),
    ("ES", &["spain"]),
    ("PT", &["portugal"]),
    ("SE", &["sweden"]),
    ("NO", &["norway"]),
    ("DK", &["denmark"]),
    ("FI", &["finland"]),
    ("IS", &["iceland"]),
    ("PL", &["poland"]),
    ("CZ", &["czech republic", "czechia"]),
    ("SK", &["slovakia"]),
    ("HU", &["hungary"]),
    ("RO", &["romania"]),
    ("BG", &["bulgaria"]),
    ("GR", &["greece"]),
    ("UA", &["ukraine"]),
    ("BY", &["belarus"]),
    ("RU", &["russia", "russian federation"]),
    ("LT", &["lithuania"]),
    ("LV", &["latvia"]),
    ("EE", &["estonia"]),
    ("MD", &["moldova", "republic of moldova"]),
    ("RS", &["serbia"]),
    ("HR", &["croatia"]),
    ("SI", &["slovenia"]),
    ("TR", &["turkey", "turkiye", "türkiye"]),
    ("CY", &["cyprus"]),
    ("IL", &["israel"]),
    ("IR", &["iran", "islamic republic of iran"]),
    ("IQ", &["iraq"]),
    ("SA", &["saudi arabia"]),
    ("AE", &["united arab emirates", "uae"]),
    ("QA", &["qatar"]),
    ("EG", &["egypt"]),
    ("ZA", &["south africa"]),
    ("NG", &["nigeria"]),
    ("KE", &["kenya"]),
    ("MA", &["morocco"]),
    ("IN", &["india"]),
    ("PK", &["pakistan"]),
    ("BD", &["bangladesh"]),
    ("CN", &["china", "people's republic of china", "prc"]),
    ("HK", &["hong kong"]),
    ("TW", &["taiwan"]),
    ("JP", &["japan"]),
    (
        "KR",
        &[
            "south korea",
            "korea, republic of",
            "republic of korea",
            "korea",
        ],
    ),
    (
        "KP",
        &["north korea", "democratic people's republic of korea"],
    ),
    ("SG", &["singapore"]),
    ("MY", &["malaysia"]),
    ("ID", &["indonesia"]),
    ("TH", &["thailand"]),
    ("VN", &["vietnam", "viet nam"]),
    ("PH", &["philippines"]),
    ("KZ", &["kazakhstan"]),
    ("BR", &["brazil", "brasil"]),
    ("AR", &["argentina"]),
    ("CL", &["chile"]),
    ("CO", &["colombia"]),
    ("MX", &["mexico"]),
    ("PA", &["panama"]),
    ("BZ", &["belize"]),
    ("SC", &["seychelles"]),
    ("VG", &["british virgin islands", "virgin islands, british"]),
    ("KY", &["cayman islands"]),
    ("BS", &["bahamas"]),
];

/// The alpha-2 code for a free-text country, if it is recognisable.
pub fn iso_code(text: &str) -> Option<&'static str> {
    let folded = text.trim().trim_end_matches('.').to_lowercase();
    if folded.is_empty() {
        return None;
    }
    COUNTRIES.iter().find_map(|(code, names)| {
        (code.eq_ignore_ascii_case(&folded) || names.contains(&folded.as_str())).then_some(*code)
    })
}

#[cfg(test)]
mod tests {
    use super::iso_code;

    #[test]
    fn codes_and_names_both_map_to_the_same_code() {
        assert_eq!(iso_code("US"), Some("US"));
        assert_eq!(iso_code("united states"), Some("US"));
        assert_eq!(iso_code("  United States of America "), Some("US"));
        assert_eq!(iso_code("gb"), Some("GB"));
    }

    #[test]
    fn unknown_text_gets_no_code() {
        assert_eq!(iso_code("Atlantis"), None);
        assert_eq!(iso_code(""), None);
    }
}
