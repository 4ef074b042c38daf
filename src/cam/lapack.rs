//! The first principal direction of a layer's values exactly as NumPy finds it, for
//! EigenCAM, EigenGradCAM and `eigen_smooth` (pytorch-grad-cam's `get_2d_projection`).
//!
//! A singular vector's sign is arbitrary, and the map keeps only the positive side of the
//! projection, so the sign decides the map. NumPy computes `np.linalg.svd` of float32 input
//! in float64 with LAPACK's `dgesdd` (its OpenBLAS bundles the reference LAPACK), and the
//! sign comes out of that routine's Householder steps. libtorch's MKL `dgesdd` picked the
//! other sign for 7 to 16 of 30 random matrices of some layer shapes; the reference
//! LAPACK (Debian's liblapack3, or the LAPACK inside Debian's OpenBLAS) agreed with NumPy on
//! all 240 (8 shapes). So the system's LAPACK is loaded at run time (`liblapack.so.3`,
//! with its own symbols bound first: libtorch exports MKL's under the same names).
//!
//! `dgesdd` first reduces a matrix much wider or taller than square to a square triangle
//! (LQ or QR, when the long side is at least 11/6 of the short); its first right singular
//! vector is then that of the triangle. Doing the reduction here and the SVD on the triangle
//! gives the same direction (checked on the same 240 matrices) at half the cost (about
//! 3 ms for 49 x 2048, a ResNet-50's layer4).

use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::{Mutex, OnceLock};

type Dgesdd = unsafe extern "C" fn(
    jobz: *const c_char,
    m: *const c_int,
    n: *const c_int,
    a: *mut f64,
    lda: *const c_int,
    s: *mut f64,
    u: *mut f64,
    ldu: *const c_int,
    vt: *mut f64,
    ldvt: *const c_int,
    work: *mut f64,
    lwork: *const c_int,
    iwork: *mut c_int,
    info: *mut c_int,
    jobz_len: usize,
);
/// `dgelqf` and `dgeqrf` share their signature.
type Factorise = unsafe extern "C" fn(
    m: *const c_int,
    n: *const c_int,
    a: *mut f64,
    lda: *const c_int,
    tau: *mut f64,
    work: *mut f64,
    lwork: *const c_int,
    info: *mut c_int,
);

struct Lapack {
    dgesdd: Dgesdd,
    dgelqf: Factorise,
    dgeqrf: Factorise,
}

/// Where the system's reference LAPACK may be (Debian's alternatives link first).
const LIBRARIES: [&CStr; 3] = [c"liblapack.so.3", c"libopenblas.so.0", c"liblapack.so"];

/// What to do when no LAPACK is found.
pub const MISSING: &str = "EigenCAM, EigenGradCAM and eigen_smooth need the system's LAPACK \
    (the reference one NumPy's sign convention comes from), and none was found: install \
    Debian's libopenblas0-serial (or liblapack3)";

fn lapack() -> Result<&'static Lapack, String> {
    static LAPACK: OnceLock<Result<Lapack, String>> = OnceLock::new();
    LAPACK.get_or_init(load).as_ref().map_err(Clone::clone)
}

fn load() -> Result<Lapack, String> {
    for name in LIBRARIES {
        // SAFETY: dlopen of a shared library by name; RTLD_DEEPBIND makes the library
        // resolve its own symbols (its BLAS) before libtorch's MKL ones of the same names.
        let handle = unsafe {
            libc::dlopen(
                name.as_ptr(),
                libc::RTLD_NOW | libc::RTLD_LOCAL | libc::RTLD_DEEPBIND,
            )
        };
        if handle.is_null() {
            continue;
        }
        let symbol = |symbol: &CStr| -> Option<*mut c_void> {
            // SAFETY: dlsym on a live handle.
            let p = unsafe { libc::dlsym(handle, symbol.as_ptr()) };
            (!p.is_null()).then_some(p)
        };
        if let (Some(svd), Some(lq), Some(qr)) =
            (symbol(c"dgesdd_"), symbol(c"dgelqf_"), symbol(c"dgeqrf_"))
        {
            if let Some(threads) = symbol(c"openblas_set_num_threads") {
                // A threaded OpenBLAS would start threads beside libtorch's: one is enough
                // for matrices this small.
                // SAFETY: OpenBLAS's documented `void openblas_set_num_threads(int)`.
                unsafe {
                    let set: unsafe extern "C" fn(c_int) = std::mem::transmute(threads);
                    set(1);
                }
            }
            // SAFETY: the symbols are LAPACK's routines of these (Fortran) signatures; the
            // handle is never closed, so they stay valid.
            return Ok(unsafe {
                Lapack {
                    dgesdd: std::mem::transmute::<*mut c_void, Dgesdd>(svd),
                    dgelqf: std::mem::transmute::<*mut c_void, Factorise>(lq),
                    dgeqrf: std::mem::transmute::<*mut c_void, Factorise>(qr),
                }
            });
        }
        // SAFETY: a handle we opened and will not use.
        unsafe { libc::dlclose(handle) };
    }
    Err(MISSING.to_string())
}

/// Whether the system's LAPACK is there (the server says so at start).
pub fn available() -> Result<(), String> {
    lapack().map(|_| ())
}

/// The projection of the rows of `x` (`m` x `n`, column-major: column j is channel j) on its
/// first right singular vector, with NumPy's sign.
pub fn first_projection(x: &[f64], m: usize, n: usize) -> Result<Vec<f64>, String> {
    assert_eq!(x.len(), m * n);
    let lapack = lapack()?;
    // Debian's serial OpenBLAS is not reentrant: it shares its work buffers between
    // threads, and two model workers projecting at once got each other's numbers (a sign
    // flipped, a map 1.0 of its maximum off; `concurrent_calls_give_what_one_call_gives`).
    // One call at a time: a few milliseconds each.
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _turn = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let short = m.min(n);
    let threshold = short * 11 / 6;
    if n > m && n >= threshold {
        // dgesdd's LQ path: X = L Q, and X v = L (first right singular vector of L).
        let l = lower_triangle(lapack, x, m, n)?;
        let v = first_right_vector(lapack, &l, m, m)?;
        Ok(multiply(&l, m, m, &v))
    } else if m > n && m >= threshold {
        // The QR path: X = Q R, whose right singular vectors are R's.
        let r = upper_triangle(lapack, x, m, n)?;
        let v = first_right_vector(lapack, &r, n, n)?;
        Ok(multiply(x, m, n, &v))
    } else {
        let v = first_right_vector(lapack, x, m, n)?;
        Ok(multiply(x, m, n, &v))
    }
}

/// `a` (`m` x `n`, column-major) times `v`.
fn multiply(a: &[f64], m: usize, n: usize, v: &[f64]) -> Vec<f64> {
    let mut out = vec![0f64; m];
    for (column, &w) in a.chunks_exact(m).zip(v).take(n) {
        for (o, &x) in out.iter_mut().zip(column) {
            *o += x * w;
        }
    }
    out
}

fn check(routine: &str, info: c_int) -> Result<(), String> {
    match info {
        0 => Ok(()),
        i => Err(format!("LAPACK {routine} failed (info {i})")),
    }
}

/// The first row of `VT` from `dgesdd(JOBZ='S')` of `a` (`m` x `n`, column-major).
fn first_right_vector(lapack: &Lapack, a: &[f64], m: usize, n: usize) -> Result<Vec<f64>, String> {
    let k = m.min(n);
    let (mi, ni, ki) = (m as c_int, n as c_int, k as c_int);
    let mut a = a.to_vec();
    let mut s = vec![0f64; k];
    let mut u = vec![0f64; m * k];
    let mut vt = vec![0f64; k * n];
    let mut iwork = vec![0 as c_int; 8 * k];
    let mut info = 0;
    let jobz = c"S".as_ptr();
    let call = |a: &mut [f64],
                work: &mut [f64],
                lwork: c_int,
                iwork: &mut [c_int],
                info: &mut c_int,
                s: &mut [f64],
                u: &mut [f64],
                vt: &mut [f64]| {
        // SAFETY: every buffer has the size dgesdd's documentation asks for JOBZ='S'
        // (A m x n, S min(m,n), U m x min, VT min x n, IWORK 8 min), and LWORK says WORK's.
        unsafe {
            (lapack.dgesdd)(
                jobz,
                &mi,
                &ni,
                a.as_mut_ptr(),
                &mi,
                s.as_mut_ptr(),
                u.as_mut_ptr(),
                &mi,
                vt.as_mut_ptr(),
                &ki,
                work.as_mut_ptr(),
                &lwork,
                iwork.as_mut_ptr(),
                info,
                1,
            )
        }
    };
    let mut query = [0f64; 1];
    call(
        &mut a, &mut query, -1, &mut iwork, &mut info, &mut s, &mut u, &mut vt,
    );
    check("dgesdd", info)?;
    let mut work = vec![0f64; query[0] as usize];
    let lwork = work.len() as c_int;
    call(
        &mut a, &mut work, lwork, &mut iwork, &mut info, &mut s, &mut u, &mut vt,
    );
    check("dgesdd", info)?;
    // Row 0 of the k x n column-major VT.
    Ok((0..n).map(|j| vt[j * k]).collect())
}

/// `routine` (dgelqf or dgeqrf) on a copy of `a`: the factorised matrix as LAPACK leaves it.
fn factorise(
    routine: Factorise,
    name: &str,
    a: &[f64],
    m: usize,
    n: usize,
) -> Result<Vec<f64>, String> {
    let (mi, ni) = (m as c_int, n as c_int);
    let mut a = a.to_vec();
    let mut tau = vec![0f64; m.min(n)];
    let mut info = 0;
    let mut query = [0f64; 1];
    // SAFETY: A is m x n with LDA m, TAU min(m,n); LWORK -1 only asks WORK's size.
    unsafe {
        routine(
            &mi,
            &ni,
            a.as_mut_ptr(),
            &mi,
            tau.as_mut_ptr(),
            query.as_mut_ptr(),
            &-1,
            &mut info,
        )
    };
    check(name, info)?;
    let mut work = vec![0f64; (query[0] as usize).max(1)];
    let lwork = work.len() as c_int;
    // SAFETY: as above, with WORK of LWORK entries.
    unsafe {
        routine(
            &mi,
            &ni,
            a.as_mut_ptr(),
            &mi,
            tau.as_mut_ptr(),
            work.as_mut_ptr(),
            &lwork,
            &mut info,
        )
    };
    check(name, info)?;
    Ok(a)
}

/// L of `a = L Q` (`m` x `m`, column-major, zero above the diagonal).
fn lower_triangle(lapack: &Lapack, a: &[f64], m: usize, n: usize) -> Result<Vec<f64>, String> {
    let f = factorise(lapack.dgelqf, "dgelqf", a, m, n)?;
    let mut l = vec![0f64; m * m];
    for j in 0..m {
        for i in j..m {
            l[j * m + i] = f[j * m + i];
        }
    }
    Ok(l)
}

/// R of `a = Q R` (`n` x `n`, column-major, zero below the diagonal).
fn upper_triangle(lapack: &Lapack, a: &[f64], m: usize, n: usize) -> Result<Vec<f64>, String> {
    let f = factorise(lapack.dgeqrf, "dgeqrf", a, m, n)?;
    let mut r = vec![0f64; n * n];
    for j in 0..n {
        for i in 0..=j {
            r[j * n + i] = f[j * m + i];
        }
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The three paths give the projection on the principal direction: rows along
    /// (1, 2, -1) (scaled) project onto it with their scale, up to one sign for all.
    #[test]
    fn every_path_finds_the_principal_direction() {
        available().expect("make test installs the system LAPACK");
        for (m, n) in [(4, 3), (3, 40), (40, 3), (30, 20)] {
            let direction: Vec<f64> = (0..n).map(|j| [1.0, 2.0, -1.0][j % 3]).collect();
            let scales: Vec<f64> = (0..m).map(|i| i as f64 - (m as f64 - 1.0) / 2.0).collect();
            // Column-major: column j is channel j.
            let x: Vec<f64> = (0..n)
                .flat_map(|j| scales.iter().map(move |&s| s * [1.0, 2.0, -1.0][j % 3]))
                .collect();
            let p = first_projection(&x, m, n).unwrap();
            let norm = direction.iter().map(|d| d * d).sum::<f64>().sqrt();
            let sign = p[0].signum() * scales[0].signum();
            for (got, s) in p.iter().zip(&scales) {
                assert!((got - sign * s * norm).abs() < 1e-9, "{m}x{n}: {p:?}");
            }
        }
    }

    /// Model workers project at the same time: each call must give what it gives alone
    /// (Debian's serial OpenBLAS shares its work buffers between threads).
    #[test]
    fn concurrent_calls_give_what_one_call_gives() {
        available().expect("make test installs the system LAPACK");
        // A ResNet's layer3 at 224: 196 positions x 1024 channels (the LQ path), and a
        // square-ish one (dgesdd itself), of seeded values.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 53) as f64 - 0.5
        };
        let shapes = [(196usize, 1024usize), (120, 100)];
        let inputs: Vec<Vec<f64>> = shapes
            .iter()
            .map(|&(m, n)| (0..m * n).map(|_| next()).collect())
            .collect();
        let alone: Vec<Vec<f64>> = inputs
            .iter()
            .zip(&shapes)
            .map(|(x, &(m, n))| first_projection(x, m, n).unwrap())
            .collect();
        std::thread::scope(|scope| {
            for t in 0..4 {
                let (inputs, alone) = (&inputs, &alone);
                scope.spawn(move || {
                    for round in 0..10 {
                        let i = (t + round) % shapes.len();
                        let (m, n) = shapes[i];
                        let p = first_projection(&inputs[i], m, n).unwrap();
                        assert_eq!(p, alone[i], "thread {t}, round {round}, {m}x{n}");
                    }
                });
            }
        });
    }
}
