//! Linear sum assignment (minimum-cost matching of a dense rectangular matrix).
//!
//! Shortest augmenting path algorithm of Jonker-Volgenant type without initialization,
//! following the pseudocode of D. F. Crouse, "On implementing 2D rectangular assignment
//! algorithms", IEEE Trans. Aerospace and Electronic Systems 52(4), 2016, pp. 1685-1686.
//! This is the algorithm behind `scipy.optimize.linear_sum_assignment`, which the
//! reference tracker calls; the scan order and tie-breaking rules below are chosen so that
//! the same optimum is returned when several exist (columns scanned from the last to the
//! first, an unassigned column preferred among equal reduced costs, a tall matrix solved
//! transposed), which keeps track ids identical to the reference.

/// Minimum-cost assignment of a `rows x cols` row-major matrix of finite costs.
///
/// Every row is assigned when `rows <= cols`, every column otherwise. Returns
/// `(row, col)` pairs sorted by row. Returns an empty vector for an empty matrix, and
/// `None` when a cost is NaN or infinite (callers never pass such costs).
pub fn linear_sum_assignment(cost: &[f64], rows: usize, cols: usize) -> Option<Vec<(usize, usize)>> {
    if rows == 0 || cols == 0 {
        return Some(Vec::new());
    }
    if cost.len() != rows * cols || cost.iter().any(|c| !c.is_finite()) {
        return None;
    }
    if cols < rows {
        // Solve the transposed (wide) problem; its rows are our columns.
        let mut t = vec![0.0; rows * cols];
        for i in 0..rows {
            for j in 0..cols {
                t[j * rows + i] = cost[i * cols + j];
            }
        }
        let col4row = solve_wide(&t, cols, rows)?;
        let mut pairs: Vec<(usize, usize)> = col4row.iter().enumerate().map(|(c, &r)| (r, c)).collect();
        pairs.sort_unstable();
        Some(pairs)
    } else {
        let col4row = solve_wide(cost, rows, cols)?;
        Some(col4row.into_iter().enumerate().collect())
    }
}

const NONE: usize = usize::MAX;

/// `rows <= cols`: the column of every row.
fn solve_wide(cost: &[f64], rows: usize, cols: usize) -> Option<Vec<usize>> {
    let mut u = vec![0.0f64; rows];
    let mut v = vec![0.0f64; cols];
    let mut shortest = vec![f64::INFINITY; cols];
    let mut path = vec![NONE; cols];
    let mut col4row = vec![NONE; rows];
    let mut row4col = vec![NONE; cols];
    let mut sr = vec![false; rows];
    let mut sc = vec![false; cols];
    let mut remaining = vec![0usize; cols];

    for cur_row in 0..rows {
        // Dijkstra-like search for the shortest augmenting path from `cur_row`.
        for (it, r) in remaining.iter_mut().enumerate() {
            *r = cols - it - 1;
        }
        let mut num_remaining = cols;
        sr.fill(false);
        sc.fill(false);
        shortest.fill(f64::INFINITY);
        let mut min_val = 0.0f64;
        let mut i = cur_row;
        let sink = loop {
            let mut index = NONE;
            let mut lowest = f64::INFINITY;
            sr[i] = true;
            let row = &cost[i * cols..(i + 1) * cols];
            for (it, &j) in remaining[..num_remaining].iter().enumerate() {
                let r = min_val + row[j] - u[i] - v[j];
                if r < shortest[j] {
                    path[j] = i;
                    shortest[j] = r;
                }
                if shortest[j] < lowest || (shortest[j] == lowest && row4col[j] == NONE) {
                    lowest = shortest[j];
                    index = it;
                }
            }
            min_val = lowest;
            if index == NONE || !min_val.is_finite() {
                return None; // infeasible: cannot happen with finite costs
            }
            let j = remaining[index];
            if row4col[j] == NONE {
                sc[j] = true;
                break j;
            }
            i = row4col[j];
            sc[j] = true;
            num_remaining -= 1;
            remaining[index] = remaining[num_remaining];
        };

        // Update the dual variables.
        u[cur_row] += min_val;
        for (r, ur) in u.iter_mut().enumerate() {
            if sr[r] && r != cur_row {
                *ur += min_val - shortest[*col4row.get(r)?];
            }
        }
        for (j, vj) in v.iter_mut().enumerate() {
            if sc[j] {
                *vj -= min_val - shortest[j];
            }
        }

        // Augment along the path.
        let mut j = sink;
        loop {
            let r = *path.get(j)?;
            *row4col.get_mut(j)? = r;
            std::mem::swap(col4row.get_mut(r)?, &mut j);
            if r == cur_row {
                break;
            }
        }
    }
    Some(col4row)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn total(cost: &[f64], cols: usize, pairs: &[(usize, usize)]) -> f64 {
        pairs.iter().map(|&(r, c)| cost[r * cols + c]).sum()
    }

    /// Exhaustive minimum over all injective maps rows -> cols (rows <= cols).
    fn brute(cost: &[f64], rows: usize, cols: usize) -> f64 {
        fn rec(cost: &[f64], rows: usize, cols: usize, r: usize, used: &mut Vec<bool>) -> f64 {
            if r == rows {
                return 0.0;
            }
            let mut best = f64::INFINITY;
            for c in 0..cols {
                if !used[c] {
                    used[c] = true;
                    best = best.min(cost[r * cols + c] + rec(cost, rows, cols, r + 1, used));
                    used[c] = false;
                }
            }
            best
        }
        rec(cost, rows, cols, 0, &mut vec![false; cols])
    }

    #[test]
    fn scipy_docstring_example() {
        // scipy: cost = [[4, 1, 3], [2, 0, 5], [3, 2, 2]] -> col_ind = [1, 0, 2], total 5
        let cost = [4.0, 1.0, 3.0, 2.0, 0.0, 5.0, 3.0, 2.0, 2.0];
        let pairs = linear_sum_assignment(&cost, 3, 3).unwrap();
        assert_eq!(pairs, vec![(0, 1), (1, 0), (2, 2)]);
    }

    #[test]
    fn constant_matrix_gives_identity() {
        // scipy issue #11602: a constant square matrix is solved by the identity.
        let cost = [0.5; 16];
        let pairs = linear_sum_assignment(&cost, 4, 4).unwrap();
        assert_eq!(pairs, vec![(0, 0), (1, 1), (2, 2), (3, 3)]);
    }

    #[test]
    fn rectangular_both_ways() {
        // wide: 2 rows, 3 cols
        let cost = [1.0, 0.2, 0.9, 0.3, 0.1, 0.8];
        let pairs = linear_sum_assignment(&cost, 2, 3).unwrap();
        assert_eq!(pairs, vec![(0, 1), (1, 0)]);
        // tall: its transpose, 3 rows, 2 cols; pairs sorted by row
        let t = [1.0, 0.3, 0.2, 0.1, 0.9, 0.8];
        let pairs = linear_sum_assignment(&t, 3, 2).unwrap();
        assert_eq!(pairs, vec![(0, 1), (1, 0)]);
    }

    #[test]
    fn empty_and_invalid() {
        assert_eq!(linear_sum_assignment(&[], 0, 5), Some(vec![]));
        assert_eq!(linear_sum_assignment(&[], 3, 0), Some(vec![]));
        assert_eq!(linear_sum_assignment(&[1.0, f64::NAN], 1, 2), None);
        assert_eq!(linear_sum_assignment(&[1.0, f64::INFINITY], 1, 2), None);
        assert_eq!(linear_sum_assignment(&[1.0], 1, 2), None);
    }

    #[test]
    fn optimal_on_random_matrices() {
        // xorshift: deterministic, no dependency
        let mut s = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 11) as f64 / (1u64 << 53) as f64
        };
        for rows in 1..=5 {
            for cols in 1..=5 {
                for _ in 0..20 {
                    // few distinct values -> many ties
                    let cost: Vec<f64> = (0..rows * cols).map(|_| (next() * 4.0).floor() / 4.0).collect();
                    let pairs = linear_sum_assignment(&cost, rows, cols).unwrap();
                    assert_eq!(pairs.len(), rows.min(cols));
                    let mut rs: Vec<_> = pairs.iter().map(|p| p.0).collect();
                    let mut cs: Vec<_> = pairs.iter().map(|p| p.1).collect();
                    rs.dedup();
                    cs.sort_unstable();
                    cs.dedup();
                    assert_eq!(rs.len(), pairs.len(), "rows sorted and distinct");
                    assert_eq!(cs.len(), pairs.len(), "columns distinct");
                    let best = if rows <= cols {
                        brute(&cost, rows, cols)
                    } else {
                        let t: Vec<f64> = (0..rows * cols).map(|k| cost[(k % rows) * cols + k / rows]).collect();
                        brute(&t, cols, rows)
                    };
                    assert!((total(&cost, cols, &pairs) - best).abs() < 1e-9);
                }
            }
        }
    }
}
