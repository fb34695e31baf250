"""Load a scenario file: YAML → plain data with line numbers → validated :class:`Scenario`.

Every error names the file, the line and the field (``scenarios/x.yaml:12:5: edge_pool.nodes[0].name:
…``). PyYAML's composer gives each node its position; we keep a map from field path to position so a
pydantic error location can be turned back into a line, including for a misspelt key (pydantic reports
the extra key's path) and for a missing one (we point at the mapping that lacks it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from simulator.spec.schema import CrossReferenceError, Scenario

PathKey = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class ScenarioProblem:
    file: str
    line: int
    column: int
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}"
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


class ScenarioError(Exception):
    """A scenario file that cannot be used; ``problems`` lists every error found, each with its line."""

    def __init__(self, problems: list[ScenarioProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(problem) for problem in problems))


def _dotted(path: PathKey) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


class _Positions:
    """Builds plain Python data from a YAML node tree, remembering where each path was written."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.where: dict[PathKey, tuple[int, int]] = {}
        self._scalars = yaml.SafeLoader("")

    def build(self, node: yaml.Node, path: PathKey) -> Any:
        self.where[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
        if isinstance(node, yaml.MappingNode):
            result: dict[str, Any] = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    raise self._problem(key_node, path, "mapping keys must be plain names")
                key = str(key_node.value)
                if key in result:
                    raise self._problem(key_node, (*path, key), "this key is given twice")
                result[key] = self.build(value_node, (*path, key))
                self.where[(*path, key)] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            return result
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, index)) for index, item in enumerate(node.value)]
        if isinstance(node, yaml.ScalarNode):
            return self._scalars.construct_object(node, deep=True)
        raise self._problem(node, path, f"unsupported YAML node {type(node).__name__}")

    def _problem(self, node: yaml.Node, path: PathKey, message: str) -> ScenarioError:
        mark = node.start_mark
        return ScenarioError([ScenarioProblem(self.file, mark.line + 1, mark.column + 1, _dotted(path), message)])

    def locate(self, path: PathKey) -> tuple[int, int]:
        for end in range(len(path), -1, -1):
            if path[:end] in self.where:
                return self.where[path[:end]]
        return (1, 1)


def load_scenario_text(text: str, file: str = "<scenario>") -> Scenario:
    """Parse and validate scenario YAML; raise :class:`ScenarioError` naming file, line and field."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark
        line, column = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
        raise ScenarioError([ScenarioProblem(file, line, column, "", f"YAML syntax: {error.problem}")]) from None
    if root is None:
        raise ScenarioError([ScenarioProblem(file, 1, 1, "", "the file is empty")])
    positions = _Positions(file)
    data = positions.build(root, ())
    if not isinstance(data, dict):
        raise ScenarioError([ScenarioProblem(file, 1, 1, "", "a scenario is a mapping at the top level")])
    try:
        return Scenario.model_validate(data)
    except ValidationError as error:
        problems = []
        for item in error.errors():
            cause = (item.get("ctx") or {}).get("error")
            if isinstance(cause, CrossReferenceError):  # each field it names has its own line
                prefix = tuple(part for part in item["loc"] if isinstance(part, str | int))
                for path, text in cause.problems:
                    line, column = positions.locate((*prefix, *path))
                    problems.append(ScenarioProblem(file, line, column, _dotted((*prefix, *path)), text))
                continue
            location = tuple(part for part in item["loc"] if isinstance(part, str | int))
            # pydantic adds the tag of a union member ("list[str]", "literal['all']") to the path: drop it.
            location = tuple(part for part in location if not (isinstance(part, str) and "[" in part))
            line, column = positions.locate(location)
            message = item["msg"]
            if item["type"] == "extra_forbidden":
                message = "unknown field (a typo?)"
            elif item["type"] == "missing":
                message = "required field is missing"
            problems.append(ScenarioProblem(file, line, column, _dotted(location), message))
        raise ScenarioError(problems) from None


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ScenarioError([ScenarioProblem(str(path), 0, 0, "", f"cannot read: {error.strerror}")]) from None
    except UnicodeDecodeError:
        raise ScenarioError([ScenarioProblem(str(path), 0, 0, "", "not UTF-8 text")]) from None
    return load_scenario_text(text, str(path))
