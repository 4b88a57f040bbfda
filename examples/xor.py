"""XOR: the smallest problem a network without a hidden layer cannot solve.

No straight line separates {(0,1), (1,0)} from {(0,0), (1,1)}: a single Linear layer gets at most 3
of 4 right, and trained on cross-entropy it settles at chance (loss log 2 = 0.693, P = 0.5 for all).
One hidden layer of 4 tanh units bends the boundary and gets all 4.

    python examples/xor.py [--steps 300]
"""

import argparse
import math
import sys

import numpy as np

import nbnet as nb

X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float32)
Y = np.array([0, 1, 1, 0])  # x1 XOR x2


def train(model, steps, lr):
    """Full-batch training on the four points; returns the final loss."""
    loss_fn = nb.SoftmaxCrossEntropy()
    opt = nb.SGD(model.parameters(), lr=lr, momentum=0.9)
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn.forward(model.forward(X), Y)
        if not math.isfinite(loss):  # too large a rate: every later step would be NaN too
            sys.exit(f"Error: training diverged (loss {loss}): try a lower --lr")
        model.backward(loss_fn.backward())
        opt.step()
    return loss


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=0.1)
    args = parser.parse_args()
    if args.steps < 1:
        parser.error(f"--steps must be at least 1, got {args.steps}")
    if not 0 <= args.lr < float("inf"):
        parser.error(f"--lr must be a finite number >= 0, got {args.lr}")

    linear = nb.Sequential([nb.Linear(2, 2, seed=0)])
    hidden = nb.Sequential([nb.Linear(2, 4, seed=0), nb.Tanh(), nb.Linear(4, 2, seed=1)])

    for name, model in (("no hidden layer", linear), ("one hidden layer", hidden)):
        loss = train(model, args.steps, args.lr)
        pred = model.forward(X).argmax(axis=1)
        print(f"{name:>16}: loss {loss:.4f}, {int((pred == Y).sum())}/4 correct")

    probs = nb.Softmax().forward(hidden.forward(X))
    print("\n x1 x2 | XOR | P(1) from the hidden-layer net")
    for x, y, p in zip(X, Y, probs[:, 1]):
        print(f"  {x[0]:.0f}  {x[1]:.0f} |  {y}  | {p:.3f}")


if __name__ == "__main__":
    main()
