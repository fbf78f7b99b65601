//! Routing: which destinations take a message, from MSH-9 and MSH-3..6 patterns.

use crate::config::FilterConfig;

/// The header fields routing looks at, as text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Header {
    /// MSH-9 as `CODE^TRIGGER` (`ADT^A01`; `ADT` when there is no trigger).
    pub message_type: String,
    /// MSH-3.
    pub sending_application: String,
    /// MSH-4.
    pub sending_facility: String,
    /// MSH-5.
    pub receiving_application: String,
    /// MSH-6.
    pub receiving_facility: String,
}

/// A compiled destination filter.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    lists: [Vec<String>; 5],
}

impl Filter {
    /// From the configuration.
    pub fn new(config: &FilterConfig) -> Filter {
        Filter {
            lists: [
                config.message_type.clone(),
                config.sending_application.clone(),
                config.sending_facility.clone(),
                config.receiving_application.clone(),
                config.receiving_facility.clone(),
            ],
        }
    }

    /// Whether the message passes: every non-empty list has a matching pattern.
    pub fn accepts(&self, h: &Header) -> bool {
        let values = [
            &h.message_type,
            &h.sending_application,
            &h.sending_facility,
            &h.receiving_application,
            &h.receiving_facility,
        ];
        self.lists
            .iter()
            .zip(values)
            .all(|(patterns, value)| patterns.is_empty() || patterns.iter().any(|p| glob(p, value)))
    }
}

/// `*` matches any run of characters, `?` one character; everything else itself.
pub fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    // Iterative matcher with one backtrack point: linear in practice, no recursion.
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("ADT^A0*", "ADT^A01"));
        assert!(glob("*", ""));
        assert!(glob("ORU^R0?", "ORU^R01"));
        assert!(!glob("ORU^R0?", "ORU^R011"));
        assert!(glob("*LAB*", "MAIN-LAB-2"));
        assert!(!glob("ADT^A01", "ADT^A011"));
        assert!(glob("a*b*c", "aXXbYYc"));
        assert!(!glob("a*b*c", "aXXbYY"));
    }

    #[test]
    fn filters_need_every_list() {
        let f = Filter::new(&FilterConfig {
            message_type: vec!["ADT^*".into()],
            sending_facility: vec!["HOSP?".into(), "CLINIC".into()],
            ..FilterConfig::default()
        });
        let mut h = Header {
            message_type: "ADT^A08".into(),
            sending_facility: "HOSP1".into(),
            ..Header::default()
        };
        assert!(f.accepts(&h));
        h.sending_facility = "LAB".into();
        assert!(!f.accepts(&h));
        assert!(Filter::default().accepts(&h));
    }
}
