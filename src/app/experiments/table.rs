//! Plain-text tables, as the sweep's `table.txt` and the benchmark print them.

/// Pads every cell of `rows` (header included) on the right to its column's width in characters;
/// returns the widths and the padded rows.
pub fn pad_columns(rows: &[Vec<String>]) -> (Vec<usize>, Vec<Vec<String>>) {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let padded = rows
        .iter()
        .map(|r| {
            r.iter()
                .zip(&widths)
                .map(|(cell, w)| format!("{cell:<w$}"))
                .collect()
        })
        .collect();
    (widths, padded)
}

/// `rows` (the first is the header) as a Markdown table, columns padded.
pub fn markdown(rows: &[Vec<String>]) -> String {
    let (widths, padded) = pad_columns(rows);
    let mut out = String::new();
    for (i, cells) in padded.iter().enumerate() {
        out.push_str(&format!("| {} |\n", cells.join(" | ")));
        if i == 0 {
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(w + 2)).collect();
            out.push_str(&format!("|{}|\n", rule.join("|")));
        }
    }
    out
}

/// Prints `rows` as a Markdown table.
pub fn print_markdown(rows: &[Vec<String>]) {
    print!("{}", markdown(rows));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_padded_to_their_widest_cell_in_characters() {
        let rows = vec![
            vec!["δV".to_string(), "x".to_string()],
            vec!["-0.1".to_string(), "0.925".to_string()],
        ];
        let (widths, padded) = pad_columns(&rows);
        assert_eq!(widths, vec![4, 5]);
        assert_eq!(padded[0], vec!["δV  ", "x    "]);
        assert_eq!(padded[1], vec!["-0.1", "0.925"]);
        assert_eq!(
            markdown(&rows),
            "| δV   | x     |\n|------|-------|\n| -0.1 | 0.925 |\n"
        );
    }
}
