"""What an uploaded function may look like: each rule written once, for the local runtime and AWS.

- a handler name per runtime (python and node: a function name; java: `Class::method`),
- where a Java source must be written and which class the handler names,
- whether a Node source is an ES module (it then needs the `.mjs` extension),
- the requirements of a python function: one `name[extras]<op>version` per line, nothing else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from taskorch.functions.errors import BuildError

RUNTIMES = ("python", "node", "java")

_JS_IDENTIFIER = re.compile(r"[A-Za-z_$][\w$]*", re.ASCII)
_JAVA_NAME = r"[A-Za-z_$][\w$]*"
_JAVA_HANDLER = re.compile(rf"({_JAVA_NAME}(?:\.{_JAVA_NAME})*)::({_JAVA_NAME})", re.ASCII)
_JAVA_COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*", re.DOTALL)
_JAVA_PACKAGE = re.compile(r"^\s*package\s+([\w.]+)\s*;", re.MULTILINE)
_JAVA_PUBLIC_TYPE = re.compile(
    r"\bpublic\s+(?:(?:final|abstract|sealed|non-sealed|strictfp|static)\s+)*"
    r"(?:class|record|enum|interface)\s+([A-Za-z_$][\w$]*)"
)
# ES module syntax: a static import or an export statement at the start of a line. CommonJS
# (the contract's `exports.handler = ...`, `require(...)`, dynamic `import(...)`) matches neither.
_ES_MODULE = re.compile(
    r"^\s*(?:export\s+(?:default\b|async\b|function\b|class\b|const\b|let\b|var\b|\{|\*)"
    r"|import\s*(?:[\w$]+\s*(?:,|from\b)|\{|\*|[\"']))",
    re.MULTILINE,
)
# A requirement is a distribution name (PEP 508), optional extras, then one or more version
# clauses whose versions are plain PEP 440 release numbers. No markers, URLs, paths or options:
# nothing pip could read as a local folder to build (`tmp/../../x`), a file, or a flag.
_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"
_VERSION = r"(?:\d+!)?\d+(?:\.\d+)*(?:(?:a|b|rc)\d+)?(?:\.post\d+)?(?:\.dev\d+)?"
_CLAUSE = rf"(?:===?|!=|~=|>=|<=|<|>)\s*{_VERSION}(?:\.\*)?"
_REQUIREMENT = re.compile(
    rf"({_NAME})\s*(\[\s*{_NAME}(?:\s*,\s*{_NAME})*\s*\])?\s*({_CLAUSE}(?:\s*,\s*{_CLAUSE})*)",
    re.ASCII,
)
_MAX_REQUIREMENTS = 100


@dataclass(frozen=True)
class JavaLayout:
    """Where a Java source goes and what the handler names, package included."""

    file_stem: str  # the public type's name: javac wants `<file_stem>.java`
    class_name: str  # fully qualified
    method: str


def check_handler(runtime: str, handler: str) -> None:
    """Raises BuildError unless `handler` is a valid handler name for `runtime`."""
    if runtime not in RUNTIMES:
        raise BuildError(f"unknown runtime {runtime!r}; use one of {', '.join(RUNTIMES)}")
    if runtime == "python" and not (handler.isidentifier() and handler.isascii()):
        raise BuildError(f"handler must be a Python function name, not {handler!r}")
    if runtime == "node" and not _JS_IDENTIFIER.fullmatch(handler):
        raise BuildError(f"handler must be the name of an export, not {handler!r}")
    if runtime == "java" and not _JAVA_HANDLER.fullmatch(handler):
        raise BuildError(
            f"handler must look like Class::method (or package.Class::method), not {handler!r}"
        )


def java_layout(code: str, handler: str) -> JavaLayout:
    """The file name and fully qualified class of a Java source and its `Class::method`."""
    check_handler("java", handler)
    match = _JAVA_HANDLER.fullmatch(handler)
    assert match is not None
    class_name, method = match.groups()
    # Comments may mention `package` or `public class`: look at declarations only.
    declarations = _JAVA_COMMENT.sub(" ", code)
    package = _JAVA_PACKAGE.search(declarations)
    if "." not in class_name and package:
        class_name = f"{package.group(1)}.{class_name}"
    public = _JAVA_PUBLIC_TYPE.search(declarations)
    file_stem = public.group(1) if public else class_name.rsplit(".", 1)[-1]
    return JavaLayout(file_stem=file_stem, class_name=class_name, method=method)


def node_entry(code: str) -> str:
    """`index.mjs` for an ES module, `index.js` for CommonJS (as Lambda's Node runtime wants)."""
    return "index.mjs" if _ES_MODULE.search(code) else "index.js"


def parse_requirements(runtime: str, text: str | None) -> list[str]:
    """The requirement lines of a function, normalised; BuildError names the first bad line.

    Blank lines and `#` comments are skipped. Each other line must be a package name with
    optional extras and at least one version clause, such as `requests==2.32.3` or
    `pydantic[email]>=2,<3`.
    """
    lines: list[str] = []
    for number, raw in enumerate((text or "").splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = _REQUIREMENT.fullmatch(line)
        if match is None:
            raise BuildError(
                f"requirements line {number} ({line[:100]!r}) is not allowed: write one package "
                "per line as name==version (extras and other version operators such as >= are "
                "fine); pip options, paths, URLs and markers are not accepted"
            )
        name, extras, clauses = match.groups()
        lines.append(name + re.sub(r"\s+", "", extras or "") + re.sub(r"\s+", "", clauses))
    if lines and runtime != "python":
        raise BuildError(f"requirements are for python functions only, not {runtime}")
    if len(lines) > _MAX_REQUIREMENTS:
        raise BuildError(f"at most {_MAX_REQUIREMENTS} requirements are allowed")
    return lines
