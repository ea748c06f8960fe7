//! `ctscope diagnose`'s and `timeouts`' findings as text: a header per namespace, then
//! one plain key=value block per finding.

use crate::diagnose::{Evidence, Finding};

/// `netns=INODE (NAMES) entries=N max=M dumped=D`: what a namespace's report is about.
pub fn header(ev: &Evidence) -> String {
    let names = if ev.names.is_empty() {
        String::new()
    } else {
        format!(" ({})", ev.names.join(","))
    };
    format!(
        "netns={}{names} entries={} max={} dumped={}\n",
        ev.netns,
        ev.count(),
        ev.max(),
        ev.table.dumped
    )
}

/// `[SEVERITY] id netns=N`, the summary, `evidence: k=v ...`, `recommendation: ...`.
pub fn block(f: &Finding) -> String {
    let evidence: Vec<String> = f
        .evidence
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    format!(
        "\n[{}] {} netns={}\n  {}\n  evidence: {}\n  recommendation: {}\n",
        f.severity.name().to_uppercase(),
        f.id,
        f.netns,
        f.summary,
        evidence.join(" "),
        f.recommendation
    )
}

#[cfg(test)]
#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::diagnose::Severity;

    #[test]
    fn block_is_plain_key_value_text() {
        let f = Finding {
            id: "table_full",
            severity: Severity::Crit,
            netns: 9,
            summary: "full".into(),
            evidence: json!({"drop": 3, "count": 8}),
            recommendation: "raise it".into(),
        };
        assert_eq!(
            block(&f),
            "\n[CRIT] table_full netns=9\n  full\n  evidence: count=8 drop=3\n  \
             recommendation: raise it\n"
        );
    }
}
