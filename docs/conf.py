"""Sphinx configuration of the pact-pyro documentation (``bash scripts/docs.sh``).

Sphinx with the PyData theme and myst-nb, as arviz (and, with Sphinx, Pyro and NumPyro) do: our users know
that layout, autodoc reads the docstrings we already write, and myst-nb executes the notebooks and the
``{code-cell}`` blocks of the how-to pages, so every example on the site runs on every build. The build runs
with ``-W --keep-going`` and ``nitpicky``: a broken cross-reference or an undocumented public name (a name
in a module's ``__all__`` without a docstring on the site) fails it.
"""

from __future__ import annotations

import importlib
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

project = "pact-pyro"
author = "the pact-pyro developers"
copyright = "2026, the pact-pyro developers"
release = importlib.import_module("pact_pyro").__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinxarg.ext",
    "myst_nb",
]
exclude_patterns = ["_build", "jupyter_execute", ".jupyter_cache"]
html_theme = "pydata_sphinx_theme"
html_title = "pact-pyro"
html_theme_options = {"navigation_with_keys": False, "show_toc_level": 2}
html_static_path = ["_static"]

# notebooks and code cells run on every build, in the notebooks' smoke mode (CI set by scripts/docs.sh)
# "inline": one process, torch imported once; PACT_PYRO_DOCS_EXECUTE=off for a quick look at the layout
nb_execution_mode = os.environ.get("PACT_PYRO_DOCS_EXECUTE", "inline")
nb_execution_raise_on_error = True
nb_execution_timeout = 600
nb_merge_streams = True
myst_enable_extensions = ["dollarmath", "amsmath"]

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True}
napoleon_google_docstring = False
nitpicky = True
# no network here: names from other projects are not resolved (no intersphinx inventories)
nitpick_ignore_regex = [
    (r"py:.*", r"(torch|pyro|numpy|np|pandas|arviz|matplotlib|torchvision|argparse)\b.*"),
    (r"py:.*", r"(collections|typing|abc)\b.*"),
    (r"py:.*", r"(Tensor|TorchDistribution|Figure|Axes|InferenceData|Path|PathLike|Module|Generator)"),
    (r"py:.*", r"(Callable|Iterator|Iterable|Sequence|Mapping|Any|Literal)"),
    (r"py:.*", r"(os|dataclasses|pathlib)\..*"),
    (r"py:.*", r"(ExpandedDistribution|nn\..*)"),
    (r"py:.*", r"(optional|callable|int|float|str|bool|dict|list|tuple|None|type|object)"),
]

# -- the sweeps' plots (landing page, results page), copied in at build time -------------------------------
(Path(__file__).parent / "_static").mkdir(exist_ok=True)
for _name in (
    "tradeoff_cifar10_cpu",
    "tradeoff_cifar10_cpu_long",
    "tradeoff_cifar10_cpu_long_e45",
    "tradeoff_cifar10_cpu_long_pilot25",
):
    shutil.copyfile(ROOT / "results" / f"{_name}.png", Path(__file__).parent / "_static" / f"{_name}.png")

# -- tutorials: the example notebooks, copied in at build time -------------------------------------------
_TUTORIALS = Path(__file__).parent / "tutorials"
_TUTORIALS.mkdir(exist_ok=True)
for nb in sorted((ROOT / "examples" / "notebooks").glob("*.ipynb")):
    shutil.copyfile(nb, _TUTORIALS / nb.name)

# -- every public name documented -------------------------------------------------------------------------
# the modules the API page documents member by member (its ``automodule`` directives without ``:no-members:``)
_API_PAGE = (Path(__file__).parent / "api.md").read_text().split("```")
API_MODULES = [
    line.split("::")[1].strip()
    for block in _API_PAGE
    if ":no-members:" not in block
    for line in block.splitlines()
    if line.startswith(".. automodule::")
]
PACKAGES = ["pact_pyro", "pact_pyro.nn", "pact_pyro.models", "pact_pyro.guides"]
_documented: dict[str, bool] = {}


def _record(app, what, name, obj, options, lines) -> None:
    _documented[name] = _documented.get(name, False) or any(line.strip() for line in lines)


def _check_public_names(app, env) -> None:
    from sphinx.util import logging

    log = logging.getLogger("pact_pyro.docs")
    documented_objs = set()
    for mod_name in API_MODULES:
        mod = importlib.import_module(mod_name)
        for name in getattr(mod, "__all__", []):
            full = f"{mod_name}.{name}"
            if not _documented.get(full):
                log.warning(f"undocumented public name {full} (no docstring on the API page)")
            documented_objs.add(id(getattr(mod, name)))
    for pkg in PACKAGES:  # package-level names are re-exports of documented objects
        mod = importlib.import_module(pkg)
        for name in getattr(mod, "__all__", []):
            obj = getattr(mod, name)
            if id(obj) not in documented_objs and not _documented.get(f"{pkg}.{name}"):
                log.warning(f"public name {pkg}.{name} is documented nowhere in the API reference")


def _resolve_reexport(app, env, node, contnode):
    """Resolve ``pact_pyro.guides.EmptyGuide`` (a re-export) or a name relative to the current module/class
    to the place where the object is documented (its defining module)."""
    if node.get("refdomain") != "py":
        return None
    target = node["reftarget"].lstrip("~.")
    mod, cls = node.get("py:module"), node.get("py:class")
    candidates = [target] + [f"{p}.{target}" for p in (f"{mod}.{cls}" if mod and cls else None, mod) if p]
    domain = env.get_domain("py")
    for cand in candidates:
        parts = cand.split(".")
        for i in range(len(parts) - 1, 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:i]))
                for attr in parts[i:]:
                    obj = getattr(obj, attr)
            except (ImportError, AttributeError):
                continue
            home = getattr(obj, "__module__", None)
            qual = getattr(obj, "__qualname__", None)
            canonical = f"{home}.{qual}" if home and qual else None
            if canonical is None:  # a constant: documented in the module that exports it
                canonical = ".".join(parts[:i]) + "." + ".".join(parts[i:])
            ref = domain.resolve_xref(
                env, node["refdoc"], app.builder, node["reftype"], canonical, node, contnode
            )
            if ref is None and node["reftype"] in ("class", "func", "meth", "data", "obj"):
                ref = domain.resolve_any_xref(env, node["refdoc"], app.builder, canonical, node, contnode)
                ref = ref[0][1] if ref else None
            if ref is not None:
                return ref
            break
    return None


def setup(app):
    app.connect("missing-reference", _resolve_reexport)
    app.connect("autodoc-process-docstring", _record)
    app.connect("env-check-consistency", _check_public_names)
    os.environ.setdefault("CI", "true")
