//! The terminal view of `ctscope watch` (ratatui): a header with the tier, the table fill
//! per namespace, the rates, and the latest notable events. `q`, Esc or Ctrl-C quits
//! (the terminal is in raw mode, so Ctrl-C arrives as a key, not a signal).

use std::{io, time::Duration};

use ratatui::{
    DefaultTerminal, Frame,
    crossterm::event::{self, Event, KeyCode, KeyModifiers},
    layout::{Constraint, Layout},
    style::{Modifier, Style},
    text::Line,
    widgets::{Block, Paragraph, Row, Table, Wrap},
};

use super::view::Snapshot;

pub struct Tui {
    terminal: DefaultTerminal,
}

impl Tui {
    /// Takes over the terminal (alternate screen, raw mode) until dropped.
    pub fn start() -> Self {
        Tui {
            terminal: ratatui::init(),
        }
    }

    pub fn draw(&mut self, s: &Snapshot) -> io::Result<()> {
        self.terminal.draw(|f| frame(f, s)).map(drop)
    }

    /// True when a quit key is waiting; never blocks.
    pub fn quit_requested(&self) -> bool {
        while event::poll(Duration::ZERO).unwrap_or(false) {
            if let Ok(Event::Key(k)) = event::read() {
                let ctrl_c =
                    k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL);
                if ctrl_c || matches!(k.code, KeyCode::Char('q') | KeyCode::Esc) {
                    return true;
                }
            }
        }
        false
    }
}

impl Drop for Tui {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

fn frame(f: &mut Frame, s: &Snapshot) {
    let ns_height = s.namespaces.len().min(12) as u16 + 3;
    let [head, table, rates, recent] = Layout::vertical([
        Constraint::Length(4),
        Constraint::Length(ns_height),
        Constraint::Length(4),
        Constraint::Min(3),
    ])
    .areas(f.area());
    let title = format!(
        " ctscope watch · tier {} · {} entries · q quits ",
        s.tier, s.entries
    );
    f.render_widget(
        Paragraph::new(format!("sees: {}", s.sees))
            .wrap(Wrap { trim: true })
            .block(Block::bordered().title(title)),
        head,
    );
    f.render_widget(namespaces(s), table);
    f.render_widget(
        Paragraph::new(vec![rate_line(s), totals_line(s)])
            .block(Block::bordered().title(" per second ")),
        rates,
    );
    let lines: Vec<Line> = s
        .recent
        .iter()
        .rev()
        .map(|l| Line::from(l.as_str()))
        .collect();
    f.render_widget(
        Paragraph::new(lines)
            .block(Block::bordered().title(" latest insert_failed, table_full, early_drop, lost ")),
        recent,
    );
}

fn namespaces(s: &Snapshot) -> Table<'static> {
    let max = s.max.map_or("-".to_owned(), |m| m.to_string());
    let rows = s.namespaces.iter().map(|n| {
        let fill = n
            .fill
            .map_or("-".to_owned(), |f| format!("{:.1}%", f * 100.0));
        Row::new([
            n.netns.to_string(),
            n.who.clone(),
            n.entries.to_string(),
            max.clone(),
            fill,
        ])
    });
    let widths = [
        Constraint::Length(12),
        Constraint::Min(16),
        Constraint::Length(10),
        Constraint::Length(10),
        Constraint::Length(8),
    ];
    Table::new(rows, widths)
        .header(
            Row::new(["netns", "who", "entries", "max", "fill"])
                .style(Style::new().add_modifier(Modifier::BOLD)),
        )
        .block(Block::bordered().title(" table fill "))
}

fn rate_line(s: &Snapshot) -> Line<'static> {
    let parts: Vec<String> = s.rates.iter().map(|(k, r)| format!("{k} {r:.0}")).collect();
    Line::from(parts.join("   "))
}

fn totals_line(s: &Snapshot) -> Line<'static> {
    Line::from(format!(
        "lost {} (reseeds {}) · dumps {} (corrected +{} -{})",
        s.lost, s.reseeds, s.dumps, s.corrected.0, s.corrected.1
    ))
}
