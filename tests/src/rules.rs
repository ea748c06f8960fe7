//! Prometheus rule files and their `promtool test rules` files, read as text (their
//! layout is ours: `- alert: NAME`; `alertname: NAME` followed by `exp_alerts:`): which
//! alerts a file defines, and whether the tests make each fire and stay quiet.

/// The names of the alerting rules in a rules file.
pub fn alert_names(rules: &str) -> Vec<String> {
    rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert:"))
        .map(|n| n.trim().to_owned())
        .collect()
}

/// Whether `tests` has an `alert_rule_test` for `alert` expecting alerts, and one
/// expecting none (`exp_alerts: []`).
pub fn tested(tests: &str, alert: &str) -> (bool, bool) {
    let lines: Vec<&str> = tests
        .lines()
        .map(|l| l.trim().trim_start_matches("- "))
        .collect();
    let mut fires = false;
    let mut quiet = false;
    for pair in lines.windows(2) {
        if pair[0].strip_prefix("alertname:").map(str::trim) == Some(alert) {
            match pair[1] {
                "exp_alerts: []" => quiet = true,
                "exp_alerts:" => fires = true,
                _ => {}
            }
        }
    }
    (fires, quiet)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tested_sees_firing_and_quiet_cases() {
        let tests = "alertname: A\n  exp_alerts: []\n- alertname: A\n  exp_alerts:\n    - x\n\
                     alertname: B\n  exp_alerts: []\n";
        assert_eq!(tested(tests, "A"), (true, true));
        assert_eq!(tested(tests, "B"), (false, true));
    }

    #[test]
    fn alert_names_skips_recording_rules() {
        assert_eq!(
            alert_names("  - alert: A\n  - record: r\n - alert: B"),
            ["A", "B"]
        );
    }
}
