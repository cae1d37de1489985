//! PNG plots with nothing to install: a small RGB raster (lines, axes, a
//! grid, tick labels in a built-in 3×5 pixel digit font) encoded as PNG
//! with flate2's zlib and a CRC-32 of its own.
//!
//! Why not plotters' bitmap backend: its text needs either system fonts
//! (`ttf`, font-kit and fontconfig) or a font file registered at run time
//! (`ab_glyph`), and it pulls in the `image` crate; the SVG plots already
//! carry the titles and axis names, so the PNGs only need the curves and
//! numbers on the axes, which a digit font draws.

use std::io::Write as _;

/// An RGB raster.
#[derive(Debug, Clone, PartialEq)]
pub struct Canvas {
    width: u32,
    height: u32,
    pixels: Vec<[u8; 3]>,
}

/// Colours of the series, in turn.
const PALETTE: [[u8; 3]; 8] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [23, 190, 207],
];

/// 3×5 glyphs (rows top to bottom, bit 2 = left column).
fn glyph(c: char) -> Option<[u8; 5]> {
    Some(match c {
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 7, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 1, 1, 1],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        '.' => [0, 0, 0, 0, 2],
        '-' => [0, 0, 7, 0, 0],
        'e' => [0, 7, 7, 4, 7],
        _ => return None,
    })
}

impl Canvas {
    /// A canvas filled with `background`.
    pub fn new(width: u32, height: u32, background: [u8; 3]) -> Self {
        Self {
            width,
            height,
            pixels: vec![background; width as usize * height as usize],
        }
    }

    fn set(&mut self, x: i64, y: i64, c: [u8; 3]) {
        if x >= 0 && y >= 0 && (x as u32) < self.width && (y as u32) < self.height {
            self.pixels[y as usize * self.width as usize + x as usize] = c;
        }
    }

    /// A line `thickness` pixels wide (Bresenham).
    pub fn line(&mut self, from: (i64, i64), to: (i64, i64), c: [u8; 3], thickness: i64) {
        let (mut x, mut y) = from;
        let (dx, dy) = ((to.0 - x).abs(), -(to.1 - y).abs());
        let (sx, sy) = (if x < to.0 { 1 } else { -1 }, if y < to.1 { 1 } else { -1 });
        let mut err = dx + dy;
        let half = thickness / 2;
        loop {
            for ox in -half..thickness - half {
                for oy in -half..thickness - half {
                    self.set(x + ox, y + oy, c);
                }
            }
            if (x, y) == to {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }

    /// `text` (digits, `.`, `-`, `e`) with its top-left corner at `at`,
    /// each font pixel `scale` pixels wide.
    pub fn text(&mut self, at: (i64, i64), text: &str, c: [u8; 3], scale: i64) {
        let mut x = at.0;
        for ch in text.chars() {
            if let Some(g) = glyph(ch) {
                for (row, bits) in g.iter().enumerate() {
                    for col in 0..3 {
                        if bits & (4 >> col) != 0 {
                            for sx in 0..scale {
                                for sy in 0..scale {
                                    self.set(
                                        x + col * scale + sx,
                                        at.1 + row as i64 * scale + sy,
                                        c,
                                    );
                                }
                            }
                        }
                    }
                }
            }
            x += 4 * scale;
        }
    }

    /// The image as a PNG file (8-bit RGB, no interlace).
    pub fn to_png(&self) -> Vec<u8> {
        let mut raw = Vec::with_capacity(self.pixels.len() * 3 + self.height as usize);
        for row in self.pixels.chunks(self.width.max(1) as usize) {
            raw.push(0); // filter: none
            for p in row {
                raw.extend_from_slice(p);
            }
        }
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        // Writing to a Vec cannot fail.
        let _ = z.write_all(&raw);
        let idat = z.finish().unwrap_or_default();
        let mut ihdr = Vec::with_capacity(13);
        ihdr.extend_from_slice(&self.width.to_be_bytes());
        ihdr.extend_from_slice(&self.height.to_be_bytes());
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
        let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
        for (kind, data) in [
            (b"IHDR", &ihdr[..]),
            (b"IDAT", &idat[..]),
            (b"IEND", &[][..]),
        ] {
            out.extend_from_slice(&(data.len() as u32).to_be_bytes());
            let start = out.len();
            out.extend_from_slice(kind);
            out.extend_from_slice(data);
            let crc = crc32(&out[start..]);
            out.extend_from_slice(&crc.to_be_bytes());
        }
        out
    }
}

/// CRC-32 (ISO 3309, as PNG wants).
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Ticks at 1, 2 or 5 × 10^k covering `lo..hi`, and the decimals to show.
fn ticks(lo: f64, hi: f64) -> (Vec<f64>, usize) {
    let span = (hi - lo).abs().max(1e-12);
    let raw = span / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let decimals = if step >= 1.0 {
        0
    } else {
        (-step.log10()).ceil() as usize
    };
    let mut v = Vec::new();
    let mut t = (lo / step).ceil() * step;
    while t <= hi + step * 1e-9 && v.len() < 50 {
        v.push(t);
        t += step;
    }
    (v, decimals)
}

/// A line chart of `series` (x, y points each) on `width × height`:
/// grid, axes, tick labels, one colour per series (`thickness` pixels).
pub fn line_chart(
    series: &[Vec<(f64, f64)>],
    (xlo, xhi): (f64, f64),
    (ylo, yhi): (f64, f64),
    (width, height): (u32, u32),
    thickness: i64,
) -> Canvas {
    let mut c = Canvas::new(width, height, [255, 255, 255]);
    let (left, right, top, bottom) = (74i64, 16i64, 16i64, 34i64);
    let (w, h) = (i64::from(width), i64::from(height));
    let (pw, ph) = ((w - left - right).max(1), (h - top - bottom).max(1));
    let xspan = (xhi - xlo).abs().max(1e-12);
    let yspan = (yhi - ylo).abs().max(1e-12);
    let px = |x: f64| left + ((x - xlo) / xspan * pw as f64).round() as i64;
    let py = |y: f64| top + ph - ((y - ylo) / yspan * ph as f64).round() as i64;
    let (grid, axis, label) = ([225, 225, 225], [60, 60, 60], [40, 40, 40]);
    let (xt, xd) = ticks(xlo, xhi);
    for x in xt {
        c.line((px(x), top), (px(x), top + ph), grid, 1);
        let s = format!("{x:.xd$}");
        c.text((px(x) - 4 * s.len() as i64, top + ph + 8), &s, label, 2);
    }
    let (yt, yd) = ticks(ylo, yhi);
    for y in yt {
        c.line((left, py(y)), (left + pw, py(y)), grid, 1);
        let s = format!("{y:.yd$}");
        c.text((left - 8 - 8 * s.len() as i64, py(y) - 5), &s, label, 2);
    }
    c.line((left, top), (left, top + ph), axis, 1);
    c.line((left, top + ph), (left + pw, top + ph), axis, 1);
    for (i, pts) in series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        for pair in pts.windows(2) {
            c.line(
                (px(pair[0].0), py(pair[0].1)),
                (px(pair[1].0), py(pair[1].1)),
                color,
                thickness,
            );
        }
        if let [only] = pts.as_slice() {
            c.line((px(only.0), py(only.1)), (px(only.0), py(only.1)), color, 3);
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;

    /// Decodes what [`Canvas::to_png`] writes: checks the signature, the
    /// chunk CRCs and IHDR; returns (width, height, RGB rows).
    pub(crate) fn decode(png: &[u8]) -> (u32, u32, Vec<u8>) {
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        let mut i = 8;
        let (mut w, mut h, mut idat) = (0, 0, Vec::new());
        while i < png.len() {
            let len = u32::from_be_bytes(png[i..i + 4].try_into().unwrap()) as usize;
            let kind = &png[i + 4..i + 8];
            let data = &png[i + 8..i + 8 + len];
            let crc = u32::from_be_bytes(png[i + 8 + len..i + 12 + len].try_into().unwrap());
            assert_eq!(crc, crc32(&png[i + 4..i + 8 + len]), "CRC of {kind:?}");
            match kind {
                b"IHDR" => {
                    w = u32::from_be_bytes(data[0..4].try_into().unwrap());
                    h = u32::from_be_bytes(data[4..8].try_into().unwrap());
                    assert_eq!(&data[8..], &[8, 2, 0, 0, 0]);
                }
                b"IDAT" => idat.extend_from_slice(data),
                _ => {}
            }
            i += 12 + len;
        }
        let mut raw = Vec::new();
        flate2::read::ZlibDecoder::new(&idat[..])
            .read_to_end(&mut raw)
            .unwrap();
        assert_eq!(raw.len(), h as usize * (1 + 3 * w as usize));
        (w, h, raw)
    }

    #[test]
    fn crc32_is_the_png_one() {
        // The CRC of "IEND" with no data, as in every PNG.
        assert_eq!(crc32(b"IEND"), 0xAE42_6082);
    }

    #[test]
    fn a_chart_encodes_to_a_png_that_decodes_with_its_lines() {
        let a: Vec<(f64, f64)> = (0..20).map(|i| (i as f64, (i as f64).sqrt())).collect();
        let b: Vec<(f64, f64)> = (0..20).map(|i| (i as f64, 4.0 - i as f64 / 5.0)).collect();
        let png = line_chart(&[a, b], (0.0, 19.0), (0.0, 4.5), (320, 200), 2).to_png();
        let (w, h, raw) = decode(&png);
        assert_eq!((w, h), (320, 200));
        let px: Vec<[u8; 3]> = raw
            .chunks(1 + 3 * w as usize)
            .flat_map(|row| row[1..].chunks(3).map(|p| [p[0], p[1], p[2]]))
            .collect();
        let count = |c: [u8; 3]| px.iter().filter(|p| **p == c).count();
        assert!(count(PALETTE[0]) > 200, "first series drawn");
        assert!(count(PALETTE[1]) > 200, "second series drawn");
        assert!(count([40, 40, 40]) > 100, "tick labels drawn");
        assert!(count([255, 255, 255]) > px.len() / 2, "mostly background");
    }

    #[test]
    fn ticks_are_round_numbers() {
        assert_eq!(
            ticks(0.0, 1.0),
            (vec![0.0, 0.2, 0.4, 0.6000000000000001, 0.8, 1.0], 1)
        );
        let (t, d) = ticks(0.0, 60.0);
        assert_eq!(
            (t.first().copied(), t.last().copied(), d),
            (Some(0.0), Some(60.0), 0)
        );
    }
}
