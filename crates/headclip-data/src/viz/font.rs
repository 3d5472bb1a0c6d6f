//! A 3×5 bitmap font for the few characters an overlay prints (a score, OK / NG). Fourteen
//! glyphs are fourteen constants; a font crate would bring a TrueType file and a rasteriser.

/// Glyph width and height in font pixels.
pub const GLYPH_W: usize = 3;
pub const GLYPH_H: usize = 5;

/// Five rows of three bits (the left pixel is the high bit); `None` for a character the font
/// lacks.
pub fn glyph(c: char) -> Option<[u8; GLYPH_H]> {
    Some(match c {
        '0' => [0b111, 0b101, 0b101, 0b101, 0b111],
        '1' => [0b010, 0b110, 0b010, 0b010, 0b111],
        '2' => [0b111, 0b001, 0b111, 0b100, 0b111],
        '3' => [0b111, 0b001, 0b111, 0b001, 0b111],
        '4' => [0b101, 0b101, 0b111, 0b001, 0b001],
        '5' => [0b111, 0b100, 0b111, 0b001, 0b111],
        '6' => [0b111, 0b100, 0b111, 0b101, 0b111],
        '7' => [0b111, 0b001, 0b001, 0b001, 0b001],
        '8' => [0b111, 0b101, 0b111, 0b101, 0b111],
        '9' => [0b111, 0b101, 0b111, 0b001, 0b111],
        '.' => [0b000, 0b000, 0b000, 0b000, 0b010],
        '-' => [0b000, 0b000, 0b111, 0b000, 0b000],
        'O' => [0b010, 0b101, 0b101, 0b101, 0b010],
        'K' => [0b101, 0b101, 0b110, 0b101, 0b101],
        'N' => [0b101, 0b111, 0b111, 0b101, 0b101],
        'G' => [0b011, 0b100, 0b101, 0b101, 0b011],
        ' ' => [0; GLYPH_H],
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_printed_character_has_a_glyph() {
        for c in "0123456789.- OKNG".chars() {
            assert!(glyph(c).is_some(), "{c:?}");
        }
        assert_eq!(glyph('x'), None);
    }
}
