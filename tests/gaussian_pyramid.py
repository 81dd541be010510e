"""Exact velocity fields of the pyramidal path for Gaussian data (test helper).

For x0 ~ N(mu, Sigma) and definition-1 clean targets, every stage's path is linear-Gaussian:
x_t = M x0 + sigma n and target = G x0 + n, so the flow-matching velocity E[target | x_t] has a
closed form by Gaussian conditioning. Driving the sampler with it must reproduce N(mu, Sigma).
The exact law of the *discretised* sampler (Euler + jumps) is also propagated in closed form.
"""

from __future__ import annotations

import torch


class GaussianPyramid:
    def __init__(self, schedule, transform, shape, mu, cov):
        self.s, self.t, self.shape = schedule, transform, tuple(shape)  # shape: (1, C, T, H, W)
        self.mu, self.cov = mu.double(), cov.double()
        d = mu.numel()
        eye = torch.eye(d, dtype=torch.float64).reshape(d, *self.shape[1:])
        self.down = []  # D_i: (d_i, d)
        for i in range(schedule.num_stages):
            di = transform.down(eye, schedule.levels(i))
            self.down.append(di.reshape(d, -1).T.contiguous())
        self.up = [None]  # U_i: (d_i, d_{i-1})
        for i in range(1, schedule.num_stages):
            lo = transform.shape_at(self.shape, schedule.levels(i - 1))
            n_lo = self.down[i - 1].shape[0]
            basis = torch.eye(n_lo, dtype=torch.float64).reshape(n_lo, *lo[1:])
            self.up.append(transform.up(basis).reshape(n_lo, -1).T.contiguous())

    def _linear(self, stage, sigma):
        s_s, s_e = self.s.windows[stage]
        r = (sigma - s_e) / (s_s - s_e)
        prev = self.up[stage] @ self.down[stage - 1] if stage > 0 else torch.zeros_like(self.down[0])
        m = (1 - r) * (1 - s_e) * self.down[stage] + r * (1 - s_s) * prev
        g = ((1 - s_s) * prev - (1 - s_e) * self.down[stage]) / (s_s - s_e)
        return m, g

    def velocity_matrix(self, stage, sigma):
        """v(x) = A x + b, the exact E[target | x_t = x] at natural level sigma."""
        m, g = self._linear(stage, sigma)
        c = m @ self.cov @ m.T + sigma**2 * torch.eye(m.shape[0], dtype=torch.float64)
        k_x0 = self.cov @ m.T @ torch.linalg.inv(c)  # E[x0|x] = mu + k_x0 (x - M mu)
        k_n = sigma * torch.linalg.inv(c)  # E[n|x] = k_n (x - M mu)
        a = g @ k_x0 + k_n
        b = g @ self.mu - a @ (m @ self.mu)
        return a, b

    def velocity_fn(self, x, sigma, stage):
        a, b = self.velocity_matrix(stage, float(sigma[0]))
        flat = x.reshape(x.shape[0], -1).double()
        return (flat @ a.T + b).reshape(x.shape).to(x.dtype)

    def discrete_law(self, steps):
        """Exact mean and covariance of Euler-with-jumps driven by the exact velocity."""
        d0 = self.down[0].shape[0]
        mean = torch.zeros(d0, dtype=torch.float64)
        cov = torch.eye(d0, dtype=torch.float64)
        for stage, n in enumerate(steps):
            grid = self.s.sigmas(stage, n).tolist()
            for s, s_next in zip(grid[:-1], grid[1:], strict=True):
                a, b = self.velocity_matrix(stage, s)
                step = torch.eye(a.shape[0], dtype=torch.float64) + (s_next - s) * a
                mean = step @ mean + (s_next - s) * b
                cov = step @ cov @ step.T
            if stage < self.s.num_stages - 1:
                cov, mean = self._jump_law(stage, mean, cov)
        return mean, cov

    def _jump_law(self, stage, mean, cov):
        """Per token group g: x'' = k_g (a_g U x + s_g P_detail eps) + std_g eps2 (top-up)."""
        from pyramidflow.pyramid.schedule import jump_alpha, jump_sigma

        sigma = self.s.windows[stage][1]
        target = self.s.windows[stage + 1][0]
        u = self.up[stage + 1]
        n_hi = u.shape[0]
        detail = torch.eye(n_hi, dtype=torch.float64) - u @ torch.linalg.pinv(u)  # P_detail
        # Which fine element belongs to which token group.
        fine = self.t.shape_at(self.shape, self.s.levels(stage + 1))
        ids = torch.arange(n_hi, dtype=torch.float64).reshape(fine)
        row_scale_x = torch.empty(n_hi, dtype=torch.float64)
        row_scale_n = torch.empty(n_hi, dtype=torch.float64)
        extra_var = torch.empty(n_hi, dtype=torch.float64)
        for gain, part in zip(self.t.group_gains, self.t.split_groups(ids), strict=True):
            rows = part.flatten().long()
            a, s1 = jump_alpha(sigma, gain), jump_sigma(sigma, gain)
            k = (1 - target) / (1 - s1)  # forward-noise scale, 1 when the group lands on target
            row_scale_x[rows], row_scale_n[rows] = k * a, k * s1
            extra_var[rows] = target**2 - (k * s1) ** 2
        lift = row_scale_x[:, None] * u
        noise = row_scale_n[:, None] * detail * row_scale_n[None, :] + torch.diag(extra_var)
        return lift @ cov @ lift.T + noise, lift @ mean
