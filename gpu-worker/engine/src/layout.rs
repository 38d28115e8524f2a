//! Reading order: a recursive XY-cut that reads multi-column prose column by column but reads
//! receipts and forms (label … value) row by row.

use crate::geometry::{Quad, quad_side_lengths};

#[derive(Debug, Clone, Copy)]
struct Item {
    idx: usize,
    x0: f32,
    x1: f32,
    y0: f32,
    y1: f32,
    /// Text height in pixels.
    h: f32,
    /// Width / height of the text line.
    aspect: f32,
}

/// Returns the indices of `quads` in the order a person reads them.
///
/// Boxes are shrunk to their core first: detection grows each box by a margin about as large as
/// the text height, which would otherwise make neighbouring rows overlap.
pub fn reading_order(quads: &[Quad]) -> Vec<usize> {
    let items: Vec<Item> = quads
        .iter()
        .enumerate()
        .map(|(idx, q)| {
            let (w, h) = quad_side_lengths(q);
            let cx = q.iter().map(|p| p[0]).sum::<f32>() / 4.0;
            let cy = q.iter().map(|p| p[1]).sum::<f32>() / 4.0;
            // Projected extents of the (possibly tilted) box, shrunk by the detector's margin.
            let xs = q.iter().map(|p| p[0]);
            let xw = xs.clone().fold(f32::MIN, f32::max) - xs.fold(f32::MAX, f32::min);
            let core_h = h * 0.5;
            let core_w = (xw - h * 0.5).max(xw * 0.5);
            Item {
                idx,
                x0: cx - core_w / 2.0,
                x1: cx + core_w / 2.0,
                y0: cy - core_h / 2.0,
                y1: cy + core_h / 2.0,
                h: core_h.max(1.0),
                aspect: w / h.max(1.0),
            }
        })
        .collect();
    let mut out = Vec::with_capacity(quads.len());
    xy_cut(items, &mut out, 0);
    out
}

/// Widest gap `(width, cut position)` in the projection of intervals, if any.
fn widest_gap(mut iv: Vec<(f32, f32)>) -> Option<(f32, f32)> {
    iv.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut end = iv.first()?.1;
    let mut best: Option<(f32, f32)> = None;
    for &(s, e) in &iv[1..] {
        if s > end {
            let w = s - end;
            if best.is_none_or(|(bw, _)| w > bw) {
                best = Some((w, (s + end) / 2.0));
            }
        }
        end = end.max(e);
    }
    best
}

fn median(mut v: Vec<f32>) -> f32 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f32::total_cmp);
    v[v.len() / 2]
}

fn y_overlap(a: &Item, b: &Item) -> f32 {
    (a.y1.min(b.y1) - a.y0.max(b.y0)).max(0.0)
}

/// Whether two sides of a vertical cut are separate text columns (read one after the other)
/// rather than the label and value sides of table rows (read row by row).
fn is_column_split(left: &[Item], right: &[Item]) -> bool {
    if left.len() < 2 || right.len() < 2 {
        return false;
    }
    // Prose columns: long lines on both sides.
    let prose = median(left.iter().map(|i| i.aspect).collect()) >= 6.0
        && median(right.iter().map(|i| i.aspect).collect()) >= 6.0;
    // Rows of a table pair up across the cut; independent columns mostly do not.
    let (small, big) = if left.len() <= right.len() { (left, right) } else { (right, left) };
    let paired = small.iter().filter(|a| big.iter().any(|b| y_overlap(a, b) > 0.5 * a.h.min(b.h))).count();
    prose || (paired as f32) < 0.3 * small.len() as f32
}

fn xy_cut(items: Vec<Item>, out: &mut Vec<usize>, depth: usize) {
    if items.len() <= 1 || depth > 64 {
        leaf_order(items, out);
        return;
    }
    let med_h = median(items.iter().map(|i| i.h).collect());
    let h_gap = widest_gap(items.iter().map(|i| (i.y0, i.y1)).collect());
    let v_gap = widest_gap(items.iter().map(|i| (i.x0, i.x1)).collect()).filter(|&(w, _)| w >= 0.5 * med_h);
    let split_v = |cut: f32| -> (Vec<Item>, Vec<Item>) { items.iter().partition(|i| (i.x0 + i.x1) / 2.0 < cut) };
    let split_h = |cut: f32| -> (Vec<Item>, Vec<Item>) { items.iter().partition(|i| (i.y0 + i.y1) / 2.0 < cut) };
    if let Some((vw, vcut)) = v_gap {
        let (l, r) = split_v(vcut);
        let columns = is_column_split(&l, &r);
        if h_gap.is_none() || (columns && h_gap.is_some_and(|(hw, _)| vw > hw)) {
            xy_cut(l, out, depth + 1);
            xy_cut(r, out, depth + 1);
            return;
        }
    }
    if v_gap.is_none()
        && let Some((vw, l, r, straddling)) = blocked_column_cut(&items, med_h)
        && h_gap.is_none_or(|(hw, _)| vw > hw)
    {
        // Two prose columns whose gutter is crossed by a few boxes (a caption or a figure label
        // set across it): read the columns, then the crossing boxes.
        xy_cut(l, out, depth + 1);
        xy_cut(r, out, depth + 1);
        leaf_order(straddling, out);
        return;
    }
    if let Some((_, hcut)) = h_gap {
        let (t, b) = split_h(hcut);
        xy_cut(t, out, depth + 1);
        xy_cut(b, out, depth + 1);
        return;
    }
    leaf_order(items, out);
}

/// A vertical cut through the middle 60% of the region crossed by at most 10% of the boxes (at
/// least one), with prose columns on both sides, each at least half the region's height.
/// Returns `(gutter width, left, right, crossing boxes)`.
#[allow(clippy::type_complexity)]
fn blocked_column_cut(items: &[Item], med_h: f32) -> Option<(f32, Vec<Item>, Vec<Item>, Vec<Item>)> {
    if items.len() < 8 {
        return None;
    }
    let x_min = items.iter().map(|i| i.x0).fold(f32::MAX, f32::min);
    let x_max = items.iter().map(|i| i.x1).fold(f32::MIN, f32::max);
    let y_min = items.iter().map(|i| i.y0).fold(f32::MAX, f32::min);
    let y_max = items.iter().map(|i| i.y1).fold(f32::MIN, f32::max);
    let width = x_max - x_min;
    let allowed = ((items.len() as f32 * 0.1) as usize).max(1);
    let mut best: Option<(usize, f32)> = None;
    for k in 20..=80 {
        let x = x_min + width * k as f32 / 100.0;
        let cover = items.iter().filter(|i| i.x0 < x && i.x1 > x).count();
        if cover <= allowed && best.is_none_or(|(c, _)| cover < c) {
            best = Some((cover, x));
        }
    }
    let (_, x) = best?;
    let (mut l, mut r, mut s) = (Vec::new(), Vec::new(), Vec::new());
    for i in items {
        if i.x1 <= x {
            l.push(*i);
        } else if i.x0 >= x {
            r.push(*i);
        } else {
            s.push(*i);
        }
    }
    let gutter = r.iter().map(|i| i.x0).fold(f32::MAX, f32::min) - l.iter().map(|i| i.x1).fold(f32::MIN, f32::max);
    let tall = |v: &[Item]| {
        let top = v.iter().map(|i| i.y0).fold(f32::MAX, f32::min);
        let bottom = v.iter().map(|i| i.y1).fold(f32::MIN, f32::max);
        bottom - top >= 0.5 * (y_max - y_min)
    };
    let prose = |v: &[Item]| median(v.iter().map(|i| i.aspect).collect()) >= 6.0;
    (l.len() >= 3 && r.len() >= 3 && gutter >= 0.5 * med_h && tall(&l) && tall(&r) && prose(&l) && prose(&r))
        .then_some((gutter, l, r, s))
}

/// Overlapping boxes with no clean cut: cluster into rows by vertical centre, then left to right.
fn leaf_order(mut items: Vec<Item>, out: &mut Vec<usize>) {
    items.sort_by(|a, b| (a.y0 + a.y1).total_cmp(&(b.y0 + b.y1)));
    let mut rows: Vec<Vec<Item>> = Vec::new();
    for it in items {
        let cy = (it.y0 + it.y1) / 2.0;
        match rows.last_mut() {
            Some(row) if row.iter().any(|r| (cy - (r.y0 + r.y1) / 2.0).abs() < 0.5 * r.h.max(it.h)) => row.push(it),
            _ => rows.push(vec![it]),
        }
    }
    for mut row in rows {
        row.sort_by(|a, b| a.x0.total_cmp(&b.x0));
        out.extend(row.iter().map(|i| i.idx));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rect(x0: f32, y0: f32, x1: f32, y1: f32) -> Quad {
        [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]
    }

    #[test]
    fn receipt_rows_read_label_then_value() {
        // label ...... value, three rows, boxes grown by detection so rows touch.
        let q = vec![
            rect(10.0, 90.0, 300.0, 130.0),  // row 2 label
            rect(500.0, 50.0, 560.0, 90.0),  // row 1 value
            rect(10.0, 50.0, 280.0, 90.0),   // row 1 label
            rect(500.0, 90.0, 560.0, 130.0), // row 2 value
            rect(100.0, 0.0, 460.0, 40.0),   // centred title
        ];
        assert_eq!(reading_order(&q), vec![4, 2, 1, 0, 3]);
    }

    #[test]
    fn prose_columns_read_one_after_the_other() {
        let mut q = vec![rect(0.0, 0.0, 1000.0, 60.0)]; // title across both columns
        for r in 0..4 {
            let y = 100.0 + r as f32 * 40.0;
            q.push(rect(0.0, y, 480.0, y + 40.0));
        }
        for r in 0..4 {
            let y = 100.0 + r as f32 * 40.0;
            q.push(rect(520.0, y, 1000.0, y + 40.0));
        }
        assert_eq!(reading_order(&q), vec![0, 1, 2, 3, 4, 5, 6, 7, 8]);
    }

    #[test]
    fn a_caption_across_the_gutter_does_not_merge_columns() {
        let mut q = Vec::new();
        for r in 0..6 {
            let y = r as f32 * 40.0;
            q.push(rect(0.0, y, 480.0, y + 40.0));
        }
        for r in 0..6 {
            let y = r as f32 * 40.0;
            q.push(rect(520.0, y, 1000.0, y + 40.0));
        }
        q.push(rect(400.0, 100.0, 600.0, 130.0)); // caption over the gutter
        assert_eq!(reading_order(&q), vec![0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
    }

    #[test]
    fn empty_and_single() {
        assert!(reading_order(&[]).is_empty());
        assert_eq!(reading_order(&[rect(0.0, 0.0, 10.0, 10.0)]), vec![0]);
    }
}
