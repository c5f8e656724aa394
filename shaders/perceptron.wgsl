// Rosenblatt's perceptron, one epoch of the online rule as the lecture gives it:
//   net = w^T x - theta,  y = sign(net) in {-1, 1},  e = target - y,
//   w <- w + eta x e,     theta <- theta - eta e   (theta is a weight on a constant -1 input)
// The rule is sequential by nature (each sample sees the weights left by the one before), so
// a single invocation walks the samples in order; the data sets it is meant for are small.
// weights holds (w_0 .. w_{cols-1}, theta); errors[0] receives the number of samples whose
// prediction was wrong during the epoch.

struct PerceptronParams {
    rows: u32,
    cols: u32,
    lr: f32,
    _pad0: u32,
}

@group(0) @binding(0) var<storage, read_write> weights: array<f32>;
@group(0) @binding(1) var<storage, read_write> errors: array<u32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> targets: array<f32>;
@group(0) @binding(4) var<uniform> p: PerceptronParams;

@compute @workgroup_size(1, 1, 1)
fn perceptron_epoch() {
    var wrong = 0u;
    for (var s = 0u; s < p.rows; s = s + 1u) {
        var net = 0.0;
        for (var c = 0u; c < p.cols; c = c + 1u) {
            net = net + weights[c] * x[s * p.cols + c];
        }
        net = net - weights[p.cols];
        let y = select(-1.0, 1.0, net >= 0.0);
        let e = targets[s] - y;
        if (e != 0.0) {
            wrong = wrong + 1u;
            for (var c = 0u; c < p.cols; c = c + 1u) {
                weights[c] = weights[c] + p.lr * x[s * p.cols + c] * e;
            }
            weights[p.cols] = weights[p.cols] - p.lr * e;
        }
    }
    errors[0] = wrong;
}
