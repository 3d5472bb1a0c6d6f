//! Adam, written out so that its state can be saved and restored exactly (bit-identical resume).
//! The update is PyTorch's `torch.optim.Adam` (no weight decay, no amsgrad), step for step.

use tch::Tensor;

pub struct Adam {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub step: i64,
    /// First and second moments, one per parameter, in parameter order.
    pub m: Vec<Tensor>,
    pub v: Vec<Tensor>,
}

impl Adam {
    pub fn new(params: &[&Tensor], lr: f64, beta1: f64, beta2: f64) -> Self {
        Self {
            lr,
            beta1,
            beta2,
            eps: 1e-8,
            step: 0,
            m: params.iter().map(|p| p.zeros_like()).collect(),
            v: params.iter().map(|p| p.zeros_like()).collect(),
        }
    }

    /// One update of every parameter from its `.grad()`; parameters without a gradient stay.
    pub fn step(&mut self, params: &[&Tensor]) {
        let _guard = tch::no_grad_guard();
        self.step += 1;
        let bias1 = 1.0 - self.beta1.powi(self.step as i32);
        let bias2 = 1.0 - self.beta2.powi(self.step as i32);
        for ((p, m), v) in params.iter().zip(&mut self.m).zip(&mut self.v) {
            let g = p.grad();
            if !g.defined() {
                continue;
            }
            let _ = m
                .g_mul_scalar_(self.beta1)
                .g_add_(&(&g * (1.0 - self.beta1)));
            let _ = v
                .g_mul_scalar_(self.beta2)
                .g_add_(&(&g * &g * (1.0 - self.beta2)));
            let denom = v.sqrt() / bias2.sqrt() + self.eps;
            let mut p = p.shallow_clone();
            let _ = p.g_sub_(&(&*m / &denom * (self.lr / bias1)));
        }
    }
}
