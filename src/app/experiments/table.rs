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
    }
}
