//! The constant-velocity Kalman filter of ByteTrack (and DeepSORT before it), in f64.
//!
//! State (cx, cy, a, h, vcx, vcy, va, vh): box centre, aspect ratio w/h, height and their
//! velocities per frame. The measurement is (cx, cy, a, h). Process and measurement noise
//! scale with the box height (`1/20` of h for positions, `1/160` for velocities; fixed
//! `1e-2` / `1e-5` / `1e-1` for the aspect ratio), exactly as the reference.
//!
//! The reference (numpy) keeps a freshly initiated state in float32 until its first
//! predict or update, which rounds a few noise terms to f32. [`KalmanState::fresh`] marks
//! such a state so that those terms are rounded the same way; everything else is f64.

// 4x4 and 8x8 matrix arithmetic reads best with explicit indices.
#![allow(clippy::needless_range_loop)]

/// Position noise: 1/20 of the box height.
pub const STD_WEIGHT_POSITION: f64 = 1.0 / 20.0;
/// Velocity noise: 1/160 of the box height.
pub const STD_WEIGHT_VELOCITY: f64 = 1.0 / 160.0;

/// Mean and covariance of one track's state.
#[derive(Debug, Clone, PartialEq)]
pub struct KalmanState {
    /// (cx, cy, a, h, vcx, vcy, va, vh)
    pub mean: [f64; 8],
    /// 8x8, row-major.
    pub covariance: [[f64; 8]; 8],
    /// True from `initiate` until the first predict or update (the reference holds the
    /// mean in float32 until then).
    pub fresh: bool,
}

fn sq(x: f64) -> f64 {
    x * x
}

/// A new state from a measurement (cx, cy, a, h), velocities zero.
pub fn initiate(m: [f32; 4]) -> KalmanState {
    let h = m[3];
    // numpy: `2 * (1/20) * h` and `10 * (1/160) * h` with a float32 h are float32 products.
    let pos = f64::from((2.0 * STD_WEIGHT_POSITION) as f32 * h);
    let vel = f64::from((10.0 * STD_WEIGHT_VELOCITY) as f32 * h);
    let std = [pos, pos, 1e-2, pos, vel, vel, 1e-5, vel];
    let mut covariance = [[0.0; 8]; 8];
    for (i, s) in std.iter().enumerate() {
        covariance[i][i] = sq(*s);
    }
    let mut mean = [0.0; 8];
    for i in 0..4 {
        mean[i] = f64::from(m[i]);
    }
    KalmanState { mean, covariance, fresh: true }
}

/// Process noise diagonal for a state of height `h`. `f32_math`: the reference computed it
/// in float32 (a batch predict in which every state was still float32).
fn motion_noise(h: f64, f32_math: bool) -> [f64; 8] {
    if f32_math {
        let h = h as f32;
        let p = STD_WEIGHT_POSITION as f32 * h;
        let v = STD_WEIGHT_VELOCITY as f32 * h;
        let a = 1e-2f32;
        let va = 1e-5f32;
        [p * p, p * p, a * a, p * p, v * v, v * v, va * va, v * v].map(f64::from)
    } else {
        let p = STD_WEIGHT_POSITION * h;
        let v = STD_WEIGHT_VELOCITY * h;
        [sq(p), sq(p), sq(1e-2), sq(p), sq(v), sq(v), sq(1e-5), sq(v)]
    }
}

impl KalmanState {
    /// One frame ahead: x += v, P = F P F^T + Q. `f32_noise`: compute Q in float32, as the
    /// reference does in a batch predict where every state is still float32 (`fresh`).
    pub fn predict(&mut self, f32_noise: bool) {
        let q = motion_noise(self.mean[3], f32_noise);
        for i in 0..4 {
            self.mean[i] += self.mean[i + 4];
        }
        // F = [[I, I], [0, I]]: (F P)[i] = P[i] + P[i+4] for i < 4, then the same on columns.
        let p = &mut self.covariance;
        for i in 0..4 {
            for j in 0..8 {
                p[i][j] += p[i + 4][j];
            }
        }
        for row in p.iter_mut() {
            for j in 0..4 {
                row[j] += row[j + 4];
            }
        }
        for (i, qi) in q.iter().enumerate() {
            p[i][i] += qi;
        }
        self.fresh = false;
    }

    /// Measurement-space projection: (H x, H P H^T + R).
    pub fn project(&self) -> ([f64; 4], [[f64; 4]; 4]) {
        let h = self.mean[3];
        let (p, a) = if self.fresh {
            // float32 mean in the reference: `0.05 * mean[3]` is a float32 product.
            (f64::from(STD_WEIGHT_POSITION as f32 * h as f32), 1e-1)
        } else {
            (STD_WEIGHT_POSITION * h, 1e-1)
        };
        let r = [sq(p), sq(p), sq(a), sq(p)];
        let mut s = [[0.0; 4]; 4];
        for i in 0..4 {
            for j in 0..4 {
                s[i][j] = self.covariance[i][j];
            }
            s[i][i] += r[i];
        }
        let mut mean = [0.0; 4];
        mean.copy_from_slice(&self.mean[..4]);
        (mean, s)
    }

    /// Correct with a measurement (cx, cy, a, h). `Err` when the innovation covariance is
    /// not positive definite (only with non-finite or absurd inputs); the state is then
    /// left unchanged.
    pub fn update(&mut self, m: [f32; 4]) -> Result<(), NotPositiveDefinite> {
        let (proj_mean, s) = self.project();
        let l = cholesky4(&s)?;
        // K^T = S^-1 (P H^T)^T : solve S X = (P H^T)^T, X is 4x8.
        let mut kt = [[0.0; 8]; 4];
        for c in 0..8 {
            let b = [self.covariance[c][0], self.covariance[c][1], self.covariance[c][2], self.covariance[c][3]];
            let x = cho_solve4(&l, b);
            for r in 0..4 {
                kt[r][c] = x[r];
            }
        }
        let innovation: [f64; 4] = std::array::from_fn(|i| f64::from(m[i]) - proj_mean[i]);
        let mut mean = self.mean;
        for (c, v) in mean.iter_mut().enumerate() {
            *v += (0..4).map(|r| innovation[r] * kt[r][c]).sum::<f64>();
        }
        // P - K S K^T
        let mut ks = [[0.0; 4]; 8]; // K S, 8x4
        for i in 0..8 {
            for j in 0..4 {
                ks[i][j] = (0..4).map(|k| kt[k][i] * s[k][j]).sum();
            }
        }
        let mut cov = self.covariance;
        for i in 0..8 {
            for j in 0..8 {
                cov[i][j] -= (0..4).map(|k| ks[i][k] * kt[k][j]).sum::<f64>();
            }
        }
        if mean.iter().chain(cov.iter().flatten()).any(|v| !v.is_finite()) {
            return Err(NotPositiveDefinite);
        }
        self.mean = mean;
        self.covariance = cov;
        self.fresh = false;
        Ok(())
    }

    /// The state's box as (x1, y1, x2, y2), computed as the reference does
    /// (`w = a * h; x1 = cx - w / 2; x2 = x1 + w`), in float32 arithmetic while `fresh`.
    pub fn tlbr(&self) -> [f64; 4] {
        let [cx, cy, a, h] = [self.mean[0], self.mean[1], self.mean[2], self.mean[3]];
        if self.fresh {
            let (cx, cy, a, h) = (cx as f32, cy as f32, a as f32, h as f32);
            let w = a * h;
            let x1 = cx - w / 2.0;
            let y1 = cy - h / 2.0;
            [x1, y1, x1 + w, y1 + h].map(f64::from)
        } else {
            let w = a * h;
            let x1 = cx - w / 2.0;
            let y1 = cy - h / 2.0;
            [x1, y1, x1 + w, y1 + h]
        }
    }
}

/// The innovation covariance could not be factorized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotPositiveDefinite;

/// Lower Cholesky factor of a symmetric 4x4 matrix.
fn cholesky4(a: &[[f64; 4]; 4]) -> Result<[[f64; 4]; 4], NotPositiveDefinite> {
    let mut l = [[0.0; 4]; 4];
    for j in 0..4 {
        let d = a[j][j] - (0..j).map(|k| l[j][k] * l[j][k]).sum::<f64>();
        if !d.is_finite() || d <= 0.0 {
            return Err(NotPositiveDefinite);
        }
        let d = d.sqrt();
        l[j][j] = d;
        for i in j + 1..4 {
            l[i][j] = (a[i][j] - (0..j).map(|k| l[i][k] * l[j][k]).sum::<f64>()) / d;
        }
    }
    Ok(l)
}

/// Solve (L L^T) x = b.
fn cho_solve4(l: &[[f64; 4]; 4], b: [f64; 4]) -> [f64; 4] {
    let mut y = [0.0; 4];
    for i in 0..4 {
        y[i] = (b[i] - (0..i).map(|k| l[i][k] * y[k]).sum::<f64>()) / l[i][i];
    }
    let mut x = [0.0; 4];
    for i in (0..4).rev() {
        x[i] = (y[i] - (i + 1..4).map(|k| l[k][i] * x[k]).sum::<f64>()) / l[i][i];
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * (1.0 + b.abs())
    }

    #[test]
    fn initiate_predict_update_by_hand() {
        // h = 100: position std 0.1 h = 10, velocity std 0.0625 h = 6.25.
        let mut s = initiate([10.0, 20.0, 0.5, 100.0]);
        assert_eq!(s.mean, [10.0, 20.0, 0.5, 100.0, 0.0, 0.0, 0.0, 0.0]);
        assert!(close(s.covariance[0][0], 100.0));
        assert!(close(s.covariance[2][2], 1e-4));
        assert!(close(s.covariance[4][4], 39.0625));
        assert!(close(s.covariance[6][6], 1e-10));
        assert!(s.fresh);

        s.predict(false);
        // P_xx = 100 + 39.0625 + (0.05 h)^2 = 164.0625; P_xv = 39.0625;
        // P_vv = 39.0625 + (h / 160)^2 = 39.453125.
        assert!(close(s.covariance[0][0], 164.0625));
        assert!(close(s.covariance[0][4], 39.0625));
        assert!(close(s.covariance[4][0], 39.0625));
        assert!(close(s.covariance[4][4], 39.453125));
        assert!(close(s.covariance[2][2], 1e-4 + 1e-10 + 1e-4));
        assert_eq!(s.mean[0], 10.0);
        assert!(!s.fresh);

        s.update([12.0, 20.0, 0.5, 100.0]).unwrap();
        // S_xx = 164.0625 + 25; K_x = 164.0625 / S_xx; K_vx = 39.0625 / S_xx.
        let sxx = 164.0625 + 25.0;
        assert!(close(s.mean[0], 10.0 + 2.0 * 164.0625 / sxx));
        assert!(close(s.mean[4], 2.0 * 39.0625 / sxx));
        assert!(close(s.mean[1], 20.0));
        assert!(close(s.mean[3], 100.0));
        // P_xx' = P_xx - P_xx^2 / S_xx; P_vv' = P_vv - P_xv^2 / S_xx.
        assert!(close(s.covariance[0][0], 164.0625 - 164.0625 * 164.0625 / sxx));
        assert!(close(s.covariance[4][4], 39.453125 - 39.0625 * 39.0625 / sxx));
        assert!(close(s.covariance[0][4], 39.0625 - 164.0625 * 39.0625 / sxx));

        // constant velocity: the next predict moves the centre by vx.
        let vx = s.mean[4];
        let x = s.mean[0];
        s.predict(false);
        assert!(close(s.mean[0], x + vx));
    }

    #[test]
    fn tlbr_from_state() {
        let s = initiate([50.0, 60.0, 0.5, 40.0]);
        assert_eq!(s.tlbr(), [40.0, 40.0, 60.0, 80.0]);
    }

    #[test]
    fn update_rejects_non_finite() {
        let mut s = initiate([50.0, 60.0, 0.5, 40.0]);
        let before = s.clone();
        assert!(s.update([f32::NAN, 60.0, 0.5, 40.0]).is_err());
        assert_eq!(s, before);
        let mut bad = initiate([50.0, 60.0, 0.5, 40.0]);
        bad.covariance[0][0] = f64::NAN;
        assert!(bad.update([50.0, 60.0, 0.5, 40.0]).is_err());
    }

    #[test]
    fn cholesky_solves() {
        let a = [[4.0, 2.0, 0.0, 0.0], [2.0, 3.0, 0.0, 0.0], [0.0, 0.0, 2.0, 0.0], [0.0, 0.0, 0.0, 1.0]];
        let l = cholesky4(&a).unwrap();
        let x = cho_solve4(&l, [2.0, 1.0, 4.0, 3.0]);
        // 4x + 2y = 2, 2x + 3y = 1 -> x = 0.5, y = 0
        assert!(close(x[0], 0.5) && x[1].abs() < 1e-12 && close(x[2], 2.0) && close(x[3], 3.0));
        assert!(cholesky4(&[[0.0; 4]; 4]).is_err());
    }
}
