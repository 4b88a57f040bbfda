"""nbnet's modules import each other without circles: the kernels (simd, cpu, gpu) below the layers,
losses and optimizers, and those below the model. Imports inside functions count too: a lazy import
that closes a circle still ties the two modules together, and is one edit away from an ImportError."""

import ast
from pathlib import Path

import nbnet

PACKAGE = Path(nbnet.__file__).parent
# Every module: the kernels, layers, losses, optimizers and model, and beside them the data
# pipeline, MPI, files and the command line (gpu -> data -> dist -> model -> gpu was a circle).
CORE = tuple(sorted(p.stem for p in PACKAGE.glob("*.py")))


def imports_of(module):
    """The nbnet modules `module` imports anywhere in its file (relative imports)."""
    found = set()
    for node in ast.walk(ast.parse((PACKAGE / f"{module}.py").read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            names = [node.module.split(".")[0]] if node.module else [a.name for a in node.names]
            found.update(n for n in names if (PACKAGE / f"{n}.py").exists())
    return found


def test_the_modules_import_each_other_without_a_circle():
    graph = {m: imports_of(m) & set(CORE) for m in CORE}
    done, path = set(), []

    def visit(m):
        assert m not in path, f"import circle: {' -> '.join(path[path.index(m):] + [m])}"
        if m in done:
            return
        path.append(m)
        for n in sorted(graph[m]):
            visit(n)
        path.pop()
        done.add(m)

    for m in CORE:
        visit(m)
