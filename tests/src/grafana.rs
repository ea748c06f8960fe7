//! The queries of a Grafana dashboard (its JSON model), with Grafana's variables given
//! the values a query against Prometheus' HTTP API can take: each templating variable
//! its "All" value, and the interval macros a fixed range. Panel targets are PromQL;
//! query variables are `label_values(SELECTOR, LABEL)`, which Prometheus answers at
//! `/api/v1/label/LABEL/values?match[]=SELECTOR`.

use serde_json::Value;

/// One target of one panel.
#[derive(Clone, Debug, PartialEq)]
pub struct Query {
    pub panel: String,
    pub ref_id: String,
    /// The target's `expr` with every variable replaced.
    pub expr: String,
}

/// Grafana's interval macros, all given `range`.
const INTERVAL_MACROS: [&str; 3] = ["__rate_interval", "__interval", "__range"];

/// Every panel target's query in `dashboard`, rows' nested panels included, with the
/// variables replaced (`range` for the interval macros). Errors name the panel: a panel
/// without targets, a target without `expr`, a variable left unreplaced.
pub fn queries(dashboard: &Value, range: &str) -> Result<Vec<Query>, String> {
    let values = variable_values(dashboard, range)?;
    let mut out = Vec::new();
    for panel in panels(dashboard) {
        let title = panel["title"].as_str().unwrap_or("(untitled)").to_owned();
        let targets = panel["targets"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        if targets.is_empty() {
            return Err(format!("panel {title:?} has no targets"));
        }
        for t in targets {
            let ref_id = t["refId"].as_str().unwrap_or("?").to_owned();
            let expr = t["expr"]
                .as_str()
                .ok_or_else(|| format!("panel {title:?} target {ref_id}: no expr"))?;
            let expr = substitute(expr, &values);
            if let Some(at) = expr.find('$') {
                return Err(format!(
                    "panel {title:?} target {ref_id}: unknown variable at {:?} in {expr}",
                    &expr[at..]
                ));
            }
            out.push(Query {
                panel: title.clone(),
                ref_id,
                expr,
            });
        }
    }
    Ok(out)
}

/// A query variable's `label_values(SELECTOR, LABEL)`, other variables replaced.
#[derive(Clone, Debug, PartialEq)]
pub struct LabelValues {
    pub variable: String,
    pub label: String,
    /// `None` for `label_values(LABEL)`: every series.
    pub selector: Option<String>,
}

/// Every query variable's `label_values` call. Errors name the variable: another kind of
/// query, or a variable left unreplaced.
pub fn variable_queries(dashboard: &Value, range: &str) -> Result<Vec<LabelValues>, String> {
    let values = variable_values(dashboard, range)?;
    let mut out = Vec::new();
    for v in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if v["type"] != "query" {
            continue;
        }
        let name = v["name"].as_str().unwrap_or("?").to_owned();
        // Grafana 9+ keeps the query in an object, older versions as a string.
        let query = v["query"]["query"].as_str().or(v["query"].as_str());
        let args = query
            .and_then(|q| q.trim().strip_prefix("label_values("))
            .and_then(|q| q.strip_suffix(')'))
            .ok_or_else(|| {
                format!("variable {name:?}: not a label_values(...) query: {query:?}")
            })?;
        let args = substitute(args, &values);
        if args.contains('$') {
            return Err(format!("variable {name:?}: unknown variable in {args}"));
        }
        let (selector, label) = match args.rsplit_once(',') {
            Some((sel, label)) => (Some(sel.trim().to_owned()), label.trim().to_owned()),
            None => (None, args.trim().to_owned()),
        };
        out.push(LabelValues {
            variable: name,
            label,
            selector,
        });
    }
    Ok(out)
}

/// The panels that show data: every panel but rows, with the panels of collapsed rows.
pub fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().into_iter().flatten() {
        if p["type"] == "row" {
            out.extend(p["panels"].as_array().into_iter().flatten());
        } else {
            out.push(p);
        }
    }
    out
}

/// Each variable's name and value: query variables their `allValue`, the interval macros
/// `range`. Longest names first, so `$instance` is not taken for `$inst` + "ance".
fn variable_values(dashboard: &Value, range: &str) -> Result<Vec<(String, String)>, String> {
    let mut values: Vec<(String, String)> = INTERVAL_MACROS
        .iter()
        .map(|m| (m.to_string(), range.to_owned()))
        .collect();
    for v in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let name = v["name"]
            .as_str()
            .ok_or("a templating variable has no name")?;
        if v["type"] == "datasource" {
            continue; // Chooses where queries go, never appears in one.
        }
        let all = v["allValue"].as_str().ok_or_else(|| {
            format!("variable {name:?} has no allValue (a regex every value matches, e.g. .*)")
        })?;
        values.push((name.to_owned(), all.to_owned()));
    }
    values.sort_by_key(|(n, _)| std::cmp::Reverse(n.len()));
    Ok(values)
}

/// `expr` with `${name}` and `$name` replaced by their values.
fn substitute(expr: &str, values: &[(String, String)]) -> String {
    let mut out = expr.to_owned();
    for (name, value) in values {
        out = out
            .replace(&format!("${{{name}}}"), value)
            .replace(&format!("${name}"), value);
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn dashboard(expr: &str) -> Value {
        json!({
            "templating": {"list": [
                {"name": "datasource", "type": "datasource"},
                {"name": "inst", "type": "query", "allValue": "a.*",
                 "query": {"query": "label_values(job)"}},
                {"name": "instance", "type": "query", "allValue": ".*",
                 "query": "label_values(up{job=~\"$inst\"}, instance)"},
            ]},
            "panels": [
                {"type": "row", "title": "r", "panels": [
                    {"title": "nested", "targets": [{"refId": "A", "expr": "up"}]},
                ]},
                {"title": "p", "targets": [{"refId": "B", "expr": expr}]},
            ],
        })
    }

    #[test]
    fn variables_and_macros_are_replaced() {
        let d = dashboard(r#"rate(x{i=~"$instance",j=~"${inst}"}[$__rate_interval])"#);
        let q = queries(&d, "1m").unwrap();
        assert_eq!(q.len(), 2, "the row's nested panel too: {q:?}");
        assert_eq!(q[0].panel, "nested");
        assert_eq!(q[1].expr, r#"rate(x{i=~".*",j=~"a.*"}[1m])"#);
    }

    #[test]
    fn an_unknown_variable_names_the_panel() {
        let e = queries(&dashboard("x{n=~\"$node\"}"), "1m").unwrap_err();
        assert!(e.contains("\"p\"") && e.contains("$node"), "{e}");
    }

    #[test]
    fn label_values_queries_are_split() {
        let q = variable_queries(&dashboard("up"), "1m").unwrap();
        let want = [
            LabelValues {
                variable: "inst".into(),
                label: "job".into(),
                selector: None,
            },
            LabelValues {
                variable: "instance".into(),
                label: "instance".into(),
                selector: Some(r#"up{job=~"a.*"}"#.into()),
            },
        ];
        assert_eq!(q, want);
    }
}
